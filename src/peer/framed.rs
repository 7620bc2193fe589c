//! Adaptive compression of NARs between nodes of ours: the framed stream a
//! peer route sends when asked for it, the sender's choice per block (raw
//! or zstd) and the receiver's decoder back to plain NAR bytes.
//!
//! A node asks for it with `Accept-Encoding: x-peerix-zblocks` on
//! `/peer/nar/…` (not with `--compress never`, nor of a peer whose NARs
//! came faster than [`NO_GAIN_PACE`]); a sender that is not `never`
//! answers with `Content-Encoding: x-peerix-zblocks` and `Transfer-Encoding:
//! chunked` (the encoded length is not known ahead). Everyone else gets raw
//! bytes with a `Content-Length`: curl (with `--compressed` too), the
//! original's `/local/` routes and its nodes, and the local Nix, whose
//! narinfo says `Compression: none` so that its `Range` resumes work.
//!
//! The stream is a run of blocks, each a 9-byte header and the encoded
//! bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | kind: 0 raw, 1 one zstd frame |
//! | 4 | NAR bytes in the block (u32 BE; 1 to `MAX_BLOCK`, 1 MiB; the sender makes 256 KiB less the header) |
//! | 4 | encoded bytes that follow (u32 BE; the NAR bytes again when raw) |
//!
//! The stream ends at a block boundary once every NAR byte asked for is
//! sent. Offsets stay in NAR bytes: `Range: bytes=N-` is answered 206 with
//! `Content-Range: bytes N-(size-1)/size` and the stream of the NAR from
//! byte N, and a receiver that fails over asks the next peer from the next
//! NAR byte it decoded, compressed or not. The decoded bytes are what
//! goes to the NarHash check and on to Nix.
//!
//! The sender compresses a block only while it pays: while the link, not
//! the CPU, is the bottleneck (writing the last blocks to the socket took
//! longer than compressing takes, by a margin) and the data compresses
//! (better than `POOR_RATIO`). A stream whose blocks compress worse than
//! that `GIVE_UP_AFTER` times in a row is sent raw to its end. With
//! `--compress always` every block is compressed, and still sent raw where
//! zstd does not shrink it. The cost: zstd -1 takes the sender about 3 to
//! 4 s of CPU per GiB of programs (300 to 400 MB/s a core) against about
//! 1.2 s raw; the receiver spends about as much as raw at 100 Mbit/s, a
//! third more at 1 Gbit/s.

use std::io::{self, Read};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Framed;

/// The content coding of the framed stream, asked for in `Accept-Encoding`
/// and named in `Content-Encoding`. Not `zstd`: a client that asks for
/// that (curl `--compressed`) expects one zstd stream, which this is not.
pub const ENCODING: &str = "x-peerix-zblocks";

/// NAR bytes per block the sender makes: with its header, a block is one
/// 256 KiB piece of the reply writer (`copy_chunked` in tiny_http), read
/// straight into its buffer when raw, and one chunk on the wire.
const BLOCK: usize = 256 * 1024 - HEADER;
/// The most NAR bytes a receiver accepts in one block.
const MAX_BLOCK: usize = 1024 * 1024;
const HEADER: usize = 9;
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// zstd's fastest level with real gains (`zstd -1`: 2.7x on binaries).
const LEVEL: i32 = 1;

