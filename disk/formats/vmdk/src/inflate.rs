//! Decompression of one streamOptimized grain.
//!
//! A compressed grain is one zlib stream (RFC 1950: deflate with a zlib header and Adler-32
//! trailer, as written by VMware and by QEMU's `compress()`). It holds at most one grain of
//! data; the last grain of a disk whose size is not a grain multiple may hold less. Like
//! QEMU's `uncompress()`, we require the stream to end properly: a stream that runs out of
//! input is truncated, and one that would produce more than a grain is corrupt (and is stopped
//! after one extra byte, so a hostile "zip bomb" grain costs nothing).

use flate2::{Decompress, FlushDecompress, Status};

/// Decompress the zlib stream at the start of `input` into `out` (one grain); trailing bytes
/// after the stream (sector padding, the next marker) are ignored. Returns how many bytes the
/// stream holds, at most `out.len()`. Errors are a human-readable reason.
pub(crate) fn inflate_grain(input: &[u8], out: &mut [u8]) -> Result<usize, String> {
    let mut d = Decompress::new(true);
    loop {
        let (in_pos, out_pos) = (d.total_in() as usize, d.total_out() as usize);
        let rest_in = &input[in_pos.min(input.len())..];
        if out_pos >= out.len() {
            // The grain is full: the stream must end here, without another byte of output.
            let mut extra = [0u8; 1];
            let status = d
                .decompress(rest_in, &mut extra, FlushDecompress::None)
                .map_err(|e| format!("zlib data is invalid: {e}"))?;
            if d.total_out() as usize > out_pos {
                return Err(format!("zlib data decompresses to more than the {}-byte grain", out.len()));
            }
            return match status {
                Status::StreamEnd => Ok(out_pos),
                _ => Err(format!("zlib stream does not end after the {}-byte grain (truncated?)", out.len())),
            };
        }
        let status = d
            .decompress(rest_in, &mut out[out_pos..], FlushDecompress::None)
            .map_err(|e| format!("zlib data is invalid: {e}"))?;
        if status == Status::StreamEnd {
            return Ok(d.total_out() as usize);
        }
        if d.total_in() as usize == in_pos && d.total_out() as usize == out_pos {
            return Err(format!(
                "zlib data ends after {} bytes of input and {} bytes of output, before the end of its stream (truncated)",
                in_pos, out_pos
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn full_short_and_oversized_grains() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut comp = zlib(&data);
        comp.extend_from_slice(&[0xAA; 300]); // sector padding
        let mut out = vec![0u8; 65536];
        assert_eq!(inflate_grain(&comp, &mut out).unwrap(), 65536);
        assert_eq!(out, data);
        // A short stream (last grain of an odd-sized disk) is fine and reports its length.
        let short = zlib(&data[..1000]);
        assert_eq!(inflate_grain(&short, &mut out).unwrap(), 1000);
        assert_eq!(out[..1000], data[..1000]);
        // More than a grain is corruption.
        let mut small = vec![0u8; 4096];
        let e = inflate_grain(&comp, &mut small).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        // Truncated input, garbage, nothing.
        assert!(inflate_grain(&comp[..comp.len() / 2], &mut out).is_err());
        assert!(inflate_grain(&comp[..20], &mut out).is_err());
        assert!(inflate_grain(&[0x78, 0x9c, 0xff, 0xff, 0xff], &mut out).is_err());
        assert!(inflate_grain(&[], &mut out).is_err());
        // A stream that fills the grain exactly but lacks its end is truncated.
        let cut = &comp[..zlib(&data).len() - 4]; // no Adler-32 trailer
        assert!(inflate_grain(cut, &mut out).is_err());
    }

    #[test]
    fn zip_bomb_stops_after_one_grain() {
        let zeros = vec![0u8; 64 << 20];
        let comp = zlib(&zeros);
        let mut out = vec![0u8; 65536];
        let t = std::time::Instant::now();
        assert!(inflate_grain(&comp, &mut out).is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
