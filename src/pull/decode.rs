//! Decompressing an upstream's NARs, so that every Nix client gets a raw
//! NAR (`Compression: none`, resumable with `Range`) whatever the upstream
//! uses: Nix before 2.3.17 reads no zstd, and Nix 2.34 hands decoding to
//! libcurl, which reads no xz. The decoders are the C libraries Nix itself
//! links (liblzma through `xz2`, libzstd through `zstd`): they read
//! whatever Nix reads, at hundreds of MB/s, where a pure-Rust xz decoder
//! (`lzma-rs`) runs several times slower than a LAN link.

use std::io::{self, BufReader, Read};

/// The compressions an upstream NAR may have.
const KNOWN: [&str; 3] = ["none", "xz", "zstd"];

/// `Ok` for a compression the node decodes.
pub fn check(compression: &str) -> Result<(), String> {
    match KNOWN.contains(&compression) {
        true => Ok(()),
        false => Err(format!(
            "its NAR is compressed with {compression:?}; only none, xz and zstd are read"
        )),
    }
}

/// The raw NAR that `compressed` holds.
pub fn decoder(
    compression: &str,
    compressed: Box<dyn Read + Send>,
) -> io::Result<Box<dyn Read + Send>> {
    Ok(match compression {
        "none" => compressed,
        // Several concatenated streams are one NAR, as for `xz -d`.
        "xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(BufReader::new(
            compressed,
        ))),
        "zstd" => Box::new(zstd::stream::read::Decoder::new(compressed)?),
        other => return Err(io::Error::other(check(other).unwrap_err())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(compression: &str, packed: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        decoder(compression, Box::new(io::Cursor::new(packed)))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn every_known_compression_decodes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(roundtrip("none", data.clone()), data);
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&data[..], 6)
            .read_to_end(&mut xz)
            .unwrap();
        assert_eq!(roundtrip("xz", xz), data);
        let zst = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(roundtrip("zstd", zst), data);
        assert!(check("bzip2").is_err());
        assert!(decoder("br", Box::new(io::empty())).is_err());
    }

    #[test]
    fn a_corrupt_stream_is_an_error() {
        let mut out = Vec::new();
        let garbage = Box::new(io::Cursor::new(vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]));
        assert!(decoder("xz", garbage)
            .unwrap()
            .read_to_end(&mut out)
            .is_err());
    }
}
