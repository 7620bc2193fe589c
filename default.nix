# The peerix package; completed by the deployment issue.
{ pkgs ? import <nixpkgs> { } }:
pkgs.rustPlatform.buildRustPackage {
  pname = "peerix";
  version = "0.2.0";
  src = ./.;
  cargoLock.lockFile = ./Cargo.lock;
}
