//! Compression between nodes of ours (`src/compress.rs`), with real Nix in
//! network namespaces and links limited by `tc`.
//!
//! Covers: a compressed stream whose peer is killed half way (the NAR
//! comes from both peers at once, in stripes), the other peer going on at
//! the same NAR byte (compressed too) and Nix getting the NAR its narinfo
//! names; curl, curl `--compressed`, the original's routes and
//! a node with `--compress never` getting raw bytes, while a node of ours
//! gets the framed stream (whole and from a byte on); random data sent raw
//! after the first blocks on a link where real programs are compressed.

mod support;

use std::io::Read;

use peerix::peer::framed::{Decoder, ENCODING, NO_GAIN_PACE};
use support::{
    build_programs, build_random, copy_to, generate_key, hash_of, metric, metrics, nar_under_way,
    nar_went_on, node, wait_offered, Daemon, Host, Net, LOCAL,
};

/// The NAR of `path` as Nix serializes it on `host`.
fn dump(host: &Host, path: &str) -> Vec<u8> {
    let out = host.cmd("nix-store", &["--dump", path]).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The kinds (0 raw, 1 zstd) of the blocks of a framed stream.
fn block_kinds(stream: &[u8]) -> Vec<u8> {
    let (mut kinds, mut at) = (Vec::new(), 0);
    while at + 9 <= stream.len() {
        kinds.push(stream[at]);
        at += 9 + u32::from_be_bytes(stream[at + 5..at + 9].try_into().unwrap()) as usize;
    }
    assert_eq!(at, stream.len(), "the stream ends at a block boundary");
    kinds
}

/// The NAR bytes of a framed stream of `len` of them.
fn decode(stream: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    Decoder::new(stream, len as u64)
        .read_to_end(&mut out)
        .expect("a valid framed stream");
    out
}

/// The `N` of the sender's "N blocks compressed" lines, summed.
fn compressed_blocks(daemon: &Daemon) -> u64 {
    daemon
        .log_lines("blocks compressed")
        .iter()
        .filter_map(|l| {
            l.split("sent: ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn a_compressed_stream_killed_mid_way_fails_over_at_the_right_nar_byte() {
    let Some(net) = Net::new(3) else { return };
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    let key = generate_key(h1, "shared-1");
    let path = build_programs(h1, &net.prefix, 256 << 20);
    copy_to(h1, h2, &path);
    let want = dump(h1, &path);
    // About 95 MiB compressed, striped over two 100 Mbit/s links: 4 s to
    // kill a peer half way.
    h1.limit_rate(100);
    h2.limit_rate(100);
    let always = ["--compress", "always"];
    let mut way = nar_under_way(&net, &key, &path, &always, None);
    way.peers[way.streaming].kill();
    let (_, resumed, offset) = nar_went_on(&mut way.nix, &way.n3, "nix-store");
    assert!(offset > 0 && offset < want.len() as u64, "{resumed}");
    let other = &way.peers[1 - way.streaming];
    // The peer that went on (from that NAR byte) sent the rest compressed.
    assert!(compressed_blocks(other) > 0, "{}", other.log());
    assert_eq!(dump(h3, &path), want, "the NAR Nix got");
    // The receiver counted framed bytes in and NAR bytes out: every NAR
    // byte came decoded (some twice, where a lane was asked again), from
    // under two thirds as many bytes received.
    let text = metrics(h3);
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("{series}: {text}"));
    let decoded = value("peerix_compress_decoded_bytes_total");
    let received = value("peerix_compress_received_bytes_total");
    assert!(decoded >= want.len() as f64, "{text}");
    assert!(received > 0.0 && received < decoded * 2.0 / 3.0, "{text}");
}

#[test]
fn curl_and_original_nodes_get_raw_bytes_and_our_nodes_the_framed_stream() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "k-1");
    let path = build_programs(h1, &net.prefix, 8 << 20);
    let want = dump(h1, &path);
    let n1 = node(h1, &key, &[], &["--compress", "always"]);
    wait_offered(h1, &path);
    let url = format!("http://{}:12304/peer/nar/{}.nar", h1.addr4, hash_of(&path));
    let ours = format!("Accept-Encoding: {ENCODING}");

    // curl, with and without --compressed (which asks for zstd): raw.
    for extra in [&[][..], &["--compressed"][..]] {
        let mut args = vec![url.as_str()];
        args.extend(extra);
        let got = h2.curl(&args);
        assert_eq!(got.status, 200);
        assert_eq!(got.header("Content-Encoding"), None, "{extra:?}");
        let length = want.len().to_string();
        assert_eq!(got.header("Content-Length"), Some(length.as_str()));
        assert!(got.body == want, "{extra:?}: the NAR, raw");
    }
    // The original's route never frames, even when asked.
    let v1 = h1.run(&format!(
        "curl -s http://127.0.0.1:12304/local/{}.narinfo | sed -n 's/^URL: //p'",
        hash_of(&path)
    ));
    let got = h2.curl(&[&format!("http://{}:12304/{v1}", h1.addr4), "-H", &ours]);
    assert_eq!(got.status, 200, "{v1}");
    assert_eq!(got.header("Content-Encoding"), None);
    assert!(got.body == want);

    // A node of ours asks for the framed stream: compressed blocks that
    // decode to the NAR, whole or from a NAR byte on.
    let got = h2.curl(&[&url, "-H", &ours]);
    assert_eq!(
        got.status,
        200,
        "{} {:?} {}",
        got.stderr,
        got.headers,
        n1.log()
    );
    assert_eq!(got.header("Content-Encoding"), Some(ENCODING));
    assert!(block_kinds(&got.body).contains(&1));
    assert!(got.body.len() < want.len() * 2 / 3, "{}", got.body.len());
    assert!(decode(&got.body, want.len()) == want);
    let from = 3_000_001;
    let range = format!("Range: bytes={from}-");
    let got = h2.curl(&[&url, "-H", &ours, "-H", &range]);
    assert_eq!(got.status, 206);
    let content_range = format!("bytes {from}-{}/{}", want.len() - 1, want.len());
    assert_eq!(got.header("Content-Range"), Some(content_range.as_str()));
    assert!(decode(&got.body, want.len() - from) == want[from..]);

    // The sender counted the two framed streams (and not the raw ones):
    // their NAR bytes, compressed blocks, fewer bytes out than in.
    let text = metrics(h1);
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("{series}: {text}"));
    let framed_nar = (2 * want.len() - from) as f64;
    assert_eq!(
        value("peerix_compress_sent_nar_bytes_total"),
        framed_nar,
        "{text}"
    );
    assert!(
        value("peerix_compress_sent_blocks_total{kind=\"zstd\"}") > 0.0,
        "{text}"
    );
    let (zstd_in, zstd_out) = (
        value("peerix_compress_zstd_in_bytes_total"),
        value("peerix_compress_zstd_out_bytes_total"),
    );
    assert!(zstd_in <= framed_nar && zstd_out < zstd_in, "{text}");
    assert!(zstd_out > 0.0, "{text}");

    // A node with --compress never answers raw, even when asked.
    drop(n1);
    let _n1 = node(h1, &key, &[], &["--compress", "never"]);
    wait_offered(h1, &path);
    let got = h2.curl(&[&url, "-H", &ours]);
    assert_eq!(got.header("Content-Encoding"), None);
    assert!(got.body == want);
    // ... and frames nothing: no block, compressed or not.
    let text = metrics(h1);
    for series in [
        "peerix_compress_sent_nar_bytes_total",
        "peerix_compress_sent_blocks_total{kind=\"raw\"}",
        "peerix_compress_sent_blocks_total{kind=\"zstd\"}",
    ] {
        assert_eq!(metric(&text, series), Some(0.0), "{series}: {text}");
    }
}