/// NAR bytes a second from a peer past which compressing cannot pay: zstd
/// -1 makes 300–500 MB/s on a core, and a sender compresses only while
/// that is `SPEED_MARGIN` times faster than its link. A node asks a peer
/// whose last NARs came faster for plain NARs: raw blocks in the framed
/// stream cost the receiver more than a plain body (over a veth 11 % more
/// CPU time, with 1.6 times the reads of its socket: a block's chunk line
/// and header refill the reader's buffer), which shows on such links,
/// where the receiver's CPU is the bottleneck.
pub const NO_GAIN_PACE: f64 = 400e6;
/// Compress only while compressing is this much faster than the link
/// drains raw bytes: the receiver decompresses, and both pay CPU.
const SPEED_MARGIN: f64 = 1.5;
/// A block whose NAR bytes are fewer than this many times its zstd bytes
/// compresses poorly.
const POOR_RATIO: f64 = 1.1;
/// Poorly compressing blocks in a row after which a stream stays raw.
const GIVE_UP_AFTER: u32 = 2;
/// Every this many blocks the sender tries the other choice once, to see
/// whether the link or the CPU changed…
const PROBE_EVERY: u64 = 32;
/// …and every this many when the choice is clear, the link's pace and
/// zstd's this many times apart (over 100 Mbit/s, or a veth): each probe
/// there costs a block sent at the wrong speed.
const PROBE_RARELY: u64 = 128;
const CLEAR: f64 = 2.5;
/// The weight of the newest raw block in the link's pace. A socket buffer
/// swallows a few blocks at once, then holds the writer for a long while:
/// the pace is the waits over the bytes of the last several blocks, more
/// than a buffer's worth (a block's pace alone flips the choice on a fast
/// link, and each flip costs up to `PROBE_EVERY` compressed blocks).
const LINK_WEIGHT: f64 = 1.0 / 16.0;

/// Whether this node compresses NARs to its peers and asks them to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Compress while it pays (see the module's comment).
    Auto,
    /// Compress every block (still raw where zstd would not shrink it).
    Always,
    /// Never compress nor ask for it: NARs travel raw, as before.
    Never,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "always" => Ok(Mode::Always),
            "never" => Ok(Mode::Never),
            _ => Err(format!("{s:?} is not one of auto, always, never")),
        }
    }
}

/// True when an `Accept-Encoding` value asks for the framed stream.
pub fn accepts(accept_encoding: &str) -> bool {
    accept_encoding
        .split(',')
        .any(|c| c.split(';').next().unwrap_or("").trim() == ENCODING)
}

/// The sender's choice per block, from what it measured of the link and of
/// zstd on this stream.
#[derive(Debug)]
struct Policy {
    mode: Mode,
    /// Seconds the socket took for the last raw blocks, and their wire
    /// bytes (sums decaying by `LINK_WEIGHT`): their ratio is the link's
    /// pace, an average of time, not of rates, so that the blocks the
    /// socket buffer swallowed at once do not outweigh the one that waited.
    link_waited: f64,
    link_bytes: f64,
    /// Seconds zstd took per NAR byte (EWMA).
    zstd: Option<f64>,
    /// NAR bytes per zstd byte of the last compressed blocks (EWMA).
    ratio: Option<f64>,
    poor_in_a_row: u32,
    given_up: bool,
    /// Blocks sent since the other choice was last tried.
    since_probe: u64,
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.5 * o + 0.5 * new))
}

impl Policy {
    fn new(mode: Mode) -> Policy {
        Policy {
            mode,
            link_waited: 0.0,
            link_bytes: 0.0,
            zstd: None,
            ratio: None,
            poor_in_a_row: 0,
            given_up: false,
            since_probe: 0,
        }
    }

    /// Whether to compress the next block.
    fn compress_next(&mut self) -> bool {
        match self.mode {
            Mode::Never => return false,
            Mode::Always => return true,
            Mode::Auto if self.given_up => return false,
            Mode::Auto => {}
        }
        // The first block is compressed to learn how well and how fast.
        let (Some(zstd), Some(ratio)) = (self.zstd, self.ratio) else {
            return true;
        };
        let Some(link) = self.link() else {
            return false;
        };
        let (compressing, raw) = (zstd * SPEED_MARGIN, link);
        let compresses = ratio >= POOR_RATIO;
        let pays = compresses && compressing < raw;
        // Now and then the other choice, to see whether things changed (and
        // soon when the data compresses poorly: a second such block ends
        // the trying).
        let clear = compresses && compressing.max(raw) > CLEAR * compressing.min(raw);
        let every = if clear { PROBE_RARELY } else { PROBE_EVERY };
        match self.since_probe >= every {
            true => {
                self.since_probe = 0;
                !pays
            }
            false => pays,
        }
    }

    /// Seconds the link takes per wire byte, once a raw block was sent.
    fn link(&self) -> Option<f64> {
        (self.link_bytes > 0.0).then(|| self.link_waited / self.link_bytes)
    }

