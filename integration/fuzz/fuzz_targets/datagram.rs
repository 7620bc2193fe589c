//! Discovery datagrams come from anyone on the LAN: parsing must never
//! panic, and whatever parses must encode back to bytes that parse to the
//! same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerix::discovery::wire::Datagram;

fuzz_target!(|data: &[u8]| {
    if let Some(d) = Datagram::parse(data) {
        let bytes = d.encode();
        assert_eq!(
            Datagram::parse(&bytes),
            Some(d.clone()),
            "round trip of {d:?}"
        );
        // Each kind has exactly one length, so the encoding is the input.
        assert_eq!(bytes, data, "encode(parse(x)) != x for {d:?}");
    }
});