#[test]
fn incompressible_data_is_sent_raw_after_the_first_blocks() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "k-1");
    let random = build_random(h1, &net.prefix, 8 << 20);
    let programs = build_programs(h1, &net.prefix, 12 << 20);
    // On 20 Mbit/s compressing pays for programs; not for random bytes.
    // The link is slow enough that any build on any machine compresses
    // faster than it drains (zstd -1: 300 MB/s optimized, 22 MB/s not;
    // the sender times it in its thread's CPU time, so busy neighbours
    // do not slow it), so the choice does not hang on this machine's speed.
    h1.limit_rate(20);
    let n1 = node(h1, &key, &[], &[]);
    let ours = format!("Accept-Encoding: {ENCODING}");
    for (path, compresses) in [(&random, false), (&programs, true)] {
        wait_offered(h1, path);
        let url = format!("http://{}:12304/peer/nar/{}.nar", h1.addr4, hash_of(path));
        let got = h2.curl(&[&url, "-H", &ours]);
        assert_eq!(got.header("Content-Encoding"), Some(ENCODING));
        let kinds = block_kinds(&got.body);
        let zstd = kinds.iter().filter(|&&k| k == 1).count();
        let nar = dump(h1, path);
        assert!(decode(&got.body, nar.len()) == nar);
        match compresses {
            // zstd stores random blocks raw anyway: the sender gave up trying.
            false => {
                assert_eq!(zstd, 0);
                assert_eq!(
                    n1.log_lines("sent raw from here on").len(),
                    1,
                    "{}",
                    n1.log()
                );
                assert_eq!(compressed_blocks(&n1), 0);
            }
            true => assert!(
                zstd * 2 >= kinds.len(),
                "{zstd} of {}: {:?}",
                kinds.len(),
                n1.log_lines("NAR stream sent")
            ),
        }
    }
}

