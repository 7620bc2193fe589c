# The peerix package.
#
# Both a callPackage function (the flake, the overlay and the NixOS module
# use `pkgs.callPackage ./default.nix { }`) and a file for nix-build: with no
# arguments, every input comes from <nixpkgs>.
#
#   nix-build                      # ./result/bin/peerix
#   nix-build --arg pkgs 'import /path/to/nixpkgs { }'
{
  pkgs ? import <nixpkgs> { },
  lib ? pkgs.lib,
  rustPlatform ? pkgs.rustPlatform,
  makeWrapper ? pkgs.makeWrapper,
  nix ? pkgs.nix,
  # The git commit the source is from, shown by `peerix --version` and the
  # dashboard (the flake passes its own; a build has no .git to ask).
  commit ? null,
}:

let
  cargoToml = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package;

  # What cargo needs to build the daemon: the manifest, the lock file and
  # src/. Nothing else (tests, README, target/, the Nix files) goes into the
  # source, so editing those does not rebuild the package.
  root = toString ./.;
  keep = [ "Cargo.toml" "Cargo.lock" "src" ];
  src = builtins.path {
    name = "peerix-source";
    path = ./.;
    filter = path: type:
      let
        relative = builtins.substring (builtins.stringLength root + 1) (-1) (toString path);
        top = builtins.head (builtins.split "/" relative);
      in
      builtins.elem top keep;
  };
in
rustPlatform.buildRustPackage {
  pname = cargoToml.name;
  inherit (cargoToml) version;
  inherit src;

  # Crates are fetched by nixpkgs from the checksums of Cargo.lock, as
  # fixed-output derivations; the build itself is offline (--frozen).
  cargoLock.lockFile = ./Cargo.lock;

  nativeBuildInputs = [ makeWrapper ];

  # Read by src/build.rs.
  env = lib.optionalAttrs (commit != null) { PEERIX_COMMIT = commit; };

  # The daemon runs nix-store and nix. A nix already on PATH (on NixOS, the
  # system's, which its nix-daemon runs) comes first; this one is the
  # fallback.
  postInstall = ''
    wrapProgram $out/bin/peerix --suffix PATH : ${lib.makeBinPath [ nix ]}
  '';

  # checkPhase runs the unit tests (`cargo test --lib`): they need nothing
  # but the source. The integration tests need root, network namespaces and
  # Nix stores of their own (see integration/test), which the build sandbox
  # does not have; they are not part of the source above anyway.
  cargoTestFlags = [ "--lib" ];

  meta = {
    description = cargoToml.description;
    longDescription = ''
      Every machine of a LAN runs the peerix daemon: it serves its own
      /nix/store to its peers, and is a substituter for the local Nix that
      asks its peers (UDP broadcast, plus configured hosts) for the paths
      Nix wants. It speaks the original Python Peerix's wire format.
    '';
    license = lib.licenses.gpl3Plus;
    mainProgram = "peerix";
    platforms = lib.platforms.linux;
  };
}
