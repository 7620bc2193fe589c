# Evaluates module.nix with the NixOS module system in several
# configurations and checks what it generates: the unit, the firewall, the
# Nix settings, the users, the warnings and the assertions. With `nixpkgs`,
# NixOS itself (nixos/lib/eval-config.nix); with `nixpkgsLib` alone, the
# module system with NixOS's options declared by module-test-nixos.nix. Run
# by integration/nixos/nix-module-test, which prints `lines` (each
# configuration, what it made, its checks), and by the flake's
# checks.module.
#
#   nix-instantiate --eval --strict --json integration/nixos/module-test.nix \
#     --arg nixpkgsLib ../shared/nixpkgs-lib/lib -A lines
#
# Nothing is built: only the configuration is evaluated. The key pair in
# module-test-keys/ is a test key, used for nothing else.
{
  # A nixpkgs checkout (or a flake's nixpkgs input): its lib, and NixOS from
  # its nixos/lib/eval-config.nix.
  nixpkgs ? null,
  # nixpkgs' lib alone (its lib/ directory), where no full nixpkgs is at
  # hand: NixOS's options are then declared by module-test-nixos.nix.
  nixpkgsLib ? null,
  system ? builtins.currentSystem,
}:

assert nixpkgs != null || nixpkgsLib != null;

