# NixOS without nixpkgs: declarations of the NixOS options module.nix reads
# and sets, and the module arguments it takes (pkgs, utils), for evaluating
# it with nixpkgs' `lib` alone (the module system) where no full nixpkgs is
# at hand. integration/nixos/module-test.nix evaluates with its `evalConfig`.
#
# The declarations follow NixOS's own, with their types, defaults and merge
# rules (nixos/lib/systemd-unit-options.nix, nixos/modules/config/nix.nix,
# users-groups.nix, services/networking/firewall.nix, misc/assertions.nix),
# so that a definition NixOS would refuse or merge differently is refused or
# merged the same way here. Only what the checks look at is computed: the
# generated nix.conf text, not the unit files. Where a full nixpkgs is
# found, integration/nixos/nix-module-test uses the real
# nixos/lib/eval-config.nix instead.
{ lib, system ? builtins.currentSystem }:

let
  inherit (lib) mkOption mkIf mkAfter types;

  # A derivation that evaluates like a package and is never built.
  stubDerivation = name: extra:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" "echo stand-in, not built >&2; exit 1" ];
    }
    // extra;

  # The few packages and builders the module and default.nix ask for.
  pkgs = {
    inherit lib system;
    callPackage = fn: args:
      let f = if builtins.isFunction fn then fn else import fn; in
      f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
    # Keeps what default.nix gives it (doCheck, cargoTestFlags, meta, …) as
    # attributes, as nixpkgs' derivations do.
    rustPlatform.buildRustPackage = attrs:
      stubDerivation "${attrs.pname}-${attrs.version}" (
        { doCheck = true; }
        // removeAttrs attrs [ "src" "cargoLock" "nativeBuildInputs" ]
      );
    makeWrapper = stubDerivation "make-wrapper-hook" { };
    nix = stubDerivation "nix-2.8.0" { pname = "nix"; version = "2.8.0"; };
    writeTextFile = { name, text, ... }: stubDerivation name { inherit text; };
  };

  # nixpkgs' nixos/lib/utils.nix quotes each argument as a JSON string
  # (a subset of systemd's C-style quoting) and doubles `%` and `$`, so that
  # systemd expands neither specifiers nor variables in it.
  utils.escapeSystemdExecArgs = args:
    lib.concatMapStringsSep " "
      (arg: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg)))
      args;

  # A value of the [Unit] or [Service] section: definitions are all lists
  # (a repeatable directive, concatenated) or all equal single values.
  unitOption = types.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let defs' = lib.filterOverrides defs; in
      if builtins.isList (builtins.head defs').value
      then lib.concatMap (def:
        if builtins.isList def.value then def.value
        else throw "The definitions for systemd unit options should be either all lists or all non-lists, but for ${lib.showOption loc} they are a mix.")
        defs'
      else lib.mergeEqualOption loc defs';
  };

  unitNames = types.listOf types.str;

  checkService = attrs:
    builtins.elem (attrs.Type or "simple") [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ]
    && builtins.elem (attrs.Restart or "no") [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "on-watchdog" "always" ];

  service = { ... }: {
    options = {
      enable = mkOption { type = types.bool; default = true; };
      description = mkOption { type = types.singleLineStr; default = ""; };
      documentation = mkOption { type = types.listOf types.str; default = [ ]; };
      wantedBy = mkOption { type = unitNames; default = [ ]; };
      requiredBy = mkOption { type = unitNames; default = [ ]; };
      requires = mkOption { type = unitNames; default = [ ]; };
      wants = mkOption { type = unitNames; default = [ ]; };
      after = mkOption { type = unitNames; default = [ ]; };
      before = mkOption { type = unitNames; default = [ ]; };
      bindsTo = mkOption { type = unitNames; default = [ ]; };
      partOf = mkOption { type = unitNames; default = [ ]; };
      conflicts = mkOption { type = unitNames; default = [ ]; };
      unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      reloadTriggers = mkOption { type = types.listOf unitOption; default = [ ]; };
      restartIfChanged = mkOption { type = types.bool; default = true; };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      path = mkOption { type = types.listOf (types.oneOf [ types.package types.str ]); default = [ ]; };
      serviceConfig = mkOption { type = types.addCheck (types.attrsOf unitOption) checkService; default = { }; };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
      postStart = mkOption { type = types.lines; default = ""; };
    };
  };

  ports = {
    allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
    };
    allowedUDPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
    };
    allowedTCPPortRanges = mkOption { type = types.listOf (types.attrsOf types.port); default = [ ]; };
    allowedUDPPortRanges = mkOption { type = types.listOf (types.attrsOf types.port); default = [ ]; };
  };

  user = { name, ... }: {
    options = {
      name = mkOption { type = types.passwdEntry types.str; default = name; };
      description = mkOption { type = types.passwdEntry types.str; default = ""; };
      uid = mkOption { type = types.nullOr types.int; default = null; };
      isSystemUser = mkOption { type = types.bool; default = false; };
      isNormalUser = mkOption { type = types.bool; default = false; };
      group = mkOption { type = types.str; default = ""; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
      home = mkOption { type = types.passwdEntry types.path; default = "/var/empty"; };
      createHome = mkOption { type = types.bool; default = false; };
    };
  };

  group = { name, ... }: {
    options = {
      name = mkOption { type = types.passwdEntry types.str; default = name; };
      gid = mkOption { type = types.nullOr types.int; default = null; };
      members = mkOption { type = types.listOf (types.passwdEntry types.str); default = [ ]; };
    };
  };

  # nix.settings: declared settings typed, any other a Nix config atom.
  confAtom = types.nullOr (types.oneOf [ types.bool types.int types.float types.str types.path types.package ]);
  nixSettings = types.submodule {
    freeformType = types.attrsOf (types.either confAtom (types.listOf confAtom));
    options = {
      substituters = mkOption { type = types.listOf types.str; };
      trusted-substituters = mkOption { type = types.listOf types.str; default = [ ]; };
      require-sigs = mkOption { type = types.bool; default = true; };
      trusted-public-keys = mkOption { type = types.listOf types.str; };
      trusted-users = mkOption { type = types.listOf types.str; };
      allowed-users = mkOption { type = types.listOf types.str; default = [ "*" ]; };
      sandbox = mkOption { type = types.either types.bool (types.enum [ "relaxed" ]); default = true; };
    };
  };

  # nix.conf as NixOS writes it: `key = value`, lists joined by spaces,
  # extra-* settings after the others, then nix.extraOptions.
  renderNixConf = settings: extraOptions:
    let
      value = v:
        if v == null then ""
        else if builtins.isBool v then lib.boolToString v
        else if builtins.isList v then toString (map value v)
        else toString v;
      pairs = attrs: lib.concatStringsSep "\n" (lib.mapAttrsToList (k: v: "${k} = ${value v}") attrs);
      isExtra = k: lib.hasPrefix "extra-" k;
    in
    ''
      ${pairs (lib.filterAttrs (k: _: !isExtra k) settings)}
      ${pairs (lib.filterAttrs (k: _: isExtra k) settings)}
      ${extraOptions}
    '';

  nixosOptions = { config, ... }: {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; internal = true; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; internal = true; };

      systemd.services = mkOption { type = types.attrsOf (types.submodule service); default = { }; };

      users.users = mkOption { type = types.attrsOf (types.submodule user); default = { }; };
      users.groups = mkOption { type = types.attrsOf (types.submodule group); default = { }; };

      networking.firewall = {
        enable = mkOption { type = types.bool; default = true; };
        trustedInterfaces = mkOption { type = types.listOf types.str; default = [ ]; };
        interfaces = mkOption { type = types.attrsOf (types.submodule { options = ports; }); default = { }; };
      } // ports;

      environment.etc = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            text = mkOption { type = types.nullOr types.lines; default = null; };
            source = mkOption { type = types.path; };
          };
        });
        default = { };
      };

      nix = {
        enable = mkOption { type = types.bool; default = true; };
        package = mkOption { type = types.package; default = pkgs.nix; };
        settings = mkOption { type = nixSettings; default = { }; };
        extraOptions = mkOption { type = types.lines; default = ""; };
      };
    };

    config = {
      _module.args = { inherit pkgs utils; };

      # What NixOS itself defines for these options.
      nix.settings = mkIf config.nix.enable {
        trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
        trusted-users = [ "root" ];
        substituters = mkAfter [ "https://cache.nixos.org/" ];
      };
      environment.etc."nix/nix.conf" = mkIf config.nix.enable {
        source = pkgs.writeTextFile {
          name = "nix.conf";
          text = renderNixConf config.nix.settings config.nix.extraOptions;
        };
      };
      networking.firewall.trustedInterfaces = mkIf config.networking.firewall.enable [ "lo" ];

      # users-groups.nix's checks of a user's kind and group.
      assertions = lib.concatLists (lib.mapAttrsToList
        (name: u: [
          {
            assertion = u.isNormalUser != u.isSystemUser;
            message = "Exactly one of users.users.${name}.isSystemUser and users.users.${name}.isNormalUser must be set.";
          }
          {
            assertion = u.isNormalUser || u.group != "";
            message = "users.users.${name}.group is unset.";
          }
        ])
        config.users.users);
    };
  };
in
{
  inherit lib pkgs;
  # modules -> the configuration they make.
  evalConfig = modules: (lib.evalModules { modules = [ nixosOptions ] ++ modules; }).config;
}