    /// A block of `nar` NAR bytes was compressed to `encoded` in `took`.
    fn compressed(&mut self, nar: usize, encoded: usize, took: Duration) {
        let ratio = nar as f64 / encoded.max(1) as f64;
        self.ratio = ewma(self.ratio, ratio);
        self.zstd = ewma(self.zstd, took.as_secs_f64() / nar.max(1) as f64);
        self.poor_in_a_row = match ratio < POOR_RATIO {
            true => self.poor_in_a_row + 1,
            false => 0,
        };
        if self.mode == Mode::Auto && self.poor_in_a_row >= GIVE_UP_AFTER {
            if !self.given_up {
                log::debug!("NAR stream compresses {ratio:.2}x: sent raw from here on");
            }
            self.given_up = true;
        }
    }

    /// The last block's `wire` bytes were written in `waited` (the time the
    /// writer spent outside the encoder). Only raw blocks tell how fast the
    /// link drains: the wait for a compressed one also holds the
    /// receiver's decompressing (more work per wire byte), and a receiver
    /// short of CPU would then look like a slow link, and compression feed
    /// itself. While compressing, the probes (every `PROBE_EVERY` or
    /// `PROBE_RARELY` blocks) keep the link's pace current.
    fn written(&mut self, wire: usize, waited: Duration, was_raw: bool) {
        self.since_probe += 1;
        if was_raw {
            let keep = 1.0 - LINK_WEIGHT;
            self.link_waited = keep * self.link_waited + waited.as_secs_f64();
            self.link_bytes = keep * self.link_bytes + wire as f64;
        }
    }
}

/// The framed stream of a NAR: reads plain NAR bytes from `source` and
/// yields blocks, each compressed or not as `Policy` decides. It times
/// the reader that drains it (the reply writer) to learn the link's pace.
pub struct Encoder<R> {
    source: R,
    policy: Policy,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// A block's header and NAR bytes: sent as they are when raw.
    input: Vec<u8>,
    /// A block's header and zstd frame.
    zstd: Vec<u8>,
    /// Whether `input` (else `zstd`) is being sent, and how far.
    raw: bool,
    out_pos: usize,
    /// The last block: wire bytes, and raw or not.
    last: Option<(usize, bool)>,
    /// Time spent outside `read` since the last block was made.
    waited: Duration,
    left_at: Option<Instant>,
    /// Blocks sent compressed and raw, for the log.
    counts: [u64; 2],
    /// The node's counters, if counted.
    metrics: Option<Arc<Framed>>,
}

impl<R: Read> Encoder<R> {
    pub fn new(source: R, mode: Mode) -> Encoder<R> {
        Encoder {
            source,
            policy: Policy::new(mode),
            compressor: None,
            input: Vec::new(),
            zstd: Vec::new(),
            raw: true,
            out_pos: 0,
            last: None,
            waited: Duration::ZERO,
            left_at: None,
            counts: [0; 2],
            metrics: None,
        }
    }

    /// Counts the blocks it makes in `metrics`.
    pub fn counted(mut self, metrics: Option<Arc<Framed>>) -> Encoder<R> {
        self.metrics = metrics;
        self
    }

    /// Blocks sent so far: (raw, compressed).
    pub fn counts(&self) -> (u64, u64) {
        (self.counts[0], self.counts[1])
    }

