//! Sluice's wire layer, free of I/O (no sockets, no files, no async): bytes
//! go in, decoded requests, record batches and records (or precise reasons
//! to refuse them) come out. The `kafka-protocol` crate does the message
//! codec; this crate adds what a broker needs around it:
//!
//! - framing and request decoding (`decode_request`), response encoding
//!   with the header version each API and version needs, and the versions
//!   this broker speaks (`versions`);
//! - record batches as stored (`batch`: header parsing, CRC-32C, structure
//!   checks of what a producer sent, `validate_produce`), their records
//!   (`records`: decoding and encoding for plugins) and compression.
//!
//! Fuzzed: `broker/fuzz` feeds it arbitrary frames and batches.

pub mod batch;
pub mod compression;
mod fetch_encode;
pub mod records;
pub mod versions;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Encodable, decode_request_header_from_buffer};

/// Private inter-broker API: sub-batches a plugin routed to a partition
/// another broker leads. The body is a Produce request of
/// `FORWARDED_PRODUCE_VERSION`, answered with a Produce response; never
/// advertised in ApiVersions (far outside Kafka's key range).
pub const FORWARDED_PRODUCE_API_KEY: i16 = 32_102;
pub const FORWARDED_PRODUCE_VERSION: i16 = 9;

/// Is this frame (without its length prefix) a forwarded produce?
pub fn is_forwarded_produce(frame: &[u8]) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == FORWARDED_PRODUCE_API_KEY
}

/// Decodes a forwarded produce frame: its correlation id and body.
pub fn decode_forwarded_produce(
    mut frame: Bytes,
) -> Result<(i32, kafka_protocol::messages::ProduceRequest), FrameError> {
    use kafka_protocol::protocol::{Decodable, HeaderVersion};
    type Req = kafka_protocol::messages::ProduceRequest;
    let version = frame.get(2..4).map(|v| i16::from_be_bytes([v[0], v[1]]));
    if version != Some(FORWARDED_PRODUCE_VERSION) {
        return Err(FrameError::Close {
            reason: "unsupported_version",
            detail: format!(
                "forwarded produce version {version:?} is not {FORWARDED_PRODUCE_VERSION}"
            ),
        });
    }
    let malformed = |e: anyhow::Error| FrameError::Close {
        reason: "malformed_request",
        detail: format!("forwarded produce: {e}"),
    };
    let header = RequestHeader::decode(&mut frame, Req::header_version(FORWARDED_PRODUCE_VERSION))
        .map_err(malformed)?;
    let body = Req::decode(&mut frame, FORWARDED_PRODUCE_VERSION).map_err(malformed)?;
    Ok((header.correlation_id, body))
}

/// A forwarded produce's response frame, length prefix included.
pub fn encode_forwarded_produce_response(
    correlation_id: i32,
    body: &kafka_protocol::messages::ProduceResponse,
) -> anyhow::Result<Bytes> {
    use kafka_protocol::protocol::HeaderVersion;
    type Resp = kafka_protocol::messages::ProduceResponse;
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut buf, Resp::header_version(FORWARDED_PRODUCE_VERSION))?;
    body.encode(&mut buf, FORWARDED_PRODUCE_VERSION)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// A request ready for a handler.
#[derive(Debug)]
pub struct DecodedRequest {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// What to do with a frame that cannot be handled normally.
#[derive(Debug)]
pub enum FrameError {
    /// Answer with this (already encoded) response, then keep going.
    Respond(Bytes),
    /// Close the connection; the reason is logged and counted.
    Close {
        reason: &'static str,
        detail: String,
    },
}

/// Decodes one frame (without its length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<DecodedRequest, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::Close {
            reason: "truncated_header",
            detail: format!(
                "frame of {} bytes is shorter than a request header",
                frame.len()
            ),
        });
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api_key) = ApiKey::try_from(key) else {
        return Err(FrameError::Close {
            reason: "unknown_api_key",
            detail: format!("unknown API key {key} (correlation id {correlation_id})"),
        });
    };
    let Some(range) = versions::supported(api_key) else {
        return Err(FrameError::Close {
            reason: "unsupported_api",
            detail: format!(
                "API {api_key:?} is not supported by this broker and was not advertised in ApiVersions"
            ),
        });
    };
    if version < range.0 || version > range.1 {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 so the client can learn our range and retry.
            return Err(FrameError::Respond(unsupported_api_versions(
                correlation_id,
            )));
        }
        return Err(FrameError::Close {
            reason: "unsupported_version",
            detail: format!(
                "{api_key:?} v{version} is not supported (this broker speaks v{}..=v{})",
                range.0, range.1
            ),
        });
    }
    let header = decode_request_header_from_buffer(&mut frame).map_err(|e| FrameError::Close {
        reason: "malformed_header",
        detail: format!("{api_key:?} v{version}: {e}"),
    })?;
    let body =
        RequestKind::decode(api_key, &mut frame, version).map_err(|e| FrameError::Close {
            reason: "malformed_request",
            detail: format!("{api_key:?} v{version} (correlation id {correlation_id}): {e}"),
        })?;
    Ok(DecodedRequest {
        api_key,
        version,
        header,
        body,
    })
}

