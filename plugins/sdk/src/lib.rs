//! SDK for Sluice plugins. A plugin is a WebAssembly module the broker runs
//! on a topic's produce (and fetch) path; with this crate it is one
//! annotated function:
//!
//! ```ignore
//! use sluice_plugin::{partitioner, Record};
//!
//! #[partitioner]
//! fn route(record: &Record, partitions: u32) -> u32 {
//!     record.header("tenant").map_or(0, |t| t.len() as u32 % partitions)
//! }
//! ```
//!
//! The macros generate the exports of the core-module ABI described in
//! `plugins/ABI.md` (one call per record batch). This crate also holds the
//! batch wire format, which the broker's host side uses too, so both ends
//! share one encoder and decoder.

pub use sluice_plugin_macros::{filter, interceptor, partitioner};

use std::borrow::Cow;

/// ABI version implemented by this SDK and expected by the broker.
pub const ABI_VERSION: i32 = 1;

/// One record as a plugin sees it. Header order and duplicate keys are kept.
///
/// Fields borrow from the batch the host passed in, so reading a record
/// costs no copy; the setters (or assigning an owned `Cow`) replace a field
/// without touching the others. `Record` with an elided lifetime is what
/// plugin functions take: `fn route(record: &Record, partitions: u32) -> u32`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record<'a> {
    pub timestamp: i64,
    pub key: Option<Cow<'a, [u8]>>,
    pub value: Option<Cow<'a, [u8]>>,
    pub headers: Vec<Header<'a>>,
}

/// A header name and its (nullable) value.
pub type Header<'a> = (Cow<'a, str>, Option<Cow<'a, [u8]>>);

impl<'a> Record<'a> {
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Replaces every header named `name` with one of this value.
    pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.headers.retain(|(k, _)| k != name);
        self.headers
            .push((Cow::Owned(name.to_string()), Some(Cow::Owned(value.into()))));
    }

    pub fn set_key(&mut self, key: Option<Vec<u8>>) {
        self.key = key.map(Cow::Owned);
    }

    pub fn set_value(&mut self, value: Option<Vec<u8>>) {
        self.value = value.map(Cow::Owned);
    }

    pub fn value_str(&self) -> Option<&str> {
        self.value().and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A copy that no longer borrows from the batch.
    pub fn into_owned(self) -> Record<'static> {
        let owned = |b: Option<Cow<'a, [u8]>>| b.map(|b| Cow::Owned(b.into_owned()));
        Record {
            timestamp: self.timestamp,
            key: owned(self.key),
            value: owned(self.value),
            headers: self
                .headers
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), owned(v)))
                .collect(),
        }
    }
}

/// The configuration of the binding this call runs for: the value of the
/// topic config `sluice.plugin.config.<plugin name>` (empty if unset). It is
/// read from the host once per batch (on first use), so changing the topic
/// config changes the plugin's behaviour from the next batch on, without a
/// re-upload.
pub fn config() -> String {
    __rt::CONFIG.with(|c| c.borrow_mut().get_or_insert_with(host::config).clone())
}

/// Severity of a message sent to the broker's log with [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

/// Writes a message into the broker's log, tagged with the plugin's name
/// (the broker truncates it at 4 KiB).
pub fn log(level: Level, message: &str) {
    host::log(level as i32, message);
}

/// The ABI's host imports (module `sluice`). Calling an import is the one
/// unsafe operation a guest needs; both wrappers hand the host only a
/// pointer and length of a live Rust buffer. Outside wasm (the broker links
/// this crate for the wire format, and unit tests run natively) there is no
/// host: `config` is empty and `log` prints nothing.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod host {
    #[link(wasm_import_module = "sluice")]
    unsafe extern "C" {
        #[link_name = "log"]
        fn sluice_log(level: i32, ptr: *const u8, len: usize);
        #[link_name = "config"]
        fn sluice_config(ptr: *mut u8, cap: usize) -> i32;
    }

    pub fn log(level: i32, message: &str) {
        // SAFETY: the host reads `len` bytes at `ptr`, all inside `message`.
        unsafe { sluice_log(level, message.as_ptr(), message.len()) }
    }

    pub fn config() -> String {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: the host writes at most `cap` bytes at `ptr`, and
            // `buf` owns that many initialized bytes.
            let len = unsafe { sluice_config(buf.as_mut_ptr(), buf.len()) };
            let Ok(len) = usize::try_from(len) else {
                return String::new();
            };
            if len <= buf.len() {
                buf.truncate(len);
                return String::from_utf8_lossy(&buf).into_owned();
            }
            buf.resize(len, 0);
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    pub fn log(_level: i32, _message: &str) {}
    pub fn config() -> String {
        String::new()
    }
}