    /// Reads the next block of the source and frames it: straight into
    /// `buf` when it goes raw and `buf` holds a whole block (no copy: the
    /// frame's length is returned), else into `input` or `zstd`, for `out`
    /// (0 is returned). `None` at the end of the source.
    fn next_block(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if let Some((wire, raw)) = self.last.take() {
            self.policy.written(wire, self.waited, raw);
        }
        let compress = self.policy.compress_next();
        let direct = !compress && buf.len() >= HEADER + BLOCK;
        self.input.clear();
        self.out_pos = 0;
        self.raw = true;
        let filled = match direct {
            true => fill(&mut self.source, &mut buf[HEADER..HEADER + BLOCK])?,
            false => {
                self.input.resize(HEADER + BLOCK, 0);
                let filled = fill(&mut self.source, &mut self.input[HEADER..])?;
                self.input.truncate(HEADER + filled);
                filled
            }
        };
        if filled == 0 {
            self.input.clear();
            return Ok(None);
        }
        if compress {
            let zstart = thread_cpu_time();
            let compressor = match &mut self.compressor {
                Some(c) => c,
                None => self.compressor.insert(zstd::bulk::Compressor::new(LEVEL)?),
            };
            let bound = zstd::zstd_safe::compress_bound(filled);
            self.zstd.resize(HEADER + bound, 0);
            let encoded =
                compressor.compress_to_buffer(&self.input[HEADER..], &mut self.zstd[HEADER..])?;
            let took = thread_cpu_time().saturating_sub(zstart);
            self.policy.compressed(filled, encoded, took);
            self.zstd.truncate(HEADER + encoded);
            self.raw = encoded >= filled;
        }
        let (kind, frame): (u8, &mut [u8]) = match (direct, self.raw) {
            (true, _) => (RAW, &mut buf[..HEADER + filled]),
            (false, true) => (RAW, &mut self.input),
            (false, false) => (ZSTD, &mut self.zstd),
        };
        let encoded = frame.len() - HEADER;
        frame[0] = kind;
        frame[1..5].copy_from_slice(&(filled as u32).to_be_bytes());
        frame[5..9].copy_from_slice(&(encoded as u32).to_be_bytes());
        let wire = frame.len();
        self.counts[usize::from(kind == ZSTD)] += 1;
        if let Some(metrics) = &self.metrics {
            metrics.sent_block(filled, (kind == ZSTD).then_some(encoded));
        }
        self.last = Some((wire, self.raw));
        self.waited = Duration::ZERO;
        Ok(Some(if direct { wire } else { 0 }))
    }

    /// The bytes of the block being sent.
    fn out(&self) -> &[u8] {
        match self.raw {
            true => &self.input,
            false => &self.zstd,
        }
    }
}

impl<R: Read> Read for Encoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.left_at.take() {
            self.waited += left.elapsed();
        }
        if self.out_pos == self.out().len() {
            match self.next_block(buf)? {
                None => {
                    let (raw, zstd) = self.counts();
                    let mb = |v: Option<f64>| v.map_or("?".into(), |v| format!("{:.1}", 1e-6 / v));
                    log::debug!(
                        "NAR stream sent: {zstd} blocks compressed, {raw} raw (link {} MB/s, zstd {} MB/s at {}x)",
                        mb(self.policy.link()),
                        mb(self.policy.zstd),
                        self.policy.ratio.map_or("?".into(), |r| format!("{r:.2}"))
                    );
                    return Ok(0);
                }
                Some(0) => {}
                Some(direct) => {
                    self.left_at = Some(Instant::now());
                    return Ok(direct);
                }
            }
        }
        let out = &self.out()[self.out_pos..];
        let n = buf.len().min(out.len());
        buf[..n].copy_from_slice(&out[..n]);
        self.out_pos += n;
        self.left_at = Some(Instant::now());
        Ok(n)
    }
}

/// The CPU time this thread has used. zstd's pace is timed in it, not by
/// the clock: a thread that waits for a CPU (a busy machine) is not a slow
/// compressor, and the wait would make compressing look too dear.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Reads `source` into `buf` until it is full or the source ends: the
/// bytes read.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Plain NAR bytes from a framed stream of `left` NAR bytes. Ends (`Ok(0)`)
/// only at a block boundary; a stream cut inside a block, or a malformed
/// block, is an error, never short or wrong bytes. Once the last byte is
/// decoded it reads the stream's end at once, so that the connection under
/// it is free for the next request even if nobody reads on.
pub struct Decoder<R> {
    source: R,
    left: u64,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// Raw NAR bytes of the current block still to pass on from `source`.
    raw_left: usize,
    encoded: Vec<u8>,
    decoded: Vec<u8>,
    pos: usize,
    /// The node's counters, if counted.
    metrics: Option<Arc<Framed>>,
}

impl<R: Read> Decoder<R> {
    pub fn new(source: R, left: u64) -> Decoder<R> {
        Decoder {
            source,
            left,
            decompressor: None,
            raw_left: 0,
            encoded: Vec::new(),
            decoded: Vec::new(),
            pos: 0,
            metrics: None,
        }
    }

    /// Counts the bytes it receives and decodes in `metrics`.
    pub fn counted(mut self, metrics: Option<Arc<Framed>>) -> Decoder<R> {
        self.metrics = metrics;
        self
    }

