//! Bounded decompression of record-batch payloads. The broker stores
//! compressed batches as received; it only inflates them for timestamp
//! lookups and plugins, and then never past a limit: a few kilobytes of
//! zstd can claim gigabytes, and inflating first and checking after would
//! let one produce request exhaust the broker's memory.

use std::io::Read;

/// Kafka's snappy framing (snappy-java's "xerial" stream header).
const XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

fn read_bounded(mut r: impl Read, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("corrupt compressed records: {e}"))?;
    if out.len() > limit {
        return Err(format!("records decompress to more than {limit} bytes"));
    }
    Ok(out)
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
    let n = snap::raw::decompress_len(block).map_err(|e| format!("corrupt snappy block: {e}"))?;
    if out.len().saturating_add(n) > limit {
        return Err(format!("records decompress to more than {limit} bytes"));
    }
    let start = out.len();
    out.resize(start + n, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| format!("corrupt snappy block: {e}"))?;
    Ok(())
}

/// Inflates `data` compressed with Kafka codec `codec` (0 none, 1 gzip,
/// 2 snappy, 3 lz4, 4 zstd), refusing output larger than `limit`.
pub fn decompress(codec: i16, data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    match codec {
        0 => {
            if data.len() > limit {
                return Err(format!("records exceed {limit} bytes"));
            }
            Ok(data.to_vec())
        }
        1 => read_bounded(flate2::read::GzDecoder::new(data), limit),
        2 => {
            let mut out = Vec::new();
            match data.strip_prefix(XERIAL_MAGIC.as_slice()) {
                None => snappy_block(data, &mut out, limit)?,
                Some(mut rest) => {
                    while !rest.is_empty() {
                        if rest.len() < 4 {
                            return Err("truncated snappy frame length".into());
                        }
                        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                        let block = rest
                            .get(4..4 + n)
                            .ok_or_else(|| "truncated snappy frame".to_string())?;
                        snappy_block(block, &mut out, limit)?;
                        rest = &rest[4 + n..];
                    }
                }
            }
            Ok(out)
        }
        3 => read_bounded(
            lz4::Decoder::new(data).map_err(|e| format!("corrupt lz4 frame: {e}"))?,
            limit,
        ),
        4 => read_bounded(
            zstd::stream::read::Decoder::new(data)
                .map_err(|e| format!("corrupt zstd frame: {e}"))?,
            limit,
        ),
        other => Err(format!("unknown compression codec {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::encoded_batch;
    use crate::batch::{HEADER_LEN, parse_header};
    use kafka_protocol::records::Compression;

    #[test]
    fn every_codec_inflates_client_batches() {
        let plain = encoded_batch(20, Compression::None, 0);
        let raw = &plain[HEADER_LEN..];
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encoded_batch(20, c, 0);
            let h = parse_header(&b).expect("header");
            let out = decompress(h.compression(), &b[HEADER_LEN..], 1 << 20).expect("inflate");
            assert_eq!(out, raw, "{c:?}");
        }
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let bomb = zstd::bulk::compress(&zeros, 19).expect("compress");
        assert!(bomb.len() < 4096, "a small payload claiming 8 MiB");
        let err = decompress(4, &bomb, 1 << 20).expect_err("refused");
        assert!(err.contains("more than"), "{err}");
        assert_eq!(
            decompress(4, &bomb, 16 << 20).expect("within limit").len(),
            8 << 20
        );
    }
}
