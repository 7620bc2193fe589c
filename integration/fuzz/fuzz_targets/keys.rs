//! Key files and `trusted-public-keys` entries: parsing must never panic;
//! an accepted key must print back to text that parses to the same key, and
//! a secret key's public half must round-trip too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerix::nix::keys::{PublicKey, SigningKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = PublicKey::parse(text) {
        let printed = k.to_string();
        assert_eq!(
            PublicKey::parse(&printed).as_ref(),
            Ok(&k),
            "printed {printed:?}"
        );
        let _ = k.verifies("1;/nix/store/x;sha256:0;1;", text);
    }
    if let Ok(sk) = SigningKey::parse(text) {
        let public = sk.public_key();
        let printed = public.to_string();
        assert_eq!(
            PublicKey::parse(&printed).as_ref(),
            Ok(&public),
            "printed {printed:?}"
        );
        assert!(public.verifies("fp", &sk.sign("fp")));
    }
});
