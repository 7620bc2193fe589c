//! Request heads come from anyone who can reach the port: the vendored
//! tiny_http's `parse_head`, which the connection reader uses for every
//! head, must never panic; a head it serves announces no body (so no number
//! a client sent sizes a buffer or a wait) and is HTTP/1.0 or 1.1; a refusal
//! is one of the statuses it documents; and a served head printed back as
//! text parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiny_http::{parse_head, HTTPVersion};

fuzz_target!(|data: &[u8]| {
    let head = match parse_head(data) {
        Ok(head) => head,
        Err(refusal) => {
            assert!(
                matches!(refusal.status, 400 | 413 | 417),
                "{refusal:?}"
            );
            return;
        }
    };
    assert!(head.version == HTTPVersion(1, 0) || head.version == HTTPVersion(1, 1));
    for h in &head.headers {
        let value = h.value.as_str();
        assert!(
            !h.field.equiv("Content-Length") || value.bytes().all(|b| b == b'0'),
            "a body of {value} bytes was let through"
        );
        assert!(!h.field.equiv("Transfer-Encoding"), "a body was let through");
        assert!(!h.field.equiv("Expect"), "an expectation was let through");
    }
    let _ = head.keep_alive();
    let mut text = format!(
        "{} {} HTTP/{}.{}\r\n",
        head.method.as_str(),
        head.path,
        head.version.0,
        head.version.1
    );
    for h in &head.headers {
        text += &format!("{}: {}\r\n", h.field, h.value);
    }
    text += "\r\n";
    let again = parse_head(text.as_bytes())
        .unwrap_or_else(|r| panic!("{text:?}, printed from a served head, is refused: {r:?}"));
    assert_eq!(again.method, head.method, "{text:?}");
    assert_eq!(again.path, head.path, "{text:?}");
    assert_eq!(again.version, head.version, "{text:?}");
    let fields = |h: &tiny_http::Head| -> Vec<(String, String)> {
        (h.headers.iter())
            .map(|h| (h.field.to_string(), h.value.to_string()))
            .collect()
    };
    assert_eq!(fields(&again), fields(&head), "{text:?}");
});
