//! Store summaries come from peers (`/peer/summary/<version>`): parsing
//! must never panic, whatever parses must encode back to the same bytes,
//! and a parsed whole summary must answer queries without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerix::nix::narinfo::HashPart;
use peerix::store::summary::{PeerSummary, Update};

fuzz_target!(|data: &[u8]| {
    if let Some(u) = Update::parse(data) {
        let bytes = u.encode();
        assert_eq!(Update::parse(&bytes), Some(u.clone()), "round trip of {u:?}");
        // Every byte is a field or a counted item: the encoding is the input.
        assert_eq!(bytes, data, "encode(parse(x)) != x");
        if let Ok(s) = PeerSummary::update(None, u) {
            let hash = HashPart::parse("0123456789abcdfghijklmnpqrsvwxyz").expect("nix32");
            let _ = s.may_hold(&hash);
            let _ = s.bytes();
        }
    }
});