/// Encodes a response frame including its 4-byte length prefix.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(capacity_hint(body));
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut buf, api_key.response_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The response as a list of buffers to write in order: fetch responses
/// carrying big record sets keep those records as their own buffers (see
/// `fetch_encode`); everything else is one buffer.
pub fn encode_response_chunks(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<Vec<Bytes>> {
    if let ResponseKind::Fetch(f) = body
        && let Some(chunks) = fetch_encode::encode_chunks(correlation_id, version, f)
    {
        return Ok(chunks);
    }
    encode_response(api_key, version, correlation_id, body).map(|b| vec![b])
}

/// Room for the whole encoded response, so a fetch carrying megabytes of
/// records is copied into its buffer once instead of through a chain of
/// doubling reallocations.
fn capacity_hint(body: &ResponseKind) -> usize {
    const FRAMING: usize = 256;
    match body {
        ResponseKind::Fetch(f) => {
            let records: usize = f
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.records.as_ref().map_or(0, |r| r.len()) + 64)
                .sum();
            FRAMING + records
        }
        _ => FRAMING,
    }
}

/// ApiVersions v0 response with UNSUPPORTED_VERSION and our ranges.
fn unsupported_api_versions(correlation_id: i32) -> Bytes {
    let mut body = versions::api_versions_response();
    body.error_code = kafka_protocol::ResponseError::UnsupportedVersion.code();
    let encoded = encode_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(body),
    );
    // ApiVersions v0 encoding of our own response cannot fail; if it ever
    // did, an empty frame still tells the client to give up on us.
    encoded.unwrap_or_else(|_| Bytes::from_static(&[0, 0, 0, 0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, MetadataRequest};
    use kafka_protocol::protocol::{Decodable, StrBytes, encode_request_header_into_buffer};

    fn frame(key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = version;
        h.correlation_id = 7;
        h.client_id = Some(StrBytes::from_static_str("test"));
        let mut buf = BytesMut::new();
        encode_request_header_into_buffer(&mut buf, &h).expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    #[test]
    fn decodes_a_flexible_request() {
        let req = decode_request(frame(ApiKey::Metadata, 12, &MetadataRequest::default()))
            .expect("decodes");
        assert_eq!(req.api_key, ApiKey::Metadata);
        assert_eq!(req.header.correlation_id, 7);
    }

    #[test]
    fn unknown_api_versions_version_gets_v0_error_with_ranges() {
        let f = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let mut patched = BytesMut::from(&f[..]);
        patched[2..4].copy_from_slice(&99i16.to_be_bytes());
        let Err(FrameError::Respond(resp)) = decode_request(patched.freeze()) else {
            panic!("expected a v0 error response");
        };
        let mut body = resp.slice(4 + 4..);
        let decoded = ApiVersionsResponse::decode(&mut body, 0).expect("v0 body");
        assert_eq!(decoded.error_code, 35);
        assert!(
            decoded
                .api_keys
                .iter()
                .any(|k| k.api_key == ApiKey::Produce as i16)
        );
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bytes in [
            vec![],
            vec![0xff; 3],
            vec![0x27, 0x0f, 0, 0, 0, 0, 0, 1],
            vec![0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0xff],
            vec![0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0x7f, 0xff, 0xff, 0xff],
        ] {
            assert!(decode_request(Bytes::from(bytes)).is_err());
        }
    }
}

#[cfg(test)]
mod hostile_counts {
    use super::*;

    /// An array count of 2^31-1 in a tiny frame must fail to decode, not
    /// make the codec reserve gigabytes up front (an allocation failure
    /// aborts the process).
    #[test]
    fn huge_array_count_in_small_frame_is_an_error() {
        // Metadata v1 header: key 3, version 1, correlation 1, client id null.
        let mut f = vec![0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff];
        f.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_request(Bytes::from(f)).is_err());
        // Flexible (v12) version: compact array with a huge unsigned varint.
        let mut f = vec![0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0];
        f.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode_request(Bytes::from(f)).is_err());
    }
}

/// Deterministic garbage for the decoder, run in every CI build (the
/// cargo-fuzz targets in `broker/fuzz` explore far more, but need nightly).
#[cfg(test)]
mod garbage {
    use super::*;

    /// xorshift64*: reproducible pseudo-random bytes with no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_frames_never_panic() {
        let mut rng = Rng(0x5eed);
        for i in 0..20_000u32 {
            let len = (rng.next() % 256) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the frames get a real API key and version so the body
            // decoders, not just the header check, see the garbage.
            if f.len() >= 4 && i % 2 == 0 {
                let keys = [0i16, 1, 2, 3, 18, 19, 20, 32, 33, 37, 44, 60];
                let key = keys[(rng.next() % keys.len() as u64) as usize];
                let (min, max) =
                    versions::supported(ApiKey::try_from(key).expect("known")).expect("supported");
                let v = min + (rng.next() % (max - min + 1) as u64) as i16;
                f[..2].copy_from_slice(&key.to_be_bytes());
                f[2..4].copy_from_slice(&v.to_be_bytes());
            }
            let _ = decode_request(Bytes::from(f));
        }
    }
}
