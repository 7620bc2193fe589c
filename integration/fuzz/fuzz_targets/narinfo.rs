//! Narinfo text comes from peers: parsing must never panic, the fingerprint
//! of anything accepted must not panic, and rendering what was parsed must
//! parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerix::nix::narinfo::NarInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = NarInfo::parse(text) {
        let _ = n.fingerprint();
        let _ = n.hash_part();
        let rendered = n.render();
        match NarInfo::parse(&rendered) {
            Ok(again) => assert_eq!(again, n, "render/parse changed it; rendered {rendered:?}"),
            Err(e) => {
                panic!("render of an accepted narinfo is refused: {e}; rendered {rendered:?}")
            }
        }
    }
});