/// What an interceptor decided for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    Keep(Record<'a>),
    Reject(String),
}

/// The batch wire format between host and guest (little-endian):
///
/// ```text
/// batch  := u32 count, record*
/// record := i64 timestamp, bytes? key, bytes? value, u32 header_count, header*
/// header := u32 len, utf8 name, bytes? value
/// bytes? := i32 len (-1 = null), len bytes
/// ```
pub mod wire {
    use super::{Record, Verdict};
    use std::borrow::Cow;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WireError(pub String);

    impl std::fmt::Display for WireError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "malformed plugin data: {}", self.0)
        }
    }

    impl std::error::Error for WireError {}

    /// Where encoded bytes go: a growable `Vec`, or a fixed slice (the
    /// host writes a batch straight into the guest's memory).
    pub trait Sink {
        fn put(&mut self, bytes: &[u8]);
    }

    impl Sink for Vec<u8> {
        fn put(&mut self, bytes: &[u8]) {
            self.extend_from_slice(bytes);
        }
    }

    /// A fixed-size destination. Writing past its end is recorded, not a
    /// panic: `finish` reports whether the bytes fit exactly.
    pub struct SliceSink<'s> {
        buf: &'s mut [u8],
        pos: usize,
        overflow: bool,
    }

    impl<'s> SliceSink<'s> {
        pub fn new(buf: &'s mut [u8]) -> Self {
            SliceSink {
                buf,
                pos: 0,
                overflow: false,
            }
        }

        /// True if everything written fit and filled the slice exactly.
        pub fn finish(self) -> bool {
            !self.overflow && self.pos == self.buf.len()
        }
    }

    impl Sink for SliceSink<'_> {
        fn put(&mut self, bytes: &[u8]) {
            let end = self.pos.saturating_add(bytes.len());
            match self.buf.get_mut(self.pos..end) {
                Some(dst) => {
                    dst.copy_from_slice(bytes);
                    self.pos = end;
                }
                None => self.overflow = true,
            }
        }
    }

    fn put_bytes(out: &mut impl Sink, b: Option<&[u8]>) {
        match b {
            None => out.put(&(-1i32).to_le_bytes()),
            Some(b) => {
                out.put(&(b.len() as i32).to_le_bytes());
                out.put(b);
            }
        }
    }

    /// Bytes `encode_record` appends for `r`.
    pub fn record_len(r: &Record<'_>) -> usize {
        let bytes = |b: &Option<Cow<'_, [u8]>>| 4 + b.as_ref().map_or(0, |b| b.len());
        8 + bytes(&r.key)
            + bytes(&r.value)
            + 4
            + r.headers
                .iter()
                .map(|(k, v)| 4 + k.len() + bytes(v))
                .sum::<usize>()
    }

    pub fn encode_record(out: &mut impl Sink, r: &Record<'_>) {
        out.put(&r.timestamp.to_le_bytes());
        put_bytes(out, r.key.as_deref());
        put_bytes(out, r.value.as_deref());
        out.put(&(r.headers.len() as u32).to_le_bytes());
        for (k, v) in &r.headers {
            out.put(&(k.len() as u32).to_le_bytes());
            out.put(k.as_bytes());
            put_bytes(out, v.as_deref());
        }
    }

    /// Bytes `encode_batch` produces for `records`.
    pub fn batch_len<'a, 'r: 'a>(records: impl Iterator<Item = &'a Record<'r>>) -> usize {
        4 + records.map(record_len).sum::<usize>()
    }

    /// Encodes a batch into any sink (see `batch_len` for its size).
    pub fn encode_batch_to<'a, 'r: 'a>(
        out: &mut impl Sink,
        records: impl ExactSizeIterator<Item = &'a Record<'r>>,
    ) {
        out.put(&(records.len() as u32).to_le_bytes());
        for r in records {
            encode_record(out, r);
        }
    }

    pub fn encode_batch<'a, 'r: 'a>(
        records: impl ExactSizeIterator<Item = &'a Record<'r>> + Clone,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch_len(records.clone()));
        encode_batch_to(&mut out, records);
        out
    }

    /// A cursor over untrusted bytes: every read is bounds-checked.
    pub struct Reader<'a> {
        buf: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub fn new(buf: &'a [u8]) -> Self {
            Reader { buf }
        }
        pub fn is_empty(&self) -> bool {
            self.buf.is_empty()
        }
        fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
            if self.buf.len() < n {
                return Err(WireError(format!(
                    "needed {n} bytes, {} left",
                    self.buf.len()
                )));
            }
            let (a, b) = self.buf.split_at(n);
            self.buf = b;
            Ok(a)
        }
        pub fn u8(&mut self) -> Result<u8, WireError> {
            Ok(self.take(1)?[0])
        }
        pub fn u32(&mut self) -> Result<u32, WireError> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        pub fn i32(&mut self) -> Result<i32, WireError> {
            Ok(self.u32()? as i32)
        }
        pub fn i64(&mut self) -> Result<i64, WireError> {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(i64::from_le_bytes(a))
        }
        fn bytes(&mut self) -> Result<Option<Cow<'a, [u8]>>, WireError> {
            match self.i32()? {
                -1 => Ok(None),
                n if n >= 0 => Ok(Some(Cow::Borrowed(self.take(n as usize)?))),
                n => Err(WireError(format!("negative length {n}"))),
            }
        }
        pub fn str(&mut self) -> Result<&'a str, WireError> {
            let n = self.u32()? as usize;
            std::str::from_utf8(self.take(n)?).map_err(|_| WireError("string is not UTF-8".into()))
        }
        /// A count of items that each take at least `min_size` bytes; a
        /// count the remaining bytes cannot hold is an error, not an
        /// allocation.
        pub fn count(&mut self, min_size: usize) -> Result<usize, WireError> {
            let n = self.u32()? as usize;
            if n.saturating_mul(min_size.max(1)) > self.buf.len() {
                return Err(WireError(format!("count {n} exceeds the data")));
            }
            Ok(n)
        }
        /// The next record, borrowing from the buffer.
        pub fn record(&mut self) -> Result<Record<'a>, WireError> {
            let timestamp = self.i64()?;
            let key = self.bytes()?;
            let value = self.bytes()?;
            let n = self.count(8)?;
            let mut headers = Vec::with_capacity(n);
            for _ in 0..n {
                let k = Cow::Borrowed(self.str()?);
                headers.push((k, self.bytes()?));
            }
            Ok(Record {
                timestamp,
                key,
                value,
                headers,
            })
        }
    }

    pub fn decode_batch(buf: &[u8]) -> Result<Vec<Record<'_>>, WireError> {
        let mut r = Reader::new(buf);
        let n = r.count(20)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(r.record()?);
        }
        Ok(out)
    }

    pub fn encode_partitions(p: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + p.len() * 4);
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        for x in p {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    pub fn decode_partitions(buf: &[u8]) -> Result<Vec<u32>, WireError> {
        let mut r = Reader::new(buf);
        let n = r.count(4)?;
        (0..n).map(|_| r.u32()).collect()
    }

    pub fn encode_keep(k: &[bool]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + k.len());
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend(k.iter().map(|&b| u8::from(b)));
        out
    }

    pub fn decode_keep(buf: &[u8]) -> Result<Vec<bool>, WireError> {
        let mut r = Reader::new(buf);
        let n = r.count(1)?;
        (0..n).map(|_| r.u8().map(|b| b != 0)).collect()
    }

    pub fn encode_verdicts(v: &[Verdict<'_>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + v
                .iter()
                .map(|x| match x {
                    Verdict::Keep(r) => 1 + record_len(r),
                    Verdict::Reject(reason) => 5 + reason.len(),
                })
                .sum::<usize>(),
        );
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        for x in v {
            match x {
                Verdict::Keep(r) => {
                    out.push(0);
                    encode_record(&mut out, r);
                }
                Verdict::Reject(reason) => {
                    out.push(1);
                    out.extend_from_slice(&(reason.len() as u32).to_le_bytes());
                    out.extend_from_slice(reason.as_bytes());
                }
            }
        }
        out
    }

    pub fn decode_verdicts(buf: &[u8]) -> Result<Vec<Verdict<'_>>, WireError> {
        let mut r = Reader::new(buf);
        let n = r.count(5)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match r.u8()? {
                0 => Verdict::Keep(r.record()?),
                1 => Verdict::Reject(r.str()?.to_string()),
                t => return Err(WireError(format!("unknown verdict tag {t}"))),
            });
        }
        Ok(out)
    }
}