/// A node asks a peer for the framed stream only while that peer's NARs
/// came slower than compressing could pay for (`NO_GAIN_PACE`, learnt from
/// the last NARs): a fast peer's next NAR comes plain; once its link is
/// down to 100 Mbit/s and the node has seen it, framed again.
#[test]
fn a_peer_faster_than_compressing_pays_for_is_asked_for_plain_nars() {
    let Some(net) = Net::new(2) else { return };
    let (h1, h2) = (net.host(1), net.host(2));
    let key = generate_key(h1, "k-1");
    let paths: Vec<String> = (0..6)
        .map(|i| build_random(h1, &format!("{}-plain{i}", net.prefix), 8 << 20))
        .collect();
    let _n1 = node(h1, &key, &[], &[]);
    let _n2 = node(h2, &generate_key(h2, "k-2"), &[&key], &[]);
    for p in &paths {
        wait_offered(h1, p);
    }
    // Framed NAR bytes h1 sent, and the pace h2 learnt of it.
    let framed = || metric(&metrics(h1), "peerix_compress_sent_nar_bytes_total").unwrap_or(0.0);
    let pace = || {
        let text = metrics(h2);
        (text.lines()).find_map(|l| {
            l.strip_prefix("peerix_peer_pace_bytes_per_second{")?
                .split(' ')
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
    };
    let fetch = |path: &str| {
        let info = h2
            .curl(&[&format!("{LOCAL}/{}.narinfo", hash_of(path))])
            .text();
        let url = (info.lines())
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap_or_else(|| panic!("no URL: {info}"))
            .to_string();
        let nar = h2.curl(&[&format!("{LOCAL}/{url}")]);
        assert_eq!(nar.status, 200);
        assert!(nar.body == dump(h1, path));
    };
    // Each NAR is framed exactly when the pace before it is unknown or
    // under NO_GAIN_PACE; the link slows down after the second.
    let mut framed_again = false;
    for (i, path) in paths.iter().enumerate() {
        if i == 2 {
            h1.limit_rate(100);
        }
        let (before, sent) = (pace(), framed());
        fetch(path);
        let was_framed = framed() > sent;
        let want = before.is_none_or(|p| p < NO_GAIN_PACE);
        assert_eq!(was_framed, want, "NAR {i}, pace before it {before:?}");
        if i == 1 && was_framed {
            eprintln!("a veth under {NO_GAIN_PACE} B/s here: no plain NAR to show");
        }
        framed_again |= i > 1 && was_framed;
    }
    // Behind 100 Mbit/s the pace falls under it within four NARs.
    assert!(framed_again, "no NAR framed again behind 100 Mbit/s");
}