    /// `wire` bytes of the stream were read, `nar` NAR bytes decoded.
    fn count(&self, wire: usize, nar: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.received(wire, nar);
        }
    }

    /// Reads the next block's header, and a zstd block whole; false at the
    /// end of the stream.
    fn next_block(&mut self) -> io::Result<bool> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match self.source.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(cut("a block header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let nar = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let encoded = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        if nar == 0 || nar > MAX_BLOCK {
            return Err(bad("a compressed NAR block of 0 or too many bytes"));
        }
        match header[0] {
            RAW if encoded == nar => {
                self.raw_left = nar;
                self.count(HEADER, 0);
                Ok(true)
            }
            ZSTD if encoded > 0 && encoded <= zstd::zstd_safe::compress_bound(MAX_BLOCK) => {
                self.encoded.resize(encoded, 0);
                self.source
                    .read_exact(&mut self.encoded)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => cut("a zstd block"),
                        _ => e,
                    })?;
                let decompressor = match &mut self.decompressor {
                    Some(d) => d,
                    None => self.decompressor.insert(zstd::bulk::Decompressor::new()?),
                };
                self.decoded.resize(nar, 0);
                let n = decompressor
                    .decompress_to_buffer(&self.encoded, &mut self.decoded)
                    .map_err(|e| bad(&format!("a zstd block does not decompress: {e}")))?;
                if n != nar {
                    return Err(bad("a zstd block decompresses to another length"));
                }
                self.count(HEADER + encoded, nar);
                self.pos = 0;
                Ok(true)
            }
            _ => Err(bad("a compressed NAR block of unknown kind or length")),
        }
    }
}

fn cut(inside: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the compressed NAR stream ended inside {inside}"),
    )
}

