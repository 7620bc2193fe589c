mod keys;
mod narinfo;
mod nix32;
fn main() {}
