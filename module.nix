# The NixOS module: services.peerix.
#
# A drop-in for the original Peerix's module: every option of its README
# (enable, package, openFirewall, user, group, privateKeyFile, publicKeyFile,
# publicKey, extraHosts, disableBroadcast, globalCacheTTL) is accepted with
# the same meaning, so configurations written for it keep evaluating and
# behaving the same. On top of that: the secret key is loaded at run time through
# systemd credentials (and a key copied into the store is warned about), the
# service runs as its own user in a hardened unit, and the daemon's other
# flags have options of their own.
{ config, lib, pkgs, utils, ... }:

let
  inherit (lib)
    concatMap
    concatMapStrings
    concatStringsSep
    filter
    literalExpression
    mkIf
    mkOption
    optional
    optionals
    types
    ;

  cfg = config.services.peerix;

  # A Nix public key as `nix-store --generate-binary-cache-key` writes it:
  # NAME:BASE64 of 32 bytes (43 characters, the last with its two low bits
  # clear, then one '='). A secret key (64 bytes) does not match, so one
  # pasted by mistake into publicKey is refused before it reaches the
  # world-readable nix.conf.
  isPublicKey = key:
    builtins.match "[^:[:space:]]+:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=" key != null;

  # The whitespace-separated words of a file's text.
  words = text: filter (w: builtins.isString w && w != "") (builtins.split "[[:space:]]+" text);

  keysFromFile = optionals (cfg.publicKeyFile != null) (words (builtins.readFile cfg.publicKeyFile));

  publicKeys = lib.unique (
    keysFromFile
    ++ optional (cfg.publicKey != null) cfg.publicKey
    ++ cfg.publicKeys
  );

  # The secret key's location, for messages. `toString` of a path value is
  # where it lies on the evaluating machine, and does not copy it anywhere.
  privateKeyLocation = toString cfg.privateKeyFile;

  # A path value (`./peerix-private`) is copied into the store as soon as it
  # is used in the unit, and a string under the store directory is there
  # already: either way the secret is world-readable.
  privateKeyInStore =
    cfg.privateKeyFile != null
    && (builtins.isPath cfg.privateKeyFile || lib.hasPrefix "${builtins.storeDir}/" privateKeyLocation);

  credentialName = "peerix-private-key";

  # networkKeyFile and lanPublicKey, a string or a list (while moving to a
  # new secret), as lists.
  asList = v: if v == null then [ ] else if builtins.isList v then v else [ v ];
  networkKeyFiles = asList cfg.networkKeyFile;
  lanPublicKeys = asList cfg.lanPublicKey;
  # The first network key's credential keeps the name it always had.
  networkCredentials = lib.imap0
    (i: file: {
      name = "peerix-network-key" + lib.optionalString (i > 0) "-${toString (i + 1)}";
      inherit file;
    })
    networkKeyFiles;

  daemonArgs =
    [
      "--port"
      (toString cfg.port)
      "--timeout"
      (toString cfg.timeout)
      "--priority"
      (toString cfg.priority)
    ]
    ++ optionals (cfg.bind != null) [ "--bind" cfg.bind ]
    ++ optionals (cfg.threads != null) [ "--threads" (toString cfg.threads) ]
    ++ concatMap (host: [ "--extra-host" host ]) cfg.extraHosts
    ++ optional cfg.disableBroadcast "--no-broadcast"
    ++ concatMap (key: [ "--trusted-key" key ]) cfg.trustedKeys
    ++ concatMap (key: [ "--share-signed-by" key ]) cfg.shareOnlySignedBy
    ++ concatMap (pattern: [ "--never-share" pattern ]) cfg.neverShare
    ++ concatMap (url: [ "--upstream" url ]) cfg.upstreams
    ++ optionals (cfg.spoolSize != null) [ "--spool-size" (toString cfg.spoolSize) ]
    ++ optionals (cfg.compress != "auto") [ "--compress" cfg.compress ]
    ++ optional (!cfg.originalPeerix) "--no-v1"
    ++ optional cfg.verbose "--verbose"
    ++ cfg.extraArgs;

  # Every argument quoted for systemd (nixpkgs' utils: `%` and `$` doubled,
  # so neither specifiers nor variables are expanded); the key options name
  # the credentials directory with the specifier %d, so they stay unquoted.
  execStart =
    utils.escapeSystemdExecArgs ([ "${cfg.package}/bin/peerix" ] ++ daemonArgs)
    + lib.optionalString (cfg.privateKeyFile != null) " --private-key %d/${credentialName}"
    + concatMapStrings (c: " --network-key-file %d/${c.name}") networkCredentials;

  # Where the local Nix reaches the daemon, which answers it only from a
  # loopback address.
  bindIsWildcard = cfg.bind == null || builtins.elem cfg.bind [ "0.0.0.0" "::" ];
  bindIsLoopback = cfg.bind != null && (cfg.bind == "::1" || lib.hasPrefix "127." cfg.bind);
  substituterHost =
    if cfg.bind == "::1" then "[::1]"
    else if bindIsLoopback then cfg.bind
    else "127.0.0.1";
  substituter = "http://${substituterHost}:${toString cfg.port}";

  userName = toString cfg.user;
  groupName = toString cfg.group;

  nixSettings = config.nix.settings;
  allowedUsers = nixSettings.allowed-users or [ "*" ];
  trustedUsers = nixSettings.trusted-users or [ ];
  mayUseNixDaemon = lib.any (entry: builtins.elem entry (allowedUsers ++ trustedUsers)) [
    "*"
    userName
    "@${groupName}"
  ];

  # Whether the firewall lets peers reach the port (UDP), by this module or
  # by other definitions.
  firewall = config.networking.firewall;
  portOpen = ports: ranges:
    builtins.elem cfg.port ports || lib.any (r: r.from <= cfg.port && cfg.port <= r.to) ranges;
  udpPortOpen =
    !(firewall.enable or false)
    || lib.any (f: portOpen (f.allowedUDPPorts or [ ]) (f.allowedUDPPortRanges or [ ]))
      ([ firewall ] ++ builtins.attrValues (firewall.interfaces or { }));

  runtimeDir = "/run/peerix";