impl<R: Read> Decoder<R> {
    /// Decoded bytes into `buf`, without the end-of-stream bookkeeping.
    fn read_blocks(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.raw_left == 0 && self.pos == self.decoded.len() && !self.next_block()? {
            return Ok(0);
        }
        if self.raw_left > 0 {
            let want = buf.len().min(self.raw_left);
            let n = self.source.read(&mut buf[..want])?;
            if n == 0 {
                return Err(cut("a raw block"));
            }
            self.raw_left -= n;
            self.count(n, n);
            return Ok(n);
        }
        let n = buf.len().min(self.decoded.len() - self.pos);
        buf[..n].copy_from_slice(&self.decoded[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.left == 0 {
            return Ok(0);
        }
        let n = self.read_blocks(buf)?;
        if n == 0 {
            return Ok(0);
        }
        self.left = self.left.saturating_sub(n as u64);
        if self.left == 0 {
            let ended = self.raw_left == 0
                && self.pos == self.decoded.len()
                && self.source.read(&mut [0u8; 1])? == 0;
            if !ended {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the compressed NAR stream goes on past the NAR's end",
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// Bytes that compress about as well as programs do (~3x).
    fn compressible(len: usize) -> Vec<u8> {
        let words: [&[u8]; 6] = [
            b"\x00\x00\x00\x00",
            b"libc.so.6",
            b"\x48\x89\xe5",
            b"GLIBC_2.2.5",
            b"\xff\xff",
            b"main",
        ];
        let mut state = 12345u32;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state = state.wrapping_mul(1103515245).wrapping_add(12345);
            out.extend_from_slice(words[(state >> 16) as usize % words.len()]);
            out.push((state >> 8) as u8);
        }
        out.truncate(len);
        out
    }

    fn random(len: usize) -> Vec<u8> {
        let mut state = 0x9e3779b97f4a7c15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// Encodes `data` in `mode`, returns the stream and the kinds of its blocks.
    fn encode(data: &[u8], mode: Mode) -> (Vec<u8>, Vec<u8>) {
        let mut stream = Vec::new();
        Encoder::new(data, mode).read_to_end(&mut stream).unwrap();
        let mut kinds = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            kinds.push(stream[at]);
            let enc = u32::from_be_bytes(stream[at + 5..at + 9].try_into().unwrap()) as usize;
            at += HEADER + enc;
        }
        (stream, kinds)
    }

    /// Decodes a stream that should hold `len` NAR bytes.
    fn decode_len(stream: &[u8], len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Decoder::new(stream, len as u64).read_to_end(&mut out)?;
        Ok(out)
    }

    fn decode(stream: &[u8]) -> io::Result<Vec<u8>> {
        decode_len(stream, usize::MAX)
    }

    #[test]
    fn streams_round_trip_in_every_mode() {
        for data in [
            compressible(3 * BLOCK + 17),
            random(BLOCK + 1),
            vec![7u8; 10],
        ] {
            for mode in [Mode::Auto, Mode::Always, Mode::Never] {
                let (stream, _) = encode(&data, mode);
                assert_eq!(decode(&stream).unwrap(), data, "{mode:?}");
            }
        }
        let (stream, kinds) = encode(&compressible(3 * BLOCK), Mode::Always);
        assert_eq!(kinds, [ZSTD; 3]);
        assert!(stream.len() < 3 * BLOCK / 2);
        assert_eq!(encode(&compressible(BLOCK), Mode::Never).1, [RAW]);
    }

    #[test]
    fn incompressible_data_is_sent_raw_after_the_first_blocks() {
        let (_, kinds) = encode(&random(64 * BLOCK), Mode::Auto);
        // zstd stores random data raw anyway: the encoder must stop trying.
        let mut policy = Policy::new(Mode::Auto);
        let mut tried = 0;
        for _ in 0..64 {
            if policy.compress_next() {
                tried += 1;
                policy.compressed(BLOCK, BLOCK + 20, Duration::from_micros(300));
            }
            policy.written(BLOCK, Duration::from_millis(20), true);
        }
        assert!(tried <= GIVE_UP_AFTER, "tried {tried} times");
        assert!(kinds.iter().all(|&k| k == RAW));
    }

    #[test]
    fn compression_follows_the_link() {
        let block = Duration::from_millis(1); // 256 KiB in 1 ms: 260 MB/s
        let mut slow = Policy::new(Mode::Auto);
        let mut fast = Policy::new(Mode::Auto);
        let (mut slow_z, mut fast_z) = (0, 0);
        for _ in 0..30 {
            if slow.compress_next() {
                slow_z += 1;
                slow.compressed(BLOCK, BLOCK / 3, block);
                // 12 MB/s: a 100 Mbit/s link.
                slow.written(BLOCK / 3, Duration::from_millis(7), false);
            } else {
                slow.written(BLOCK, Duration::from_millis(21), true);
            }
            if fast.compress_next() {
                fast_z += 1;
                fast.compressed(BLOCK, BLOCK / 3, block);
                fast.written(BLOCK / 3, Duration::from_micros(50), false);
            } else {
                // 2.6 GB/s: a veth.
                fast.written(BLOCK, Duration::from_micros(100), true);
            }
        }
        assert!(slow_z >= 28, "{slow_z}");
        assert!(fast_z <= 2, "{fast_z}");
    }

    /// A fast link to a receiver short of CPU: raw blocks drain at 600
    /// MB/s, but a compressed one waits while the receiver decompresses, as
    /// long as a slow link would make it. That must not look like a slow
    /// link, or compression would feed itself.
    #[test]
    fn a_receiver_short_of_cpu_is_no_slow_link() {
        let mut policy = Policy::new(Mode::Auto);
        let mut compressed = 0;
        for i in 0..64 {
            let zstd = policy.compress_next();
            if zstd {
                policy.compressed(BLOCK, BLOCK / 3, Duration::from_millis(1));
                policy.written(BLOCK / 3, Duration::from_millis(3), false);
            } else {
                policy.written(BLOCK, Duration::from_micros(440), true);
            }
            compressed += u32::from(zstd && i > 0);
        }
        assert!(compressed <= 2, "{compressed}");
    }

    /// A veth drains 800 MB/s, but a writer sees that as most blocks
    /// swallowed by the socket buffer at once and every eighth held for
    /// the ~2 ms the buffer takes to half drain. A block's wait alone
    /// would make that a slow link now and then, and each flip cost a run
    /// of compressed blocks (120 of 1,025 in a benchmark run); the waits
    /// over the bytes of the last several blocks do not. Far from paying,
    /// zstd is only tried every `PROBE_RARELY` blocks.
    #[test]
    fn a_socket_buffer_that_fills_now_and_then_is_a_fast_link() {
        let mut policy = Policy::new(Mode::Auto);
        let mut compressed = 0;
        for i in 0..1024u32 {
            if policy.compress_next() {
                compressed += 1;
                // zstd -1 on programs: 2.7x at 400 MB/s.
                policy.compressed(BLOCK, BLOCK * 10 / 27, Duration::from_micros(655));
                policy.written(BLOCK * 10 / 27, Duration::from_micros(30), false);
            } else {
                let waited = match i % 8 {
                    7 => Duration::from_micros(2200),
                    _ => Duration::from_micros(40),
                };
                policy.written(BLOCK, waited, true);
            }
        }
        assert!(compressed <= 1 + 1024 / PROBE_RARELY, "{compressed}");
    }

    #[test]
    fn cut_or_malformed_streams_are_errors() {
        let (stream, _) = encode(&compressible(2 * BLOCK), Mode::Always);
        for cut_at in [1, HEADER, HEADER + 10, stream.len() - 1] {
            assert!(decode(&stream[..cut_at]).is_err(), "cut at {cut_at}");
        }
        let mut bad = stream.clone();
        bad[0] = 9;
        assert!(decode(&bad).is_err());
        let mut bad = stream.clone();
        bad[HEADER + 4] ^= 0xff;
        assert!(decode(&bad).is_err());
        let mut bad = stream;
        bad[1..5].copy_from_slice(&(MAX_BLOCK as u32 + 1).to_be_bytes());
        assert!(decode(&bad).is_err());
        assert!(decode(&[0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn the_stream_ends_with_its_last_nar_byte() {
        let data = compressible(2 * BLOCK);
        let (stream, _) = encode(&data, Mode::Always);
        assert_eq!(decode_len(&stream, data.len()).unwrap(), data);
        // The end is read with the last byte: nothing is left unread.
        let mut source = &stream[..];
        let mut decoder = Decoder::new(&mut source, data.len() as u64);
        let mut out = vec![0u8; data.len()];
        decoder.read_exact(&mut out).unwrap();
        assert!(source.is_empty());
        // More blocks than the NAR's bytes: an error, not extra bytes.
        assert!(decode_len(&stream, data.len() - BLOCK).is_err());
    }

    #[test]
    fn encoder_and_decoder_count_what_they_send_and_receive() {
        let data = [compressible(2 * BLOCK), random(BLOCK)].concat();
        let (sent, received) = (Metrics::default(), Metrics::default());
        let mut stream = Vec::new();
        Encoder::new(&data[..], Mode::Always)
            .counted(Some(sent.framed.clone()))
            .read_to_end(&mut stream)
            .unwrap();
        let mut out = Vec::new();
        Decoder::new(&stream[..], data.len() as u64)
            .counted(Some(received.framed.clone()))
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data);
        let (sent, received) = (
            sent.render(Default::default(), &[]),
            received.render(Default::default(), &[]),
        );
        let value = |text: &str, name: &str| -> u64 {
            (text.lines())
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        // Two compressible blocks went zstd, the random one raw.
        let zstd_out = value(&sent, "peerix_compress_zstd_out_bytes_total");
        assert_eq!(
            [
                value(&sent, "peerix_compress_sent_nar_bytes_total"),
                value(&sent, "peerix_compress_sent_blocks_total{kind=\"zstd\"}"),
                value(&sent, "peerix_compress_sent_blocks_total{kind=\"raw\"}"),
                value(&sent, "peerix_compress_zstd_in_bytes_total"),
            ],
            [data.len() as u64, 2, 1, 2 * BLOCK as u64]
        );
        assert!(zstd_out > 0 && zstd_out < BLOCK as u64, "{zstd_out}");
        assert_eq!(
            [
                value(&received, "peerix_compress_received_bytes_total"),
                value(&received, "peerix_compress_decoded_bytes_total"),
            ],
            [stream.len() as u64, data.len() as u64]
        );
    }

    #[test]
    fn accept_encoding_is_parsed() {
        assert!(accepts(ENCODING));
        assert!(accepts(&format!("gzip, {ENCODING};q=1")));
        assert!(!accepts("gzip, deflate, br, zstd"));
        assert!(!accepts(""));
    }
}
