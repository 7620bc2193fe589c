//! A stripe: the part of a NAR one peer sends when several send it at
//! once (see `substitute/striped_nar.rs`). The NAR is cut into blocks of
//! `block` bytes dealt round-robin to `every` peers; the stripe `index`
//! holds the blocks `j` (counted from the NAR's start) with
//! `j % every == index`.
//!
//! A stripe is asked for with `X-Peerix-Stripe: BLOCK/EVERY/INDEX` beside
//! `Accept-Encoding: x-peerix-zblocks` (and `Range: bytes=N-`): the sender
//! serializes the NAR as always, from N on, and sends only the bytes of
//! its stripe ([`Filter`]), as the framed stream of `framed.rs` (raw
//! blocks when compression is off), echoing the header. Only nodes of ours
//! send stripes; each serializes the whole NAR and drops the other
//! stripes' bytes, so three senders spend about three times one's CPU on
//! Nix's serializer.

use std::io::{self, Read};

/// The request and reply header naming a stripe.
pub const HEADER: &str = "X-Peerix-Stripe";
/// The blocks `j` of `block` bytes with `j % every == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stripe {
    pub block: u64,
    pub every: u64,
    pub index: u64,
}

impl Stripe {
    /// Parses `BLOCK/EVERY/INDEX`; `None` for anything else, or sizes out
    /// of bounds (64 KiB to 64 MiB blocks, 2 to 16 lanes).
    pub fn parse(s: &str) -> Option<Stripe> {
        let mut parts = s.trim().split('/').map(|p| p.parse::<u64>().ok());
        let stripe = Stripe {
            block: parts.next()??,
            every: parts.next()??,
            index: parts.next()??,
        };
        let sane = parts.next().is_none()
            && (64 << 10..=64 << 20).contains(&stripe.block)
            && (2..=16).contains(&stripe.every)
            && stripe.index < stripe.every;
        sane.then_some(stripe)
    }

    pub fn render(&self) -> String {
        format!("{}/{}/{}", self.block, self.every, self.index)
    }

    /// The stripe's bytes in `[from, to)` of the NAR.
    pub fn bytes_in(&self, from: u64, to: u64) -> u64 {
        self.bytes_before(to) - self.bytes_before(from.min(to))
    }

    fn bytes_before(&self, x: u64) -> u64 {
        let round = self.block * self.every;
        let start = self.index * self.block;
        (x / round) * self.block + (x % round).saturating_sub(start).min(self.block)
    }

    /// Where the stripe's next byte at or after `pos` is.
    fn next_at(&self, pos: u64) -> u64 {
        let round = self.block * self.every;
        let start = (pos / round) * round + self.index * self.block;
        if pos < start {
            start
        } else if pos < start + self.block {
            pos
        } else {
            start + round
        }
    }
}

/// The sender's side: the bytes of `stripe` from a NAR read from byte
/// `pos` on, the others read and dropped.
pub struct Filter<R> {
    inner: R,
    stripe: Stripe,
    pos: u64,
}

impl<R: Read> Filter<R> {
    pub fn new(inner: R, stripe: Stripe, pos: u64) -> Filter<R> {
        Filter { inner, stripe, pos }
    }
}

impl<R: Read> Read for Filter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let next = self.stripe.next_at(self.pos);
            if next > self.pos {
                let skip = next - self.pos;
                let skipped = io::copy(&mut (&mut self.inner).take(skip), &mut io::sink())?;
                self.pos += skipped;
                if skipped < skip {
                    return Ok(0);
                }
                continue;
            }
            let block_end = (self.pos / self.stripe.block + 1) * self.stripe.block;
            let want = buf
                .len()
                .min(usize::try_from(block_end - self.pos).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..want])?;
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_parse_and_count_their_bytes() {
        let s = Stripe::parse("65536/3/1").unwrap();
        assert_eq!(s.render(), "65536/3/1");
        for bad in [
            "",
            "65536/3",
            "65536/3/3",
            "1/3/0",
            "65536/1/0",
            "65536/3/1/0",
            "x/3/1",
        ] {
            assert_eq!(Stripe::parse(bad), None, "{bad}");
        }
        let s = Stripe {
            block: 10,
            every: 3,
            index: 1,
        };
        // Blocks 1, 4, 7…: bytes 10..20, 40..50, 70..80.
        assert_eq!(s.bytes_in(0, 100), 30);
        assert_eq!(s.bytes_in(15, 45), 10);
        assert_eq!(s.bytes_in(0, 95), 30);
        assert_eq!(s.next_at(0), 10);
        assert_eq!(s.next_at(15), 15);
        assert_eq!(s.next_at(20), 40);
    }

    #[test]
    fn filtered_lanes_interleave_to_the_nar() {
        let nar: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for from in [0, 5, 333] {
            let lanes: Vec<Vec<u8>> = (0..3)
                .map(|index| {
                    let stripe = Stripe {
                        block: 64,
                        every: 3,
                        index,
                    };
                    let mut out = Vec::new();
                    (Filter::new(&nar[from..], stripe, from as u64))
                        .read_to_end(&mut out)
                        .unwrap();
                    assert_eq!(out.len() as u64, stripe.bytes_in(from as u64, 1000));
                    out
                })
                .collect();
            let mut at = [0usize; 3];
            let mut joined = Vec::new();
            let mut pos = from;
            while pos < 1000 {
                let lane = (pos / 64) % 3;
                let n = (64 - pos % 64).min(1000 - pos);
                joined.extend_from_slice(&lanes[lane][at[lane]..at[lane] + n]);
                at[lane] += n;
                pos += n;
            }
            assert_eq!(joined, nar[from..]);
        }
    }
}