in
{
  options.services.peerix = {
    enable = lib.mkEnableOption "Peerix, a peer-to-peer Nix binary cache: this machine serves its store to the LAN and substitutes from its peers";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./default.nix { };
      defaultText = literalExpression "pkgs.callPackage \"\${peerix}/default.nix\" { }";
      example = literalExpression "peerix.packages.x86_64-linux.peerix";
      description = "The Peerix package to run.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether to open `port` in the firewall, TCP (HTTP, peers fetch
        narinfo and NARs) and UDP (discovery). Without it, peers can neither
        fetch from this machine nor answer its broadcast queries (the answers
        come from their own address, which the firewall does not take for
        replies), so only `extraHosts` reached by unicast remain; evaluation
        warns about it unless broadcast is disabled or the UDP port is
        opened by other means. (The original Peerix opened it by default.)
      '';
    };

    port = mkOption {
      type = types.port;
      default = 12304;
      description = ''
        TCP (HTTP) and UDP port of the daemon, the same on every peer of the
        LAN. The local Nix uses `http://127.0.0.1:<port>` as a substituter.
      '';
    };

    bind = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "0.0.0.0";
      description = ''
        Address the HTTP server listens on: `null` means every address (IPv6
        and IPv4), `"0.0.0.0"` every IPv4 address. The local Nix must reach
        it from a loopback address, so any other specific address makes the
        node useless to it (evaluation warns); a loopback address makes a
        node that fetches from its peers but serves none.
      '';
    };

    user = mkOption {
      type = types.either types.str types.int;
      default = "peerix";
      description = ''
        User the daemon runs as. The default `peerix` is created by this
        module as a system user. The daemon reads the store through the
        nix-daemon, so the user is added to `nix.settings.allowed-users`
        (a warning says so if another definition of that list leaves it
        out). The original Peerix defaulted to `nobody`, which systemd and
        this module advise against.
      '';
    };

    group = mkOption {
      type = types.either types.str types.int;
      default = "peerix";
      description = "Group the daemon runs as; `peerix` (the default) is created by this module.";
    };

    privateKeyFile = mkOption {
      type = types.nullOr (types.either types.path types.str);
      default = null;
      example = "/var/lib/peerix/private";
      description = ''
        The secret key this node signs the narinfo it serves with, as written
        by `nix-store --generate-binary-cache-key`; not needed with
        `networkKeyFile`, whose LAN key signs too. Give it as a string: the
        file is read at run time by systemd (`LoadCredential`), so it can
        stay `root:root 0600` and never enters the Nix store.

        A path value such as `./peerix-private` (or anything under
        `/nix/store`, such as a file of a flake) still works, but the key is
        then copied into the world-readable store, where every local user
        and the peers this node serves could read it; evaluation warns about
        it.
      '';
    };

    publicKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./peerix-public";
      description = ''
        A file with the public key(s) of the Peerix nodes (this one's and
        its peers', separated by whitespace), added to
        `nix.settings.trusted-public-keys`. The file is read when the
        configuration is evaluated, so it must exist there: a path value
        such as `./peerix-public` is the usual choice, and public keys are
        not secret. A file that exists only on the running machine cannot be
        used, because `trusted-public-keys` is written into `/etc/nix/nix.conf`
        when the system is built (and read by the nix-daemon when it starts):
        give such keys in `publicKey` or `publicKeys` instead.
      '';
    };

    publicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "peerix-1:b3Ekph8cDo3nfbxtCHPPL0oKrjyxqpTMBrYaPqQpSFE=";
      description = ''
        A public key (NAME:BASE64, the content of the file written by
        `nix-store --generate-binary-cache-key`) added to
        `nix.settings.trusted-public-keys`, so that the local Nix accepts
        what peers signed with it.
      '';
    };

    publicKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        More public keys, like `publicKey`: typically one per peer when the
        peers do not share a single key pair.
      '';
    };

    trustedKeys = mkOption {
      type = types.listOf types.str;
      default = publicKeys;
      defaultText = literalExpression "the keys of publicKey, publicKeys and publicKeyFile";
      description = ''
        Keys passed to the daemon with `--trusted-key`: signatures on peers'
        narinfo that the local Nix accepts. The daemon also reads the
        `trusted-public-keys` of the Nix configuration when it starts, so
        this only needs changing for keys Nix trusts by means the daemon
        cannot see. A narinfo not signed by any key Nix accepts is never
        handed to Nix (Nix would remember the refusal for 30 days).
      '';
    };

    extraHosts = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "my-nixos-computer-hostname" "42.42.42.1" "[fd00::7]:12304" ];
      description = ''
        Peers to ask by unicast, `HOST` or `HOST:PORT`, beside (or, with
        `disableBroadcast`, instead of) the LAN broadcast. Names are resolved
        again every 30 seconds.
      '';
    };

    disableBroadcast = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to ask only `extraHosts`, without broadcasting queries on the LAN.";
    };

    compress = mkOption {
      type = types.enum [ "auto" "always" "never" ];
      default = "auto";
      description = ''
        Compression of NARs between nodes of this daemon (`--compress`):
        `auto` compresses (zstd) while the link, not the CPU, is the
        bottleneck and the data compresses; `always` on every link (a slow
        link and a fast sender); `never` sends and asks for raw NARs (a
        small machine whose CPU is worth more than its link). Original
        Peerix nodes and the local Nix always get raw NARs.
      '';
    };

    originalPeerix = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether machines on the LAN may still run the original (Python)
        Peerix. Queries then go in its format too, by broadcast, and a miss
        waits for it as long as its answers need. Set to false on a LAN
        where every machine runs this daemon (`--no-v1`): a miss then sends
        nothing at all, as peers' store summaries say nobody has the path.
      '';
    };

    timeout = mkOption {
      type = types.ints.between 1 60000;
      default = 500;
      description = ''
        How long to wait for peers that do not answer, in milliseconds. Peers
        running this daemon answer misses at once, so this matters only
        when a silent peer (a dead node, an original Peerix) is about.
      '';
    };

    priority = mkOption {
      type = types.ints.unsigned;
      default = 20;
      description = ''
        Substituter priority told to the local Nix; lower is tried first
        (cache.nixos.org has 40).
      '';
    };

    threads = mkOption {
      type = types.nullOr (types.ints.between 1 1024);
      default = null;
      description = "HTTP worker threads for the local Nix, and as many again for peers; `null` keeps the daemon's default (32).";
    };

    verbose = mkOption {
      type = types.bool;
      default = false;
      description = "Whether to log every request and peer exchange (debug level) to the journal.";
    };

    shareOnlySignedBy = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      description = ''
        When not empty, only store paths that carry a valid signature by one
        of these public keys are offered to peers (e.g. only what came from
        cache.nixos.org, which is public anyway). Empty: every path is
        offered, as the original Peerix did.
      '';
    };

    neverShare = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "*-secret*" "*.key" "*-source" ];
      description = ''
        Store path names (the part after the hash; `*` and `?` match) never
        offered to peers, nor are the paths that depend on them. A path
        outside the policy is invisible to peers: no answer to their
        queries, 404 on every route.
      '';
    };

    networkKeyFile = mkOption {
      type = types.nullOr (types.either types.str (types.listOf types.str));
      default = null;
      example = "/run/agenix/peerix-network-key";
      description = ''
        A file with a secret shared by the nodes of this network (made once
        with `peerix lan-key --new FILE`; any 16 bytes or more will do), read
        at run time (systemd `LoadCredential`), so it never enters the
        store. Every datagram and every request between peers is then
        authenticated, nodes without it get nothing, and the narinfo served
        to peers is signed with the LAN key derived from it, which
        `lanPublicKey` makes the local Nix trust. It authenticates but does
        not encrypt: the paths asked for and the NARs sent can still be seen
        on the network. Original Peerix nodes cannot take part.

        A list while moving to a new secret: every one is accepted, the
        first authenticates and signs what this node sends.
      '';
    };

    lanPublicKey = mkOption {
      type = types.nullOr (types.either types.str (types.listOf types.str));
      default = null;
      example = "peerix-lan-3178f3e4:MXjz5Be/kUY2Y8f5WIX6loChlMZjHYP/M+VuSsTEHc4=";
      description = ''
        The LAN key of `networkKeyFile`: the line `peerix lan-key
        --network-key-file FILE` prints, the same on every machine with the
        secret, added to `nix.settings.trusted-public-keys`. Public: it goes
        into the shared configuration. Set with `networkKeyFile`, and only
        with it. A list while moving to a new secret (both lines).
      '';
    };

    upstreams = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "https://cache.nixos.org" ];
      description = ''
        Upstream binary caches (`--upstream`), tried in order, for paths no
        peer has: the node fetches such a path once for the whole LAN (one
        node downloads it, the others stream it from that node as it
        arrives) and hands the local Nix the upstream's narinfo, which must
        be signed by a key Nix trusts. Set it on every machine of a LAN
        whose machines upgrade or build at the same time (`system.autoUpgrade`,
        a classroom, CI runners). Empty: the node asks only its peers, as
        before, and Nix fetches from cache.nixos.org itself.
      '';
    };

    spoolSize = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      example = 8192;
      description = ''
        The most the spool of NARs being fetched from `upstreams` may hold,
        in MiB (`--spool-size`); `null` is the daemon's default, 2048.
        Beyond it, NARs are streamed without being shared.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Further command-line arguments for the daemon.";
    };

    globalCacheTTL = mkOption {
      type = types.nullOr types.ints.unsigned;
      default = null;
      example = 60;
      description = ''
        Seconds Nix remembers what a substituter answered for a path, found
        or not found (`nix.settings.narinfo-cache-positive-ttl` and
        `narinfo-cache-negative-ttl`, as the original Peerix set them);
        `null` leaves Nix's defaults, 30 days and one hour.

        Nix remembers for an hour that no peer had a path, so a path a peer
        built a minute ago is not fetched from it until that hour is over: a
        small value such as 60 lets it be seen at once. It applies to every
        substituter, so cache.nixos.org is asked again for paths it recently
        did not have, too.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = config.nix.enable;
        message = "services.peerix needs the nix-daemon, which nix.enable = false; turns off.";
      }
      {
        assertion = cfg.privateKeyFile == null || lib.hasPrefix "/" privateKeyLocation;
        message = "services.peerix.privateKeyFile must be an absolute path, such as \"/var/lib/peerix/private\"; it is ${builtins.toJSON privateKeyLocation}.";
      }
      {
        assertion = !(lib.any (lib.hasPrefix "${builtins.storeDir}/") networkKeyFiles);
        message = "services.peerix.networkKeyFile is in the Nix store, where anyone can read it: keep the secret in a file outside the store, such as \"/var/lib/peerix/network-key\".";
      }
      {
        assertion = networkKeyFiles == [ ] || lanPublicKeys != [ ];
        message = "services.peerix.networkKeyFile is set but services.peerix.lanPublicKey is not: set it to the line `peerix lan-key --network-key-file ${builtins.head (networkKeyFiles ++ [ "FILE" ])}` prints (the same on every machine with the secret), so that Nix accepts what the LAN's nodes sign.";
      }
      {
        assertion = lanPublicKeys == [ ] || networkKeyFiles != [ ];
        message = "services.peerix.lanPublicKey is set but services.peerix.networkKeyFile is not: without the network's secret this node can neither talk to the LAN's nodes nor sign with the LAN key. Set networkKeyFile to the file with the secret (made once with `peerix lan-key --new FILE`).";
      }
      {
        assertion = builtins.all isPublicKey lanPublicKeys;
        message = "services.peerix.lanPublicKey: not a public key line (NAME:BASE64 of 32 bytes, as `peerix lan-key` prints): ${concatStringsSep ", " (map builtins.toJSON (filter (k: !isPublicKey k) lanPublicKeys))}.";
      }
      {
        assertion = builtins.all isPublicKey cfg.shareOnlySignedBy;
        message = "services.peerix.shareOnlySignedBy: not a Nix public key (NAME:BASE64 of 32 bytes): ${concatStringsSep ", " (filter (k: !isPublicKey k) cfg.shareOnlySignedBy)}.";
      }
      {
        assertion = builtins.all isPublicKey (publicKeys ++ cfg.trustedKeys);
        message = ''
          services.peerix: not a Nix public key (NAME:BASE64 of 32 bytes, as in the public file written by
          `nix-store --generate-binary-cache-key`): ${concatStringsSep ", " (map builtins.toJSON (lib.unique (filter (k: !isPublicKey k) (publicKeys ++ cfg.trustedKeys))))}.
          (A secret key here would be published in the world-readable /etc/nix/nix.conf: if that is what it is, make a new key pair.)'';
      }
      {
        assertion = builtins.all (host: builtins.match "[^[:space:]]+" host != null) cfg.extraHosts;
        message = "services.peerix.extraHosts: a host is empty or contains white space.";
      }
    ];

    warnings =
      optional privateKeyInStore ''
        services.peerix.privateKeyFile = ${privateKeyLocation}: ${
          if builtins.isPath cfg.privateKeyFile
          then "this path value is copied into the Nix store"
          else "this file is in the Nix store"
        }, which every user of this machine can read, and from which a peer that learns its store path can fetch it. Treat the key as leaked:
          1. make a new key pair on the machine, as root: mkdir -p -m 0700 /var/lib/peerix && nix-store --generate-binary-cache-key "$(hostname)-peerix-2" /var/lib/peerix/private /var/lib/peerix/public
             (the secret is written 0600 and stays root's: systemd hands the service a copy),
          2. set services.peerix.privateKeyFile = "/var/lib/peerix/private"; as a string, in quotes, so it is read at run time (systemd LoadCredential) and never copied,
          3. replace the old public key with the new one wherever it is trusted (publicKey, publicKeys, publicKeyFile, peers' trusted-public-keys),
          4. remove the secret from the configuration's sources, and run nix-collect-garbage once nothing refers to the old store path.''
      ++ optional (userName == "nobody" || groupName == "nogroup" || groupName == "nobody") ''
        services.peerix runs as ${userName}:${groupName}. `nobody` is shared with other services and with unmapped files (NFS, user namespaces); remove services.peerix.user and services.peerix.group to use the dedicated `peerix` user this module creates.''
      ++ optional (!mayUseNixDaemon) ''
        services.peerix: the user ${userName} is not in nix.settings.allowed-users (nor trusted-users), so the daemon cannot read the store through the nix-daemon. Add "${userName}" to nix.settings.allowed-users.''
      ++ optional (!cfg.disableBroadcast && !udpPortOpen) ''
        services.peerix: the firewall is closed on port ${toString cfg.port}, so peers' answers to this node's broadcast queries are dropped (they come from the peers' own addresses, which the firewall does not take for replies) and peers cannot fetch from it: set services.peerix.openFirewall = true; (the original Peerix opened it by default).''
      ++ optional (!bindIsWildcard && !bindIsLoopback) ''
        services.peerix.bind = "${cfg.bind}": the local Nix cannot use this node, which answers it only on a loopback address. Use null (every address), "0.0.0.0" (every IPv4 address) or a loopback address (to fetch from peers without serving them).''
      ++ optional (cfg.disableBroadcast && cfg.extraHosts == [ ]) ''
        services.peerix: disableBroadcast is set and extraHosts is empty, so this node asks no peer at all (it still serves its store).'';

    users.users.peerix = mkIf (cfg.user == "peerix") {
      isSystemUser = true;
      group = groupName;
      description = "Peerix daemon";
    };
    users.groups.peerix = mkIf (cfg.group == "peerix") { };

    nix.settings = lib.mkMerge [
      {
        substituters = [ substituter ];
        trusted-public-keys = publicKeys ++ lanPublicKeys;
        # Beside the option's default ([ "*" ]) rather than in place of it: a
        # plain definition would drop the default and lock every other user
        # out of the nix-daemon.
        allowed-users = lib.mkOptionDefault [ userName ];
      }
      (mkIf (cfg.globalCacheTTL != null) {
        narinfo-cache-negative-ttl = cfg.globalCacheTTL;
        narinfo-cache-positive-ttl = cfg.globalCacheTTL;
      })
    ];

    networking.firewall = mkIf cfg.openFirewall {
      allowedTCPPorts = [ cfg.port ];
      allowedUDPPorts = [ cfg.port ];
    };

    systemd.services.peerix = {
      description = "Peerix, a peer-to-peer Nix binary cache";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      requires = [ "nix-daemon.socket" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      # The daemon reads the trusted keys of nix.conf once, at start. (The
      # key files are read at start too: a path value changes the unit when
      # it changes; after replacing a key file at run time, restart it.)
      restartTriggers = optional config.nix.enable config.environment.etc."nix/nix.conf".source;

      # nix-store and nix of the system's Nix, the one its nix-daemon runs
      # (the package's wrapper only falls back to its own).
      path = [ config.nix.package ];
      environment = {
        HOME = runtimeDir;
        XDG_CACHE_HOME = "${runtimeDir}/cache";
        XDG_CONFIG_HOME = "${runtimeDir}/config";
        XDG_DATA_HOME = "${runtimeDir}/data";
        XDG_STATE_HOME = "${runtimeDir}/state";
        NIX_REMOTE = "daemon";
      };

      serviceConfig = {
        Type = "exec";
        ExecStart = execStart;
        Restart = "on-failure";
        RestartSec = "5s";
        # 2: the daemon refused its configuration (a missing or malformed
        # key file, say); restarting would not help.
        RestartPreventExitStatus = 2;

        User = userName;
        Group = groupName;
        RuntimeDirectory = "peerix";
        RuntimeDirectoryMode = "0700";
        # The spool of NARs from upstream caches, found by the daemon as
        # $STATE_DIRECTORY. Not /var/lib/peerix: systemd would hand that
        # directory, a secret key in it included, to the service's user.
        StateDirectory = mkIf (cfg.upstreams != [ ]) "peerix-spool";
        StateDirectoryMode = mkIf (cfg.upstreams != [ ]) "0700";
        UMask = "0077";
        # Every connection from the local Nix and from peers, every NAR's
        # pipe, is a file descriptor (harmonia's module sets the same).
        LimitNOFILE = 65536;
        LoadCredential =
          optional (cfg.privateKeyFile != null) "${credentialName}:${cfg.privateKeyFile}"
          ++ map (c: "${c.name}:${c.file}") networkCredentials;

        # Everything read-only but the runtime directory; the store is read,
        # and changed only by the nix-daemon, through its socket.
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateMounts = true;
        ProtectProc = "invisible";
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        NoExecPaths = [ "/" ];
        ExecPaths = [ "/nix/store" ];

        NoNewPrivileges = true;
        # No capability, unless a port below 1024 needs one.
        CapabilityBoundingSet = if cfg.port < 1024 then "CAP_NET_BIND_SERVICE" else "";
        AmbientCapabilities = optional (cfg.port < 1024) "CAP_NET_BIND_SERVICE";
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        RestrictRealtime = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;

        # IPv4 and IPv6 for HTTP and discovery (broadcast and multicast need
        # no capability), netlink to list the interfaces, unix sockets for
        # the nix-daemon.
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_NETLINK" "AF_UNIX" ];
        # @system-service allows what a service needs, spawning nix-store
        # included (@process); the rest is taken away from it. A call outside
        # the list fails with EPERM instead of killing the process (Nix tries
        # setrlimit at start and does without).
        SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
        SystemCallErrorNumber = "EPERM";
        SystemCallArchitectures = "native";
      };
    };
  };
}
