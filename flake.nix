{
  description = "Peerix: a peer-to-peer Nix binary cache for the machines of a LAN";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" "i686-linux" "armv7l-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      # The module takes its default package from the configuration's own
      # pkgs (pkgs.callPackage ./default.nix { }); set
      # services.peerix.package = peerix.packages.${system}.peerix; to use this
      # flake's nixpkgs instead. Imported by path, so that importing both
      # names does not declare the options twice.
      nixosModules.peerix = { imports = [ ./module.nix ]; };
      nixosModules.default = self.nixosModules.peerix;

      overlays.default = final: prev: { peerix = final.callPackage ./default.nix { }; };
      # The original Peerix flake's name for it.
      overlay = self.overlays.default;

      packages = forAllSystems (system: pkgs: {
        # With the flake's commit for `peerix --version` (none when dirty).
        peerix = pkgs.callPackage ./default.nix { commit = self.shortRev or null; };
        default = self.packages.${system}.peerix;
      });

      checks = forAllSystems (system: pkgs: {
        package = self.packages.${system}.peerix;
        # Evaluates the module in several configurations (see
        # integration/nixos/nix-module-test); builds nothing but a stamp.
        module =
          let
            result = import ./integration/nixos/module-test.nix { inherit nixpkgs system; };
          in
          assert result.passed;
          pkgs.runCommand "peerix-module-test" { } ''
            echo ${lib.escapeShellArg result.summary} | tee $out
          '';
      });
    };
}