let
  standIn =
    if nixpkgs != null then null
    else import ./module-test-nixos.nix { lib = import nixpkgsLib; inherit system; };
  lib = if standIn != null then standIn.lib else import (toString nixpkgs + "/lib");

  nixosBase = { lib, ... }: {
    boot.loader.grub.enable = false;
    fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; };
    system.stateVersion = lib.trivial.release;
  };

  # modules -> the configuration NixOS makes of them.
  evalConfig = modules:
    if standIn != null then standIn.evalConfig modules
    else
      (import (toString nixpkgs + "/nixos/lib/eval-config.nix") {
        inherit system;
        modules = modules ++ [ nixosBase ];
      }).config;

  harness =
    if standIn != null then "nixpkgs' lib with NixOS's options declared by integration/nixos/module-test-nixos.nix"
    else "NixOS of nixpkgs ${lib.trivial.version}";

  nixpkgsInput =
    if standIn != null then {
      inherit lib;
      outPath = "/nixpkgs-stand-in";
      legacyPackages = lib.genAttrs flakeSystems (system: standIn.pkgs);
    }
    else if nixpkgs ? legacyPackages then nixpkgs
    else {
      inherit lib;
      outPath = toString nixpkgs;
      legacyPackages = lib.genAttrs [ system ] (system: import (toString nixpkgs) { inherit system; });
    };

  # flake.nix's outputs, as Nix would make them with this nixpkgs as input.
  flake =
    let
      self = (import ../../flake.nix).outputs { inherit self; nixpkgs = nixpkgsInput; } // { outPath = toString ../..; };
    in
    self;
  flakeSystems = [ "x86_64-linux" "aarch64-linux" "i686-linux" "armv7l-linux" ];

  inherit (lib) hasInfix hasPrefix elem all any filter;

  testPublic = "peerix-module-test-1:J+kuZwYuUWnKfb5fT5iTOSe7gfjPumruBimjVxY0mQY=";
  peerB = "peer-b-1:tbVOKFaVx5kClZLEnRHkWU+4GRuaxyCur2ecVt3ebMM=";
  peerC = "peer-c-1:E6zudt8bj4pCo9RBiPDsLsjKqWr6D+MjNMXbRJOaphU=";
  cacheNixosOrg = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
  # LAN key lines, as `peerix lan-key` prints them (the test vectors of
  # src/peer/network_key.rs).
  lanLine = "peerix-lan-3178f3e4:MXjz5Be/kUY2Y8f5WIX6loChlMZjHYP/M+VuSsTEHc4=";
  newLanLine = "peerix-lan-d4bf004a:1L8ASv1U05EStK4t8qJQO7ZDwTP74SqrqNE+qypgcwQ=";
  # The secret half of peerC: pasted where a public key belongs.
  secretC = "peer-c-1:7vy+L401ChiGyx7zg0eDlylPqIRmWtls4P0/dpsVvtkTrO523xuPikKj1EGI8OwuyMqpavoP4yM0xdtEk5qmFQ==";

  eval = config: evalConfig [ ../../module.nix config ];

  configs = {
    # {enable = true;} and nothing else.
    minimal = eval { services.peerix.enable = true; };

    # The widely read blog post: a flake input, the package from it, the
    # keys as path values next to the configuration.
    blog = eval ({ pkgs, ... }: {
      services.peerix = {
        enable = true;
        package = pkgs.callPackage ../../default.nix { };
        openFirewall = true;
        privateKeyFile = ./module-test-keys/peerix-private;
        publicKeyFile = ./module-test-keys/peerix-public;
        publicKey = peerB;
        user = "peerix";
        group = "peerix";
        extraHosts = [ "my-nixos-computer-hostname" "42.42.42.1" ];
        disableBroadcast = false;
      };
    });

    # The original Peerix README's example, users and all.
    originalReadme = eval {
      services.peerix = {
        enable = true;
        openFirewall = true;
        privateKeyFile = ./module-test-keys/peerix-private;
        publicKeyFile = ./module-test-keys/peerix-public;
        user = "peerix";
        group = "peerix";
        disableBroadcast = true;
        extraHosts = [ "my-nixos-computer-hostname" "42.42.42.1" ];
      };
      users.users.peerix = {
        isSystemUser = true;
        group = "peerix";
      };
      users.groups.peerix = { };
    };

    # Every option of the module set, with a user of one's own.
    everything = eval ({ pkgs, ... }: {
      services.peerix = {
        enable = true;
        package = pkgs.callPackage ../../default.nix { };
        openFirewall = true;
        port = 12305;
        bind = "::";
        user = "cache";
        group = "cache";
        privateKeyFile = "/var/lib/peerix/private";
        publicKeyFile = ./module-test-keys/peerix-public;
        publicKey = peerB;
        publicKeys = [ peerC ];
        trustedKeys = [ peerC ];
        extraHosts = [ "build-server" "[fd00::7]:12305" ];
        disableBroadcast = true;
        timeout = 300;
        priority = 10;
        threads = 8;
        verbose = true;
        shareOnlySignedBy = [ cacheNixosOrg ];
        neverShare = [ "*-secret*" ];
        compress = "never";
        originalPeerix = false;
        networkKeyFile = "/var/lib/peerix/network-key";
        lanPublicKey = lanLine;
        upstreams = [ "https://cache.nixos.org" "http://10.0.0.9:5000/" ];
        spoolSize = 4096;
        extraArgs = [ "--answer-rate" "1000" ];
        globalCacheTTL = 60;
      };
      users.users.cache = { isSystemUser = true; group = "cache"; };
      users.groups.cache = { };
    });

    # The recommended way: the secret read at run time, keys as strings;
    # arguments that systemd would otherwise expand.
    runtimeKey = eval {
      services.peerix = {
        enable = true;
        openFirewall = true;
        privateKeyFile = "/var/lib/peerix/private";
        publicKey = testPublic;
        publicKeys = [ peerB peerC ];
        port = 12305;
        extraHosts = [ "[fd00::7]:12305" ];
        extraArgs = [ "--weird" "100%" "$HOME" "two words" ];
      };
    };

    # Trust on a shared LAN: what to share, and a network key.
    trust = eval {
      services.peerix = {
        enable = true;
        openFirewall = true;
        shareOnlySignedBy = [ peerB ];
        neverShare = [ "*-secret*" "*.key" ];
        networkKeyFile = "/var/lib/peerix/network-key";
        lanPublicKey = lanLine;
      };
    };

    # The README's setup for several machines: one secret (from agenix),
    # one line, no key pair of the node's own.
    lan = eval {
      services.peerix = {
        enable = true;
        openFirewall = true;
        networkKeyFile = "/run/agenix/peerix-network-key";
        lanPublicKey = lanLine;
      };
    };

    # Moving to a new secret: both files, both lines, the new one first.
    rotation = eval {
      services.peerix = {
        enable = true;
        openFirewall = true;
        networkKeyFile = [ "/run/agenix/peerix-network-key-new" "/run/agenix/peerix-network-key" ];
        lanPublicKey = [ newLanLine lanLine ];
      };
    };

    # One without the other, and a secret where the line belongs.
    lanKeyWithoutLine = eval {
      services.peerix = { enable = true; networkKeyFile = "/run/agenix/peerix-network-key"; };
    };
    lineWithoutLanKey = eval {
      services.peerix = { enable = true; lanPublicKey = lanLine; };
    };
    lanLineMistaken = eval {
      services.peerix = {
        enable = true;
        networkKeyFile = "/run/agenix/peerix-network-key";
        lanPublicKey = secretC;
      };
    };

    # Options of older versions of the original, and nobody.
    legacy = eval {
      services.peerix = {
        enable = true;
        user = "nobody";
        group = "nogroup";
        globalCacheTTL = 60;
        disableBroadcast = true;
      };
    };

    # A secret key where a public key belongs; a store path as a string.
    mistakes = eval {
      services.peerix = {
        enable = true;
        publicKey = secretC;
        privateKeyFile = "/nix/store/00000000000000000000000000000000-peerix-private";
      };
    };

    # Someone's own allowed-users, and a privileged port.
    restricted = eval {
      services.peerix = { enable = true; port = 80; };
      nix.settings.allowed-users = [ "@wheel" ];
      networking.firewall.allowedUDPPortRanges = [ { from = 1; to = 1023; } ];
    };

    disabled = eval { services.peerix.enable = false; };

    # The nix-daemon turned off: nothing to reach the store through.
    noNixDaemon = eval { services.peerix.enable = true; nix.enable = false; };

    # The flake's modules, both names imported, with the flake's package.
    flake = evalConfig [
      flake.nixosModules.peerix
      flake.nixosModules.default
      {
        services.peerix = {
          enable = true;
          package = flake.packages.${system}.peerix;
        };
        # Opened by other means: no warning.
        networking.firewall.interfaces.lan.allowedUDPPorts = [ 12304 ];
      }
    ];
  };

  svc = c: c.systemd.services.peerix;
  sc = c: (svc c).serviceConfig;
  execStart = c: (sc c).ExecStart;
  # ExecStart as the arguments systemd passes: a quoted word is a JSON string
  # (nixpkgs' escapeSystemdExecArgs writes them so), `%%` and `$$` are `%`
  # and `$`; an unquoted `%d` stays as it is (the specifier).
  execArgs = c:
    let
      words = filter builtins.isList (builtins.split ''("([^"\\]|\\.)*"|[^ ]+)'' (execStart c));
      unquote = w: if hasPrefix "\"" w then builtins.fromJSON w else w;
    in
    map (w: lib.replaceStrings [ "%%" "$$" ] [ "%" "$" ] (unquote (builtins.head w))) words;
  bin = c: "${c.services.peerix.package}/bin/peerix";
  asList = v: if builtins.isList v then v else [ v ];
  loadCredential = c: asList ((sc c).LoadCredential or [ ]);
  # Those about Peerix: a NixOS release may have warnings of its own.
  failedAssertions = c: filter (hasInfix "peerix") (map (a: a.message) (filter (a: !a.assertion) c.assertions));
  peerixWarnings = c: filter (hasInfix "peerix") c.warnings;
  warningsAbout = word: c: filter (hasInfix word) (peerixWarnings c);
  # The warnings, each named by the first of these words it contains.
  warningKinds = c: map
    (w: lib.findFirst (k: hasInfix k w) "other" [ "copied into the Nix store" "in the Nix store" "nobody" "allowed-users" "firewall" "bind" "asks no peer" ])
    (peerixWarnings c);
  settings = c: c.nix.settings;
  has = xs: x: elem x (asList xs);
  nixConf = c: c.environment.etc."nix/nix.conf".source;
  nixConfText = c: (nixConf c).text or "";
  firewallOpen = port: c:
    elem port c.networking.firewall.allowedTCPPorts && elem port c.networking.firewall.allowedUDPPorts;
  unitText = c: if c.systemd ? units then c.systemd.units."peerix.service".text else "";
  # In the unit as NixOS writes it (the stand-in of module-test-nixos.nix
  # writes no unit files).
  unitHas = c: line: !(c.systemd ? units) || hasInfix "\n${line}\n" (unitText c);

  # What the daemon needs of every configuration that enables it.
  common = c: {
    "ExecStart starts with the package's peerix" = builtins.head (execArgs c) == bin c;
    "after the network and the nix-daemon's socket, which it requires" =
      has (svc c).after "network-online.target" && has (svc c).wants "network-online.target"
      && has (svc c).after "nix-daemon.socket" && has (svc c).requires "nix-daemon.socket"
      && has (svc c).wantedBy "multi-user.target";
    "LimitNOFILE = 65536" = (sc c).LimitNOFILE == 65536;
    "restarted when nix.conf (its trusted keys) changes" = (svc c).restartTriggers == [ (nixConf c) ];
    "the unit file as NixOS writes it (looked at only where NixOS itself evaluates)" =
      all (unitHas c) [
        "ExecStart=${execStart c}"
        "LimitNOFILE=65536"
        "ProtectSystem=strict"
        "Requires=nix-daemon.socket"
        "SystemCallFilter=@system-service"
        "SystemCallFilter=~@privileged"
        "RestrictAddressFamilies=AF_NETLINK"
        "Restart=on-failure"
      ];
  };

  # integration/dist/peerix.service, the unit for machines without NixOS: its
  # [Service] directives, NAME -> the values of its lines, in order.
  plainUnit =
    let
      lines = filter (l: l != "" && !(hasPrefix "#" l) && !(hasPrefix "[" l))
        (map lib.trim (lib.splitString "\n" (builtins.readFile ../dist/peerix.service)));
      pairs = map (l: let m = builtins.match "([A-Za-z]+)=(.*)" l; in { name = builtins.elemAt m 0; value = builtins.elemAt m 1; }) lines;
    in
    builtins.mapAttrs (name: _: map (p: p.value) (filter (p: p.name == name) pairs)) (builtins.listToAttrs pairs);
  # A module value as the unit file writes it.
  unitValue = v: if v == true then "true" else if v == false then "false" else toString v;
  # The hardening and service settings both units must share.
  sharedDirectives = [
    "Type" "Restart" "RestartSec" "RestartPreventExitStatus" "RuntimeDirectory" "RuntimeDirectoryMode" "UMask" "LimitNOFILE"
    "ProtectSystem" "ProtectHome" "PrivateTmp" "PrivateDevices" "PrivateMounts" "ProtectProc" "ProtectHostname" "ProtectClock"
    "ProtectKernelTunables" "ProtectKernelModules" "ProtectKernelLogs" "ProtectControlGroups" "NoNewPrivileges"
    "CapabilityBoundingSet" "RestrictSUIDSGID" "RemoveIPC" "RestrictRealtime" "RestrictNamespaces" "LockPersonality"
    "MemoryDenyWriteExecute" "SystemCallErrorNumber" "SystemCallArchitectures"
  ];

  checks = {
    minimal = let c = configs.minimal; in common c // {
      "integration/dist/peerix.service has the same hardening and settings" =
        all (d: plainUnit.${d} or [ ] == [ (unitValue (sc c).${d}) ]) sharedDirectives
        && lib.concatMap (v: lib.splitString " " v) plainUnit.RestrictAddressFamilies == (sc c).RestrictAddressFamilies
        && lib.concatMap (v: lib.splitString " " v) plainUnit.SystemCallFilter == (sc c).SystemCallFilter
        && plainUnit.Requires == [ "nix-daemon.socket" ] && plainUnit.After == [ "network-online.target nix-daemon.socket" ]
        && plainUnit.Wants == [ "network-online.target" ] && plainUnit.WantedBy == [ "multi-user.target" ]
        && plainUnit.User == [ "peerix" ] && plainUnit.Group == [ "peerix" ];
      "the default package evaluates, with its unit tests in checkPhase" =
        let p = c.services.peerix.package; in
        p.pname == "peerix" && p.meta.mainProgram == "peerix"
        && (p.doCheck or true) && hasInfix "--lib" (toString p.cargoTestFlags);
      "ExecStart: the package with the defaults" =
        execArgs c == [ (bin c) "--port" "12304" "--timeout" "500" "--priority" "20" ];
      "no key: no credential" = loadCredential c == [ ];
      "no upstream: no --upstream, no state directory" =
        !(hasInfix "--upstream" (execStart c)) && !((sc c) ? StateDirectory);
      "a dedicated system user" =
        (sc c).User == "peerix" && (sc c).Group == "peerix"
        && c.users.users.peerix.isSystemUser && c.users.users.peerix.group == "peerix"
        && c.users.groups ? peerix;
      "the user may use the nix-daemon, and so may everyone else" =
        has (settings c).allowed-users "*" && has (settings c).allowed-users "peerix";
      "the node is a substituter, before cache.nixos.org" =
        lib.take 2 (settings c).substituters == [ "http://127.0.0.1:12304" "https://cache.nixos.org/" ];
      "no TTL changed" =
        !((settings c) ? narinfo-cache-negative-ttl) && !((settings c) ? narinfo-cache-positive-ttl)
        && !(hasInfix "narinfo-cache" (nixConfText c));
      "the firewall stays closed" = !(elem 12304 c.networking.firewall.allowedTCPPorts) && !(elem 12304 c.networking.firewall.allowedUDPPorts);
      "warnings: only the closed firewall" = warningKinds c == [ "firewall" ] && failedAssertions c == [ ];
      "restarted on failure, not on a refused configuration" =
        (sc c).Restart == "on-failure" && (sc c).RestartPreventExitStatus == 2;
      "hardened" =
        (sc c).ProtectSystem == "strict" && (sc c).ProtectHome == true && (sc c).NoNewPrivileges == true
        && (sc c).PrivateTmp == true && (sc c).PrivateDevices == true
        && (sc c).CapabilityBoundingSet == "" && (sc c).RestrictNamespaces == true
        && (sc c).LockPersonality == true && (sc c).MemoryDenyWriteExecute == true
        && (sc c).SystemCallArchitectures == "native";
      "system calls: the service set, less the privileged ones" =
        asList (sc c).SystemCallFilter == [ "@system-service" "~@privileged" "~@resources" ];
      "address families for HTTP, broadcast, interfaces and the nix-daemon" =
        asList (sc c).RestrictAddressFamilies == [ "AF_INET" "AF_INET6" "AF_NETLINK" "AF_UNIX" ];
      "a home and caches in the runtime directory, the nix-daemon for the store" =
        (sc c).RuntimeDirectory == "peerix" && (svc c).environment.HOME == "/run/peerix"
        && hasPrefix "/run/peerix/" (svc c).environment.XDG_CACHE_HOME
        && (svc c).environment.NIX_REMOTE == "daemon";
      "the system's nix on the service's PATH" = has (svc c).path c.nix.package;
    };

    blog = let c = configs.blog; in common c // {
      "ExecStart: extra hosts, the keys, the key from its credential" =
        execArgs c == [
          (bin c) "--port" "12304" "--timeout" "500" "--priority" "20"
          "--extra-host" "my-nixos-computer-hostname" "--extra-host" "42.42.42.1"
          "--trusted-key" testPublic "--trusted-key" peerB
          "--private-key" "%d/peerix-private-key"
        ];
      "arguments quoted by nixpkgs' escapeSystemdExecArgs" =
        hasPrefix ''"${bin c}" "--port" "12304"'' (execStart c);
      "the key is loaded as a credential, from the store" =
        builtins.length (loadCredential c) == 1
        && hasPrefix "peerix-private-key:${builtins.storeDir}/" (builtins.head (loadCredential c));
      "user and group" = (sc c).User == "peerix" && (sc c).Group == "peerix";
      "firewall open, TCP and UDP" = firewallOpen 12304 c;
      "the keys of publicKeyFile and publicKey trusted by Nix, beside cache.nixos.org's" =
        (settings c).trusted-public-keys == [ testPublic peerB cacheNixosOrg ]
        || lib.sort builtins.lessThan (settings c).trusted-public-keys == lib.sort builtins.lessThan [ testPublic peerB cacheNixosOrg ];
      "the substituter" = has (settings c).substituters "http://127.0.0.1:12304";
      "warnings: only the store copy of the key, with the fix" =
        warningKinds c == [ "copied into the Nix store" ]
        && any (hasInfix ''privateKeyFile = "/var/lib/peerix/private"'') (peerixWarnings c)
        && failedAssertions c == [ ];
    };

    originalReadme = let c = configs.originalReadme; in common c // {
      "ExecStart: no broadcast, extra hosts, the key" =
        execArgs c == [
          (bin c) "--port" "12304" "--timeout" "500" "--priority" "20"
          "--extra-host" "my-nixos-computer-hostname" "--extra-host" "42.42.42.1"
          "--no-broadcast" "--trusted-key" testPublic
          "--private-key" "%d/peerix-private-key"
        ];
      "evaluates beside the README's own user" =
        c.users.users.peerix.group == "peerix" && c.users.users.peerix.isSystemUser
        && (sc c).User == "peerix" && (sc c).Group == "peerix";
      "the key is loaded as a credential" = hasPrefix "peerix-private-key:${builtins.storeDir}/" (builtins.head (loadCredential c));
      "firewall open" = firewallOpen 12304 c;
      "the public key file is trusted" = has (settings c).trusted-public-keys testPublic;
      "warnings: only the store copy of the key" = warningKinds c == [ "copied into the Nix store" ] && failedAssertions c == [ ];
    };

    everything = let c = configs.everything; in common c // {
      "ExecStart: every flag" =
        execArgs c == [
          (bin c) "--port" "12305" "--timeout" "300" "--priority" "10" "--bind" "::" "--threads" "8"
          "--extra-host" "build-server" "--extra-host" "[fd00::7]:12305" "--no-broadcast"
          "--trusted-key" peerC "--share-signed-by" cacheNixosOrg "--never-share" "*-secret*"
          "--upstream" "https://cache.nixos.org" "--upstream" "http://10.0.0.9:5000/" "--spool-size" "4096"
          "--compress" "never" "--no-v1" "--verbose" "--answer-rate" "1000"
          "--private-key" "%d/peerix-private-key" "--network-key-file" "%d/peerix-network-key"
        ];
      "both keys loaded at run time, neither path in ExecStart" =
        loadCredential c == [ "peerix-private-key:/var/lib/peerix/private" "peerix-network-key:/var/lib/peerix/network-key" ]
        && !(hasInfix "/var/lib/peerix" (execStart c));
      "its own user, allowed to use the nix-daemon; no peerix user made" =
        (sc c).User == "cache" && (sc c).Group == "cache" && has (settings c).allowed-users "cache"
        && !(c.users.users ? peerix) && !(c.users.groups ? peerix);
      "firewall open on its port" = firewallOpen 12305 c && !(elem 12304 c.networking.firewall.allowedTCPPorts);
      "the substituter on that port, on loopback" =
        has (settings c).substituters "http://127.0.0.1:12305" && !(has (settings c).substituters "http://127.0.0.1:12304");
      "publicKeyFile, publicKey, publicKeys and lanPublicKey trusted by Nix" = all (has (settings c).trusted-public-keys) [ testPublic peerB peerC lanLine ];
      "globalCacheTTL sets both narinfo TTLs" =
        (settings c).narinfo-cache-negative-ttl == 60 && (settings c).narinfo-cache-positive-ttl == 60;
      "no warning, no failed assertion" = peerixWarnings c == [ ] && failedAssertions c == [ ];
      "with upstreams, the spool in a state directory of its own, not the keys' /var/lib/peerix" =
        (sc c).StateDirectory == "peerix-spool" && (sc c).StateDirectoryMode == "0700"
        && plainUnit.StateDirectory == [ "peerix-spool" ];
    };

    runtimeKey = let c = configs.runtimeKey; in common c // {
      "the key is loaded at run time from its path, not named in ExecStart" =
        loadCredential c == [ "peerix-private-key:/var/lib/peerix/private" ]
        && !(hasInfix "/var/lib/peerix" (execStart c)) && lib.hasSuffix " --private-key %d/peerix-private-key" (execStart c);
      "arguments reach the daemon as written: no specifier, variable or word splitting" =
        execArgs c == [
          (bin c) "--port" "12305" "--timeout" "500" "--priority" "20" "--extra-host" "[fd00::7]:12305"
          "--trusted-key" testPublic "--trusted-key" peerB "--trusted-key" peerC
          "--weird" "100%" "$HOME" "two words" "--private-key" "%d/peerix-private-key"
        ]
        && hasInfix ''"--weird" "100%%" "$$HOME" "two words"'' (execStart c);
      "publicKey and publicKeys trusted" = all (has (settings c).trusted-public-keys) [ testPublic peerB peerC ];
      "no warning, no failed assertion" = peerixWarnings c == [ ] && failedAssertions c == [ ];
    };

    trust = let c = configs.trust; in common c // {
      "share policy flags" =
        execArgs c == [
          (bin c) "--port" "12304" "--timeout" "500" "--priority" "20"
          "--share-signed-by" peerB "--never-share" "*-secret*" "--never-share" "*.key"
          "--network-key-file" "%d/peerix-network-key"
        ];
      "the network key is loaded at run time" =
        loadCredential c == [ "peerix-network-key:/var/lib/peerix/network-key" ];
      "no warning, no failed assertion" = peerixWarnings c == [ ] && failedAssertions c == [ ];
    };

    lan = let c = configs.lan; in common c // {
      "ExecStart: only the network key, from its credential" =
        execArgs c == [
          (bin c) "--port" "12304" "--timeout" "500" "--priority" "20"
          "--network-key-file" "%d/peerix-network-key"
        ];
      "the secret is loaded at run time, never named in ExecStart" =
        loadCredential c == [ "peerix-network-key:/run/agenix/peerix-network-key" ]
        && !(hasInfix "/run/agenix" (execStart c));
      "Nix trusts the one LAN line beside cache.nixos.org's" =
        lib.sort builtins.lessThan (settings c).trusted-public-keys == lib.sort builtins.lessThan [ lanLine cacheNixosOrg ];
      "no warning, no failed assertion" = peerixWarnings c == [ ] && failedAssertions c == [ ];
    };

    rotation = let c = configs.rotation; in common c // {
      "ExecStart: both network keys, the first first" =
        execArgs c == [
          (bin c) "--port" "12304" "--timeout" "500" "--priority" "20"
          "--network-key-file" "%d/peerix-network-key" "--network-key-file" "%d/peerix-network-key-2"
        ];
      "both secrets loaded at run time" =
        loadCredential c == [
          "peerix-network-key:/run/agenix/peerix-network-key-new"
          "peerix-network-key-2:/run/agenix/peerix-network-key"
        ];
      "Nix trusts both lines" = all (has (settings c).trusted-public-keys) [ newLanLine lanLine ];
      "no warning, no failed assertion" = peerixWarnings c == [ ] && failedAssertions c == [ ];
    };

    lanKeyWithoutLine = let c = configs.lanKeyWithoutLine; in {
      "refused, naming the command that prints the line" =
        any (hasInfix "peerix lan-key --network-key-file /run/agenix/peerix-network-key") (failedAssertions c);
    };

    lineWithoutLanKey = let c = configs.lineWithoutLanKey; in {
      "refused, saying the secret is missing" =
        any (hasInfix "lanPublicKey is set but services.peerix.networkKeyFile is not") (failedAssertions c);
    };

    lanLineMistaken = let c = configs.lanLineMistaken; in {
      "a secret key given as the LAN line is refused" =
        any (hasInfix "lanPublicKey: not a public key line") (failedAssertions c);
    };

    legacy = let c = configs.legacy; in common c // {
      "globalCacheTTL sets both narinfo TTLs, as the original did" =
        (settings c).narinfo-cache-negative-ttl == 60 && (settings c).narinfo-cache-positive-ttl == 60;
      "nix.conf gets the original's lines" =
        all (line: hasInfix "\n${line}\n" "\n${nixConfText c}") [ "narinfo-cache-negative-ttl = 60" "narinfo-cache-positive-ttl = 60" ];
      "nobody works, with a warning; no peerix user is made" =
        (sc c).User == "nobody" && (sc c).Group == "nogroup" && !(c.users.users ? peerix) && !(c.users.groups ? peerix);
      "warnings: nobody, and a node that asks no peer" = warningKinds c == [ "nobody" "asks no peer" ];
    };

    mistakes = let c = configs.mistakes; in {
      "a secret key given as public key is refused" =
        any (hasInfix "not a Nix public key") (failedAssertions c);
      "a store path given as a string is warned about" =
        any (hasInfix "this file is in the Nix store") (warningsAbout "privateKeyFile" c);
    };

    restricted = let c = configs.restricted; in {
      "an allowed-users without the user is warned about" =
        warningsAbout "allowed-users" c != [ ] && (settings c).allowed-users == [ "@wheel" ];
      "a firewall opened by a port range is seen" = warningsAbout "firewall" c == [ ];
      "a port below 1024 gets its capability" =
        (sc c).AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ] && (sc c).CapabilityBoundingSet == "CAP_NET_BIND_SERVICE";
    };

    flake = let c = configs.flake; in {
      "nixosModules.peerix and .default, imported together" =
        failedAssertions c == [ ] && peerixWarnings c == [ ]
        && builtins.head (execArgs c) == "${flake.packages.${system}.peerix}/bin/peerix";
      "packages.<system>.peerix and .default for the common Linux systems" =
        all (s: flake.packages ? ${s}) flakeSystems
        && flake.packages.${system}.peerix.pname == "peerix"
        && flake.packages.${system}.default == flake.packages.${system}.peerix;
      "overlays.default adds peerix" =
        let pkgs = nixpkgsInput.legacyPackages.${system}; in
        (flake.overlays.default pkgs pkgs).peerix.pname == "peerix";
    };

    noNixDaemon = let c = configs.noNixDaemon; in {
      "refused, saying why" = any (hasInfix "needs the nix-daemon") (failedAssertions c);
    };

    disabled = let c = configs.disabled; in {
      "no service, no substituter" =
        !(c.systemd.services ? peerix) && !(has ((settings c).substituters or [ ]) "http://127.0.0.1:12304");
    };
  };

  # What a configuration made, for the log: one "  name: value" line each.
  describe = c:
    let
      list = xs: if xs == [ ] then "(none)" else lib.concatMapStringsSep " " toString xs;
      firstLine = w: builtins.head (lib.splitString "\n" w);
      s = settings c;
      setting = name: "${name} = ${if s ? ${name} then list (asList s.${name}) else "(unset)"}";
    in
    if !(c.systemd.services ? peerix) then [ "  no peerix service" ]
    else [
      "  ExecStart: ${execStart c}"
      "  User, Group: ${toString (sc c).User}, ${toString (sc c).Group}"
      "  LoadCredential: ${list (loadCredential c)}"
      "  LimitNOFILE: ${toString (sc c).LimitNOFILE}; Requires: ${list (svc c).requires}; After: ${list (svc c).after}"
      "  restartTriggers: ${list (svc c).restartTriggers}"
      "  firewall: TCP ${list c.networking.firewall.allowedTCPPorts}; UDP ${list c.networking.firewall.allowedUDPPorts}"
      "  nix.settings: ${setting "substituters"}"
      "  nix.settings: ${setting "trusted-public-keys"}"
      "  nix.settings: ${setting "allowed-users"}"
      "  nix.settings: ${setting "narinfo-cache-negative-ttl"}; ${setting "narinfo-cache-positive-ttl"}"
    ]
    ++ map (w: "  warning: ${firstLine w}") (peerixWarnings c)
    ++ map (m: "  failed assertion: ${firstLine m}") (failedAssertions c);

  # Each check evaluated on its own: one that throws fails alone.
  results = lib.concatLists (lib.mapAttrsToList
    (config: group: lib.mapAttrsToList
      (name: value:
        let r = builtins.tryEval (value == true); in
        {
          name = "${config}: ${name}";
          ok = r.success && r.value;
          error = !r.success;
        })
      group)
    checks);

  failed = filter (r: !r.ok) results;

  describeSafely = name:
    let r = builtins.tryEval (builtins.deepSeq (describe configs.${name}) (describe configs.${name})); in
    if r.success then r.value else [ "  (cannot be shown: evaluation error)" ];
in
{
  inherit configs checks results harness plainUnit;

  # For the log: how the module was evaluated, each configuration (what it
  # made) followed by its checks, one "ok NAME" / "FAIL NAME" / "ERROR NAME"
  # line each.
  lines = [ "evaluated with ${harness}" ]
    ++ lib.concatLists (lib.mapAttrsToList
      (name: group:
        [ "configuration ${name}:" ] ++ describeSafely name
        ++ map (r: "${if r.ok then "ok" else if r.error then "ERROR" else "FAIL"} ${r.name}")
          (filter (r: hasPrefix "${name}: " r.name) results))
      checks);

  # nix.conf as generated for the configuration with globalCacheTTL, for
  # integration/nixos/nix-module-test to hand to the real Nix.
  legacyNixConf = nixConfText configs.legacy;

  summary = "module evaluation: ${toString (builtins.length results - builtins.length failed)} passed, ${toString (builtins.length failed)} failed";

  # For the flake check: fails evaluation unless every check passed.
  passed =
    if failed == [ ] then true
    else throw "module checks failed: ${lib.concatMapStringsSep "; " (r: r.name) failed}";
}