/// Guest-side runtime used by the macro-generated exports. Input and output
/// live in buffers the guest owns, so no raw pointers are dereferenced.
#[doc(hidden)]
pub mod __rt {
    use super::{Record, Verdict, wire};
    use std::cell::RefCell;

    thread_local! {
        static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        /// This batch's binding config, fetched on first use.
        pub(crate) static CONFIG: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// `sluice_alloc`: a buffer of `len` bytes for the host to fill.
    pub fn alloc(len: u32) -> u32 {
        INPUT.with(|b| {
            let mut b = b.borrow_mut();
            // The host overwrites all `len` bytes; only growth is zeroed,
            // not the whole megabyte-sized buffer on every batch.
            b.resize(len as usize, 0);
            b.as_mut_ptr() as usize as u32
        })
    }

    /// Keeps `out` alive until the next call and returns (ptr << 32 | len).
    fn publish(out: Vec<u8>) -> i64 {
        OUTPUT.with(|o| {
            let mut o = o.borrow_mut();
            *o = out;
            ((o.as_ptr() as usize as i64) << 32) | (o.len() as i64 & 0xffff_ffff)
        })
    }

    /// Decodes the batch the host wrote (records borrow from it, no copy),
    /// runs `f` over them and publishes its output. Every entry point goes
    /// through here, so this is also where the previous batch's cached
    /// config is dropped.
    fn with_records(f: impl FnOnce(Vec<Record<'_>>) -> Vec<u8>) -> i64 {
        CONFIG.with(|c| c.borrow_mut().take());
        let out = INPUT.with(|b| {
            let input = b.borrow();
            wire::decode_batch(&input).map(f).ok()
        });
        match out {
            Some(out) => publish(out),
            None => -1,
        }
    }

    pub fn partition(partitions: u32, f: impl Fn(&Record<'_>, u32) -> u32) -> i64 {
        with_records(|rs| {
            wire::encode_partitions(&rs.iter().map(|r| f(r, partitions)).collect::<Vec<_>>())
        })
    }

    pub fn intercept(f: impl for<'r> Fn(Record<'r>) -> Result<Record<'r>, String>) -> i64 {
        with_records(|rs| {
            wire::encode_verdicts(
                &rs.into_iter()
                    .map(|r| match f(r) {
                        Ok(r) => Verdict::Keep(r),
                        Err(reason) => Verdict::Reject(reason),
                    })
                    .collect::<Vec<_>>(),
            )
        })
    }

    pub fn filter(f: impl Fn(&Record<'_>) -> bool) -> i64 {
        with_records(|rs| wire::encode_keep(&rs.iter().map(f).collect::<Vec<_>>()))
    }
}

#[cfg(test)]
mod tests {
    use super::wire::*;
    use super::*;

    fn sample() -> Vec<Record<'static>> {
        vec![
            Record {
                timestamp: 7,
                key: Some(b"k"[..].into()),
                value: None,
                headers: vec![("a".into(), Some(b"1"[..].into())), ("a".into(), None)],
            },
            Record::default(),
        ]
    }

    #[test]
    fn batch_round_trip_keeps_nulls_and_duplicate_headers() {
        let rs = sample();
        assert_eq!(decode_batch(&encode_batch(rs.iter())).expect("decode"), rs);
    }

    #[test]
    fn results_round_trip() {
        assert_eq!(
            decode_partitions(&encode_partitions(&[3, 1])).expect("p"),
            vec![3, 1]
        );
        assert_eq!(
            decode_keep(&encode_keep(&[true, false])).expect("k"),
            vec![true, false]
        );
        let v = vec![
            Verdict::Keep(sample()[0].clone()),
            Verdict::Reject("no".into()),
        ];
        assert_eq!(decode_verdicts(&encode_verdicts(&v)).expect("v"), v);
    }

    #[test]
    fn hostile_counts_and_lengths_are_errors() {
        assert!(decode_batch(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_partitions(&[10, 0, 0, 0, 1]).is_err());
        let mut b = encode_batch(sample().iter());
        b.truncate(b.len() - 1);
        assert!(decode_batch(&b).is_err());
    }

    #[test]
    fn header_helpers() {
        let mut r = sample().remove(0);
        assert_eq!(r.header("a"), Some(&b"1"[..]));
        r.set_header("a", "2");
        assert_eq!(r.headers, vec![("a".into(), Some(b"2"[..].into()))]);
        r.set_value(Some(b"v".to_vec()));
        assert_eq!(r.value(), Some(&b"v"[..]));
        assert_eq!(r.key(), Some(&b"k"[..]));
    }

    #[test]
    fn decoded_records_borrow_from_the_input() {
        let input = encode_batch(sample().iter());
        let rs = decode_batch(&input).expect("decode");
        assert!(matches!(rs[0].key, Some(Cow::Borrowed(_))));
        assert!(matches!(rs[0].headers[0].0, Cow::Borrowed(_)));
        let owned: Vec<Record<'static>> = rs.into_iter().map(Record::into_owned).collect();
        drop(input);
        assert_eq!(owned, sample());
    }
}
