# Evaluates module.nix with the NixOS module system in several
# configurations and checks what it generates: the unit, the firewall, the
# Nix settings, the users, the warnings and the assertions. Run by
# integration/nix-module-test (which skips it when nixpkgs is missing) and by
# the flake's checks.module.
#
#   nix-instantiate --eval --strict --json integration/module-test.nix -A lines
#
# Nothing is built: only the configuration is evaluated. The key pair in
# module-test-keys/ is a test key, used for nothing else.
{
  nixpkgs ? <nixpkgs>,
  system ? builtins.currentSystem,
  lib ? import (toString nixpkgs + "/lib"),
  # modules -> config; null: a NixOS system of nixpkgs.
  evalConfig ? null,
  # The nixpkgs input given to flake.nix's outputs; null: nixpkgs itself.
  flakeNixpkgs ? null,
}:

let
  nixosBase = { lib, ... }: {
    boot.loader.grub.enable = false;
    fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; };
    system.stateVersion = lib.trivial.release;
  };

  evalNixOS = modules:
    (import (toString nixpkgs + "/nixos/lib/eval-config.nix") {
      inherit system;
      modules = modules ++ [ nixosBase ];
    }).config;

  nixpkgsInput =
    if flakeNixpkgs != null then flakeNixpkgs
    else {
      inherit lib;
      outPath = toString nixpkgs;
      legacyPackages = lib.genAttrs [ system ] (system: import (toString nixpkgs) { inherit system; });
    };

  # flake.nix's outputs, as Nix would make them with this nixpkgs as input.
  flake =
    let
      self = (import ../flake.nix).outputs { inherit self; nixpkgs = nixpkgsInput; } // { outPath = toString ../.; };
    in
    self;
  flakeSystems = [ "x86_64-linux" "aarch64-linux" "i686-linux" "armv7l-linux" ];

  inherit (lib) hasInfix hasPrefix elem all any filter;

  testPublic = "peerix-module-test-1:J+kuZwYuUWnKfb5fT5iTOSe7gfjPumruBimjVxY0mQY=";
  peerB = "peer-b-1:tbVOKFaVx5kClZLEnRHkWU+4GRuaxyCur2ecVt3ebMM=";
  peerC = "peer-c-1:E6zudt8bj4pCo9RBiPDsLsjKqWr6D+MjNMXbRJOaphU=";
  # The secret half of peerC: pasted where a public key belongs.
  secretC = "peer-c-1:7vy+L401ChiGyx7zg0eDlylPqIRmWtls4P0/dpsVvtkTrO523xuPikKj1EGI8OwuyMqpavoP4yM0xdtEk5qmFQ==";

  eval = config: (if evalConfig != null then evalConfig else evalNixOS) [ ../module.nix config ];

  configs = {
    # {enable = true;} and nothing else.
    minimal = eval { services.peerix.enable = true; };

    # The widely read blog post: a flake input, the package from it, the
    # keys as path values next to the configuration.
    blog = eval ({ pkgs, ... }: {
      services.peerix = {
        enable = true;
        package = pkgs.callPackage ../default.nix { };
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

    # The recommended way: the secret read at run time, keys as strings,
    # and the options the original did not have.
    runtimeKey = eval {
      services.peerix = {
        enable = true;
        openFirewall = true;
        privateKeyFile = "/var/lib/peerix/private";
        publicKey = testPublic;
        publicKeys = [ peerB peerC ];
        port = 12305;
        timeout = 300;
        priority = 10;
        threads = 8;
        verbose = true;
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

    # The flake's modules, both names imported, with the flake's package.
    flake = (if evalConfig != null then evalConfig else evalNixOS) [
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
  asList = v: if builtins.isList v then v else [ v ];
  loadCredential = c: asList ((sc c).LoadCredential or [ ]);
  # Those about Peerix: a NixOS release may have warnings of its own.
  failedAssertions = c: filter (hasInfix "peerix") (map (a: a.message) (filter (a: !a.assertion) c.assertions));
  peerixWarnings = c: filter (hasInfix "peerix") c.warnings;
  warningsAbout = word: c: filter (hasInfix word) (peerixWarnings c);
  settings = c: c.nix.settings;
  has = xs: x: elem x (asList xs);
  unitText = c: if c.systemd ? units then c.systemd.units."peerix.service".text else "";
  # In the generated unit when NixOS renders it (the stand-in of the
  # lib-only harness does not render units).
  unitHas = c: line: !(c.systemd ? units) || hasInfix "\n${line}\n" (unitText c);

  checks = {
    minimal = let c = configs.minimal; in {
      "the default package evaluates" =
        c.services.peerix.package.pname == "peerix"
        && c.services.peerix.package.meta.mainProgram == "peerix";
      "ExecStart runs the package with the defaults" =
        hasPrefix "${c.services.peerix.package}/bin/peerix --port 12304 --timeout 500 --priority 20" (execStart c);
      "no key, no broadcast flag" =
        !(hasInfix "--private-key" (execStart c)) && !(hasInfix "--no-broadcast" (execStart c))
        && loadCredential c == [ ];
      "a dedicated system user" =
        (sc c).User == "peerix" && (sc c).Group == "peerix"
        && c.users.users.peerix.isSystemUser && c.users.users.peerix.group == "peerix"
        && c.users.groups ? peerix;
      "the user may use the nix-daemon, and so may everyone else" =
        has (settings c).allowed-users "*" && has (settings c).allowed-users "peerix";
      "the node is a substituter" = has (settings c).substituters "http://127.0.0.1:12304";
      "no TTL changed" =
        !((settings c) ? narinfo-cache-negative-ttl) && !((settings c) ? narinfo-cache-positive-ttl)
        && !(hasInfix "narinfo-cache" (c.nix.extraOptions or ""));
      "the firewall stays closed" =
        !(elem 12304 c.networking.firewall.allowedTCPPorts) && !(elem 12304 c.networking.firewall.allowedUDPPorts);
      "only the closed firewall is warned about" =
        builtins.length (peerixWarnings c) == 1 && warningsAbout "openFirewall = true" c != [ ]
        && failedAssertions c == [ ];
      "after and wanting the network" =
        has (svc c).after "network-online.target" && has (svc c).wants "network-online.target"
        && has (svc c).wantedBy "multi-user.target";
      "restarted on failure" = (sc c).Restart == "on-failure";
      "hardened" =
        (sc c).ProtectSystem == "strict" && (sc c).ProtectHome == true && (sc c).NoNewPrivileges == true
        && (sc c).PrivateTmp == true && (sc c).PrivateDevices == true
        && (sc c).CapabilityBoundingSet == "" && (sc c).RestrictNamespaces == true
        && (sc c).LockPersonality == true && (sc c).MemoryDenyWriteExecute == true
        && (sc c).SystemCallArchitectures == "native";
      "system calls: the service set, less the privileged ones" =
        asList (sc c).SystemCallFilter == [ "@system-service" "~@privileged" "~@resources" ];
      "address families for HTTP, broadcast, interfaces and the nix-daemon" =
        all (has (sc c).RestrictAddressFamilies) [ "AF_INET" "AF_INET6" "AF_NETLINK" "AF_UNIX" ];
      "a home and caches in the runtime directory" =
        (sc c).RuntimeDirectory == "peerix" && (svc c).environment.HOME == "/run/peerix"
        && hasPrefix "/run/peerix/" (svc c).environment.XDG_CACHE_HOME;
      "nix on the service's PATH" = has (svc c).path c.nix.package;
      "the unit as written" =
        all (unitHas c) [
          "ExecStart=${execStart c}"
          "ProtectSystem=strict"
          "SystemCallFilter=@system-service"
          "SystemCallFilter=~@privileged"
          "RestrictAddressFamilies=AF_NETLINK"
          "Restart=on-failure"
          "User=peerix"
        ];
    };

    blog = let c = configs.blog; in {
      "the key is loaded as a credential" =
        builtins.length (loadCredential c) == 1
        && hasPrefix "peerix-private-key:${builtins.storeDir}/" (builtins.head (loadCredential c));
      "the daemon reads it from the credentials directory" =
        hasInfix " --private-key %d/peerix-private-key" (execStart c);
      "the store copy is warned about, with the fix" =
        any (w: hasInfix "copied into the Nix store" w && hasInfix ''privateKeyFile = "/var/lib/peerix/private"'' w)
          (warningsAbout "privateKeyFile" c);
      "only that warning" = builtins.length (peerixWarnings c) == 1 && failedAssertions c == [ ];
      "extra hosts" =
        hasInfix "--extra-host my-nixos-computer-hostname --extra-host 42.42.42.1" (execStart c);
      "broadcast stays on" = !(hasInfix "--no-broadcast" (execStart c));
      "firewall open, TCP and UDP" =
        elem 12304 c.networking.firewall.allowedTCPPorts && elem 12304 c.networking.firewall.allowedUDPPorts;
      "keys from publicKeyFile and publicKey are trusted" =
        all (has (settings c).trusted-public-keys) [ testPublic peerB ]
        && has (settings c).trusted-public-keys "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
          == (c.systemd ? units);
      "and given to the daemon" =
        all (k: hasInfix "--trusted-key ${k}" (execStart c)) [ testPublic peerB ];
      "the package given is the one run" = hasPrefix "${c.services.peerix.package}/bin/peerix " (execStart c);
    };

    originalReadme = let c = configs.originalReadme; in {
      "evaluates beside the README's own user" =
        failedAssertions c == [ ] && c.users.users.peerix.group == "peerix" && (sc c).User == "peerix";
      "no broadcast" = hasInfix " --no-broadcast" (execStart c);
      "extra hosts" = hasInfix "--extra-host 42.42.42.1" (execStart c);
      "the store copy is warned about" = warningsAbout "privateKeyFile" c != [ ];
      "the public key file is trusted" = has (settings c).trusted-public-keys testPublic;
    };

    runtimeKey = let c = configs.runtimeKey; in {
      "the key is loaded at run time from its path" =
        loadCredential c == [ "peerix-private-key:/var/lib/peerix/private" ];
      "the path is not in ExecStart" =
        !(hasInfix "/var/lib/peerix" (execStart c)) && hasInfix "--private-key %d/peerix-private-key" (execStart c);
      "no warning, no failed assertion" = peerixWarnings c == [ ] && failedAssertions c == [ ];
      "port, timeout, priority, threads, verbose" =
        all (a: hasInfix a (execStart c)) [ "--port 12305 " "--timeout 300 " "--priority 10 " "--threads 8 " " --verbose" ];
      "the substituter on that port" =
        has (settings c).substituters "http://127.0.0.1:12305"
        && !(has (settings c).substituters "http://127.0.0.1:12304");
      "the firewall on that port" =
        elem 12305 c.networking.firewall.allowedTCPPorts && elem 12305 c.networking.firewall.allowedUDPPorts;
      "publicKey and publicKeys trusted" = all (has (settings c).trusted-public-keys) [ testPublic peerB peerC ];
      "arguments escaped for systemd" =
        hasInfix ''--extra-host "[fd00::7]:12305"'' (execStart c)
        && hasInfix ''--weird "100%%" "$$HOME" "two words"'' (execStart c);
    };

    trust = let c = configs.trust; in {
      "share policy flags" =
        hasInfix "--share-signed-by ${peerB}" (execStart c)
        && hasInfix ''--never-share "*-secret*" --never-share "*.key"'' (execStart c);
      "the network key is loaded at run time" =
        loadCredential c == [ "peerix-network-key:/var/lib/peerix/network-key" ]
        && hasInfix "--network-key-file %d/peerix-network-key" (execStart c)
        && !(hasInfix "/var/lib/peerix/network-key" (execStart c));
      "no warning, no failed assertion" = peerixWarnings c == [ ] && failedAssertions c == [ ];
    };

    legacy = let c = configs.legacy; in {
      "globalCacheTTL is accepted, ignored and warned about" =
        warningsAbout "globalCacheTTL" c != [ ] && !((settings c) ? narinfo-cache-negative-ttl)
        && !(hasInfix "narinfo-cache" (c.nix.extraOptions or ""));
      "nobody works, with a warning" = (sc c).User == "nobody" && warningsAbout "nobody" c != [ ];
      "no peerix user is created for nobody" = !(c.users.users ? peerix) && !(c.users.groups ? peerix);
      "asking nobody is warned about" = warningsAbout "asks no peer" c != [ ];
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
        && hasPrefix "${flake.packages.${system}.peerix}/bin/peerix " (execStart c);
      "packages.<system>.peerix and .default for the common Linux systems" =
        all (s: flake.packages ? ${s}) flakeSystems
        && flake.packages.${system}.peerix.pname == "peerix"
        && flake.packages.${system}.default == flake.packages.${system}.peerix;
      "overlays.default adds peerix" =
        let pkgs = nixpkgsInput.legacyPackages.${system}; in
        (flake.overlays.default pkgs pkgs).peerix.pname == "peerix";
    };

    disabled = let c = configs.disabled; in {
      "no service, no substituter" =
        !(c.systemd.services ? peerix) && !(has ((settings c).substituters or [ ]) "http://127.0.0.1:12304");
    };
  };

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
in
{
  inherit configs checks results;

  # One line per check: "ok NAME", "FAIL NAME" or "ERROR NAME".
  lines = map (r: "${if r.ok then "ok" else if r.error then "ERROR" else "FAIL"} ${r.name}") results;

  summary = "module evaluation: ${toString (builtins.length results - builtins.length failed)} passed, ${toString (builtins.length failed)} failed";

  # For the flake check: fails evaluation unless every check passed.
  passed =
    if failed == [ ] then true
    else throw "module checks failed: ${lib.concatMapStringsSep "; " (r: r.name) failed}";
}
