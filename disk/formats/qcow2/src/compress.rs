//! Decompression of one compressed cluster.
//!
//! The host bytes of a compressed cluster are rounded up to 512-byte sectors, so the input
//! usually has trailing bytes that belong to the next cluster or are padding. Like QEMU, we
//! decompress until the output cluster is full and ignore what follows; a stream that ends
//! (or runs out of input) before filling the cluster is corrupt.

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use crate::header::Compression;

/// Largest zstd window we allow a frame to declare (2^24 = 16 MiB). A cluster is at most
/// 2 MiB, so honest frames need far less; this stops a hostile frame header from making the
/// decoder allocate zstd's default maximum of 128 MiB per thread.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Reusable decompression state for one batch of reads (so a batch of zstd clusters creates
/// one decoder context, not one per cluster).
#[derive(Default)]
pub(crate) struct Decompressor {
    zstd: Option<Decoder<'static>>,
}

impl Decompressor {
    /// Decompress `input` until `output` is full. Errors are a human-readable reason.
    pub(crate) fn decompress(&mut self, kind: Compression, input: &[u8], output: &mut [u8]) -> Result<(), String> {
        match kind {
            Compression::Deflate => inflate(input, output),
            Compression::Zstd => self.unzstd(input, output),
        }
    }

    fn unzstd(&mut self, input: &[u8], output: &mut [u8]) -> Result<(), String> {
        let dec = match &mut self.zstd {
            Some(d) => {
                d.reinit().map_err(|e| format!("zstd reset failed: {e}"))?;
                d
            }
            None => {
                let mut d = Decoder::new().map_err(|e| format!("zstd decoder setup failed: {e}"))?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(|e| format!("zstd decoder setup failed: {e}"))?;
                self.zstd.insert(d)
            }
        };
        let want = output.len();
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around(output);
        while outb.pos() < want {
            let (in_before, out_before) = (inb.pos(), outb.pos());
            dec.run(&mut inb, &mut outb).map_err(|e| format!("zstd data is invalid: {e}"))?;
            if inb.pos() == in_before && outb.pos() == out_before {
                return Err(format!("zstd data ends after {} of {want} bytes", outb.pos()));
            }
        }
        Ok(())
    }
}

fn inflate(input: &[u8], output: &mut [u8]) -> Result<(), String> {
    // `false`: raw deflate, no zlib header (QEMU uses a -12 window, which raw inflate accepts).
    let mut d = Decompress::new(false);
    loop {
        let (in_pos, out_pos) = (d.total_in() as usize, d.total_out() as usize);
        if out_pos >= output.len() {
            return Ok(());
        }
        let status = d
            .decompress(&input[in_pos.min(input.len())..], &mut output[out_pos..], FlushDecompress::Finish)
            .map_err(|e| format!("deflate data is invalid: {e}"))?;
        let done = d.total_out() as usize;
        if done >= output.len() {
            return Ok(());
        }
        if status == Status::StreamEnd || (d.total_in() as usize == in_pos && done == out_pos) {
            return Err(format!("deflate data ends after {done} of {} bytes", output.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn inflate_with_trailing_garbage_and_short_streams() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let mut comp = enc.finish().unwrap();
        comp.extend_from_slice(&[0xAA; 300]); // sector padding / next cluster
        let mut out = vec![0u8; 4096];
        Decompressor::default().decompress(Compression::Deflate, &comp, &mut out).unwrap();
        assert_eq!(out, data);
        // Asking for more than the stream holds is corruption, not a hang or panic.
        let mut big = vec![0u8; 8192];
        assert!(Decompressor::default().decompress(Compression::Deflate, &comp, &mut big).is_err());
        // Truncated input.
        assert!(Decompressor::default().decompress(Compression::Deflate, &comp[..20], &mut out).is_err());
        assert!(Decompressor::default().decompress(Compression::Deflate, &[], &mut out).is_err());
    }

    #[test]
    fn unzstd_reuses_decoder_and_rejects_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 253) as u8).collect();
        let mut comp = zstd::stream::encode_all(&data[..], 3).unwrap();
        comp.extend_from_slice(&[0u8; 100]);
        let mut d = Decompressor::default();
        for _ in 0..3 {
            let mut out = vec![0u8; 65536];
            d.decompress(Compression::Zstd, &comp, &mut out).unwrap();
            assert_eq!(out, data);
        }
        let mut out = vec![0u8; 65536];
        assert!(d.decompress(Compression::Zstd, &[1, 2, 3, 4, 5, 6, 7, 8], &mut out).is_err());
        assert!(d.decompress(Compression::Zstd, &comp[..50], &mut out).is_err());
        // And it still works after an error.
        d.decompress(Compression::Zstd, &comp, &mut out).unwrap();
        assert_eq!(out, data);
    }
}
