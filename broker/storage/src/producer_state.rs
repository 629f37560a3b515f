//! Idempotent-producer state of one partition: for each producer id, its
//! epoch and the sequence ranges of its last five batches, so a retried
//! batch is answered with the offsets it got the first time instead of being
//! written twice. Rebuilt on startup (and after a truncation) from the
//! latest snapshot plus the batch headers after it, so it is replicated
//! with the log itself: a new leader knows what its log holds.
//!
//! It also knows each producer's open transaction here (where it began),
//! hence the last stable offset, and hands the transactions that markers
//! end to the aborted-transaction index (`txn`).
//!
//! Two kinds of producer ids share it. Client producers (from
//! InitProducerId) must send consecutive sequences. *Derived* producers
//! (ids from [`DERIVED_PRODUCER_IDS`] up) are the broker's own, for records
//! a plugin moved from the partition a client addressed: each routed
//! sub-batch carries the client batch's last sequence, so their sequences
//! only increase and may skip (see `sluice_broker::routing`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use sluice_protocol::batch::BatchHeader;
use sluice_protocol::records::Marker;

/// Producer ids from here up are never handed out to clients: the broker
/// derives them for plugin-routed sub-batches.
pub const DERIVED_PRODUCER_IDS: i64 = 1 << 62;

pub fn is_derived(producer_id: i64) -> bool {
    producer_id >= DERIVED_PRODUCER_IDS
}

/// Derived ids from here up are for sub-batches of *transactional*
/// producers, laid out so every partition can tell whose they are: a
/// marker for the client's producer must end them too (see
/// [`ProducerStates::open_derived_of`]). The routing layer's hashed ids
/// (non-transactional producers) may take any derived value, here too;
/// they never open a transaction, which is what tells them apart.
pub const TXN_DERIVED_PRODUCER_IDS: i64 = DERIVED_PRODUCER_IDS | (1 << 61);

/// Bits of a transactional derived id: the client's producer id, then the
/// partition the client addressed.
const OWNER_BITS: u32 = 40;
const PARTITION_BITS: u32 = 21;

/// The id for records of transactional producer `producer_id`'s batches to
/// `client_partition` that a plugin stored elsewhere. `None` past the
/// layout's range (producer ids from 2^40, partitions from 2^21), which
/// InitProducerId and topic limits keep far away.
pub fn txn_derived_producer_id(client_partition: i32, producer_id: i64) -> Option<i64> {
    let partition = i64::from(client_partition);
    ((0..1 << OWNER_BITS).contains(&producer_id) && (0..1 << PARTITION_BITS).contains(&partition))
        .then_some(TXN_DERIVED_PRODUCER_IDS | (partition << OWNER_BITS) | producer_id)
}

/// The client producer a transactional derived id stands for.
pub fn txn_owner(producer_id: i64) -> Option<i64> {
    (producer_id >= TXN_DERIVED_PRODUCER_IDS).then_some(producer_id & ((1 << OWNER_BITS) - 1))
}

/// How many recent batches per producer are remembered (Kafka's value;
/// clients keep at most five requests in flight per connection).
pub const BATCHES_KEPT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
    /// Wall-clock time of the last append, for expiry.
    pub last_append_ms: i64,
    /// Offset of the first record of the producer's open transaction in
    /// this partition (none open: `None`).
    #[serde(default)]
    pub txn_first_offset: Option<i64>,
    /// Epoch of the newest coordinator that wrote a marker for it here: an
    /// older one's markers are refused (a coordinator that lost its role
    /// must not end the producer's next transaction).
    #[serde(default = "no_coordinator_epoch")]
    pub coordinator_epoch: i32,
}

fn no_coordinator_epoch() -> i32 {
    -1
}

/// What DescribeProducers shows of one producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// -1: none remembered.
    pub last_sequence: i32,
    pub last_timestamp: i64,
    pub coordinator_epoch: i32,
    pub txn_first_offset: Option<i64>,
}

/// A transaction that ended in this partition: its marker was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    /// Its first record here (the marker's own offset if it wrote none).
    pub first_offset: i64,
    /// Its marker.
    pub last_offset: i64,
    pub aborted: bool,
    /// The first offset of the oldest transaction still open once this one
    /// ended (or just past the marker): see `txn::AbortedTxn`.
    pub last_stable_offset: i64,
}

/// Why an idempotent batch was refused; each is the Kafka error of that name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {pid} epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch { pid: i64, got: i16, current: i16 },
    #[error("producer {pid}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence { pid: i64, expected: i32, got: i32 },
    #[error(
        "producer {pid}: a marker from coordinator epoch {got}, older than {current} (no longer its coordinator)"
    )]
    CoordinatorFenced { pid: i64, got: i32, current: i32 },
    /// Ahead of the next expected sequence: an earlier batch of the
    /// producer has not arrived, normally one that failed with a retriable
    /// error and is being retried (pipelined requests). Kafka answers
    /// OUT_OF_ORDER_SEQUENCE_NUMBER, on which librdkafka bumps its epoch
    /// and resends the earlier batch under it; if that batch was stored
    /// after all (on a replica that later leads), it is stored twice. A
    /// retriable answer lets the earlier batch's retry come first.
    #[error(
        "producer {pid}: sequence {got} arrived before {expected} (an earlier batch is still being retried); retry"
    )]
    Gap { pid: i64, expected: i32, got: i32 },
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// Already written: answer with the original offsets.
    Duplicate(BatchMeta),
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// Is `seq` ahead of `expected` (by less than half the sequence space,
/// which wraps from `i32::MAX` to 0)?
fn is_ahead(seq: i32, expected: i32) -> bool {
    let space = 1i64 << 31;
    let distance = (i64::from(seq) - i64::from(expected)).rem_euclid(space);
    distance > 0 && distance < space / 2
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions: first offset → producer id (derived from
    /// `producers`, kept for the last stable offset).
    ongoing: BTreeMap<i64, i64>,
    /// Ended transactions whose marker the high watermark has not passed
    /// yet: until it has, a new leader may not have the marker, so they
    /// still hold the last stable offset back (as in Kafka).
    unreplicated: VecDeque<CompletedTxn>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Classifies a batch before it is written (Kafka's
    /// `ProducerAppendInfo.checkSequence` and duplicate lookup).
    /// `coordinator_epoch`: a marker's writer's epoch.
    pub fn check(
        &self,
        h: &BatchHeader,
        coordinator_epoch: Option<i32>,
    ) -> Result<SequenceCheck, SequenceError> {
        if h.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let pid = h.producer_id;
        if h.is_control() || h.base_sequence < 0 {
            // A transaction marker, or a coordinator's own write in a
            // producer's transaction (transactional offset commits), carries
            // no sequence; an older epoch's comes from a fenced coordinator
            // or producer.
            return match self.producers.get(&pid) {
                Some(entry) if h.producer_epoch < entry.epoch => {
                    Err(SequenceError::InvalidProducerEpoch {
                        pid,
                        got: h.producer_epoch,
                        current: entry.epoch,
                    })
                }
                Some(entry) if coordinator_epoch.is_some_and(|e| e < entry.coordinator_epoch) => {
                    Err(SequenceError::CoordinatorFenced {
                        pid,
                        got: coordinator_epoch.unwrap_or(-1),
                        current: entry.coordinator_epoch,
                    })
                }
                _ => Ok(SequenceCheck::Append),
            };
        }
        // A routed record of a transaction older than its owner's epoch here
        // (a marker of a fencing or timeout abort came first): a late
        // sub-batch would open a transaction no marker ends.
        if h.is_transactional()
            && let Some(owner) = txn_owner(pid).and_then(|o| self.producers.get(&o))
            && owner.epoch > h.producer_epoch
        {
            return Err(SequenceError::InvalidProducerEpoch {
                pid,
                got: h.producer_epoch,
                current: owner.epoch,
            });
        }
        let first = h.base_sequence;
        let last = first.wrapping_add(h.last_offset_delta);
        // Unknown (or forgotten: expired, or its batches removed by
        // retention): any sequence starts it, as in Kafka since KIP-360.
        let Some(entry) = self.producers.get(&pid) else {
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(SequenceError::InvalidProducerEpoch {
                pid,
                got: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            // A bumped epoch restarts the sequence.
            return if first == 0 || is_derived(pid) {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrderSequence {
                    pid,
                    expected: 0,
                    got: first,
                })
            };
        }
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return Ok(SequenceCheck::Duplicate(*dup));
        }
        let Some(newest) = entry.batches.back() else {
            return Ok(SequenceCheck::Append);
        };
        if is_derived(pid) {
            return if first > newest.first_seq {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrderSequence {
                    pid,
                    expected: newest.first_seq.saturating_add(1),
                    got: first,
                })
            };
        }
        let expected = next_seq(newest.last_seq);
        if first == expected {
            Ok(SequenceCheck::Append)
        } else if is_ahead(first, expected) {
            Err(SequenceError::Gap {
                pid,
                expected,
                got: first,
            })
        } else {
            Err(SequenceError::OutOfOrderSequence {
                pid,
                expected,
                got: first,
            })
        }
    }

    /// The newest batch of `producer_id` and its epoch, if remembered.
    pub fn latest(&self, producer_id: i64) -> Option<(i16, BatchMeta)> {
        let entry = self.producers.get(&producer_id)?;
        Some((entry.epoch, *entry.batches.back()?))
    }

    /// Every remembered batch of `producer_id` in `epoch`, oldest first.
    pub fn batches(&self, producer_id: i64, epoch: i16) -> Vec<BatchMeta> {
        self.producers
            .get(&producer_id)
            .filter(|e| e.epoch == epoch)
            .map(|e| e.batches.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Records a batch that was written (header carries assigned offsets);
    /// `marker` is what a control batch says. Returns the transaction a
    /// marker ended.
    pub fn record(
        &mut self,
        h: &BatchHeader,
        marker: Option<(Marker, i32)>,
        now_ms: i64,
    ) -> Option<CompletedTxn> {
        if h.producer_id < 0 {
            return None;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_append_ms: now_ms,
                txn_first_offset: None,
                coordinator_epoch: -1,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        if h.is_control() {
            // Control records of unknown types end nothing (Kafka skips
            // them); nor does a marker for a producer with nothing open
            // here (a coordinator's retry): as in Kafka, no index entry.
            let (marker, coordinator_epoch) = marker?;
            entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
            let first = entry.txn_first_offset.take()?;
            self.ongoing.remove(&first);
            let last_stable_offset = self
                .ongoing
                .keys()
                .next()
                .copied()
                .unwrap_or(h.base_offset + 1);
            let done = CompletedTxn {
                producer_id: h.producer_id,
                first_offset: first,
                last_offset: h.base_offset,
                aborted: marker == Marker::Abort,
                last_stable_offset,
            };
            self.unreplicated.push_back(done);
            return Some(done);
        }
        if h.is_transactional() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(h.base_offset);
            self.ongoing.insert(h.base_offset, h.producer_id);
        }
        if h.base_sequence < 0 {
            // No sequence (a coordinator's write): nothing to deduplicate.
            return None;
        }
        entry.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: h.base_sequence.wrapping_add(h.last_offset_delta),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            timestamp: h.max_timestamp,
        });
        while entry.batches.len() > BATCHES_KEPT {
            entry.batches.pop_front();
        }
        None
    }

    /// The first offset a read_committed consumer may not read yet, given
    /// the high watermark `hw`: the start of the oldest open transaction,
    /// or of an ended one whose marker is not below `hw` yet. `None`:
    /// nothing holds it back (the last stable offset is `hw`).
    pub fn first_unstable_offset(&mut self, hw: i64) -> Option<i64> {
        self.forget_replicated(hw);
        let open = self.ongoing.keys().next().copied();
        let unreplicated = self.unreplicated.iter().map(|t| t.first_offset).min();
        match (open, unreplicated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops ended transactions whose markers are below the high
    /// watermark `hw` (every in-sync replica has them).
    pub fn forget_replicated(&mut self, hw: i64) {
        self.unreplicated.retain(|t| t.last_offset >= hw);
    }

    /// Every producer this partition remembers (DescribeProducers).
    pub fn describe(&self) -> Vec<ProducerSummary> {
        let mut out: Vec<ProducerSummary> = self
            .producers
            .iter()
            .map(|(pid, e)| ProducerSummary {
                producer_id: *pid,
                producer_epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: e.batches.back().map_or(-1, |b| b.timestamp),
                coordinator_epoch: e.coordinator_epoch,
                txn_first_offset: e.txn_first_offset,
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    /// Producers with an open transaction here and its first offset.
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ongoing.iter().map(|(first, pid)| (*pid, *first))
    }

    /// Whether `producer_id` has a transaction open here.
    pub fn in_transaction(&self, producer_id: i64) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|e| e.txn_first_offset.is_some())
    }

    /// The broker's derived producers of client producer `owner` with a
    /// transaction open here (plugin-routed records of its transaction):
    /// a marker for `owner` ends them first.
    pub fn open_derived_of(&self, owner: i64) -> Vec<i64> {
        self.ongoing
            .values()
            .copied()
            .filter(|pid| txn_owner(*pid) == Some(owner))
            .collect()
    }

    /// Forgets producers idle longer than `expiration_ms` (never one with
    /// an open transaction: its coordinator will end it).
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some() || now_ms.saturating_sub(e.last_append_ms) <= expiration_ms
        });
        before - self.producers.len()
    }

    /// Writes a snapshot of the state as of `offset` (exclusive), CRC-guarded.
    pub fn save_snapshot(&self, path: &Path) -> io::Result<()> {
        let body = serde_json::to_vec(&self.producers).map_err(io::Error::other)?;
        let mut out = format!("{:08x}\n", crc32fast::hash(&body)).into_bytes();
        out.extend_from_slice(&body);
        let tmp = path.with_extension("snapshot.tmp");
        fs::write(&tmp, &out)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, path)
    }

    /// Loads a snapshot; `None` if missing or corrupt (the caller then
    /// rebuilds from the log instead).
    pub fn load_snapshot(path: &Path) -> Option<ProducerStates> {
        let data = fs::read(path).ok()?;
        let nl = data.iter().position(|&b| b == b'\n')?;
        let stored = u32::from_str_radix(std::str::from_utf8(&data[..nl]).ok()?, 16).ok()?;
        let body = &data[nl + 1..];
        if crc32fast::hash(body) != stored {
            return None;
        }
        let producers: HashMap<i64, ProducerEntry> = serde_json::from_slice(body).ok()?;
        let ongoing = producers
            .iter()
            .filter_map(|(pid, e)| Some((e.txn_first_offset?, *pid)))
            .collect();
        Some(ProducerStates {
            producers,
            ongoing,
            unreplicated: VecDeque::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            len: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut s = ProducerStates::default();
        let b0 = header(7, 0, 0, 3, 10);
        assert_eq!(s.check(&b0, None), Ok(SequenceCheck::Append));
        s.record(&b0, None, 1);
        let b1 = header(7, 0, 3, 2, 13);
        assert_eq!(s.check(&b1, None), Ok(SequenceCheck::Append));
        s.record(&b1, None, 2);
        match s.check(&header(7, 0, 0, 3, -1), None) {
            Ok(SequenceCheck::Duplicate(m)) => {
                assert_eq!((m.first_offset, m.last_offset), (10, 12))
            }
            other => panic!("expected duplicate, got {other:?}"),
        }
        assert!(matches!(
            s.check(&header(7, 0, 9, 1, -1), None),
            Err(SequenceError::Gap {
                expected: 5,
                got: 9,
                ..
            })
        ));
        // Behind, but not one of the remembered batches: out of order.
        assert!(matches!(
            s.check(&header(7, 0, 1, 1, -1), None),
            Err(SequenceError::OutOfOrderSequence {
                expected: 5,
                got: 1,
                ..
            })
        ));
    }

    #[test]
    fn sequences_wrap_from_max_to_zero() {
        assert!(is_ahead(0, i32::MAX));
        assert!(is_ahead(3, i32::MAX - 2));
        assert!(!is_ahead(i32::MAX, 0));
        assert!(!is_ahead(5, 5));
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, i32::MAX - 1, 2, 0), None, 0);
        assert_eq!(
            s.check(&header(1, 0, 0, 1, -1), None),
            Ok(SequenceCheck::Append)
        );
        assert!(matches!(
            s.check(&header(1, 0, 4, 1, -1), None),
            Err(SequenceError::Gap { expected: 0, .. })
        ));
    }

    #[test]
    fn epochs_fence_and_reset_sequences() {
        let mut s = ProducerStates::default();
        s.record(&header(1, 2, 0, 1, 0), None, 0);
        assert!(matches!(
            s.check(&header(1, 1, 1, 1, -1), None),
            Err(SequenceError::InvalidProducerEpoch { .. })
        ));
        assert_eq!(
            s.check(&header(1, 3, 0, 1, -1), None),
            Ok(SequenceCheck::Append)
        );
        assert!(s.check(&header(1, 3, 5, 1, -1), None).is_err());
        // An unknown producer may start anywhere (its state may have gone
        // with retention), as in Kafka.
        assert_eq!(
            s.check(&header(2, 0, 4, 1, -1), None),
            Ok(SequenceCheck::Append)
        );
    }

    #[test]
    fn derived_producers_only_need_increasing_sequences() {
        let pid = DERIVED_PRODUCER_IDS + 7;
        let mut s = ProducerStates::default();
        // Sub-batches carry the client batch's last sequence: 9, then 19.
        s.record(&header(pid, 0, 9, 3, 0), None, 0);
        assert_eq!(
            s.check(&header(pid, 0, 19, 2, -1), None),
            Ok(SequenceCheck::Append)
        );
        s.record(&header(pid, 0, 19, 2, 3), None, 0);
        assert!(matches!(
            s.check(&header(pid, 0, 9, 3, -1), None),
            Ok(SequenceCheck::Duplicate(BatchMeta {
                first_offset: 0,
                ..
            }))
        ));
        assert!(matches!(
            s.check(&header(pid, 0, 15, 1, -1), None),
            Err(SequenceError::OutOfOrderSequence { .. })
        ));
        // A client's epoch bump restarts them anywhere.
        assert_eq!(
            s.check(&header(pid, 1, 4, 1, -1), None),
            Ok(SequenceCheck::Append)
        );
        assert_eq!(s.latest(pid).map(|(e, b)| (e, b.first_seq)), Some((0, 19)));
    }

    #[test]
    fn transactional_derived_ids_name_their_owner() {
        use sluice_protocol::batch::TRANSACTIONAL_BIT;
        let d = txn_derived_producer_id(3, 42).expect("in range");
        assert!(is_derived(d));
        assert_eq!(txn_owner(d), Some(42));
        assert_ne!(d, txn_derived_producer_id(4, 42).expect("in range"));
        assert_eq!(txn_owner(DERIVED_PRODUCER_IDS + 7), None, "hashed ids");
        assert_eq!(txn_owner(42), None);
        assert_eq!(txn_derived_producer_id(3, 1 << 40), None);
        assert_eq!(txn_derived_producer_id(-1, 42), None);
        let max = txn_derived_producer_id((1 << 21) - 1, (1 << 40) - 1).expect("in range");
        assert!(max > 0, "stays positive: {max}");
        assert_eq!(txn_owner(max), Some((1 << 40) - 1));
        // Open transactions of 42's derived producers, not another's.
        let other = txn_derived_producer_id(3, 43).expect("in range");
        let mut s = ProducerStates::default();
        s.record(
            &with_attributes(header(d, 2, 9, 1, 0), TRANSACTIONAL_BIT),
            None,
            0,
        );
        s.record(
            &with_attributes(header(other, 0, 9, 1, 1), TRANSACTIONAL_BIT),
            None,
            0,
        );
        s.record(
            &header(
                txn_derived_producer_id(5, 42).expect("in range"),
                0,
                0,
                1,
                2,
            ),
            None,
            0,
        );
        assert_eq!(s.open_derived_of(42), vec![d]);
        assert!(s.open_derived_of(7).is_empty());
        // Once the owner's epoch here is newer (a fencing abort's marker),
        // a late routed record of the older epoch is refused.
        s.record(&header(42, 3, 0, 1, 3), None, 0);
        let late = txn_derived_producer_id(9, 42).expect("in range");
        assert!(matches!(
            s.check(
                &with_attributes(header(late, 2, 9, 1, -1), TRANSACTIONAL_BIT),
                None
            ),
            Err(SequenceError::InvalidProducerEpoch { current: 3, .. })
        ));
        assert_eq!(
            s.check(
                &with_attributes(header(late, 3, 9, 1, -1), TRANSACTIONAL_BIT),
                None
            ),
            Ok(SequenceCheck::Append)
        );
    }

    fn with_attributes(mut h: BatchHeader, attributes: i16) -> BatchHeader {
        h.attributes = attributes;
        h
    }

    #[test]
    fn transactions_hold_the_last_stable_offset_until_their_marker_is_replicated() {
        use sluice_protocol::batch::{CONTROL_BIT, TRANSACTIONAL_BIT};
        let txn = |pid, seq, count, base| {
            with_attributes(header(pid, 0, seq, count, base), TRANSACTIONAL_BIT)
        };
        let marker = |pid, base| {
            let mut h =
                with_attributes(header(pid, 0, -1, 1, base), TRANSACTIONAL_BIT | CONTROL_BIT);
            h.base_sequence = -1;
            h
        };
        let mut s = ProducerStates::default();
        s.record(&header(9, 0, 0, 5, 0), None, 0);
        assert_eq!(s.first_unstable_offset(5), None, "plain batches are stable");
        s.record(&txn(1, 0, 2, 5), None, 0);
        s.record(&txn(2, 0, 2, 7), None, 0);
        s.record(&txn(1, 2, 2, 9), None, 0);
        assert_eq!(s.first_unstable_offset(11), Some(5));
        assert_eq!(
            s.open_transactions().collect::<Vec<_>>(),
            vec![(1, 5), (2, 7)]
        );
        // A marker is checked for its epoch only, never for a sequence.
        assert_eq!(s.check(&marker(1, 11), None), Ok(SequenceCheck::Append));
        let done = s
            .record(&marker(1, 11), Some((Marker::Abort, 0)), 0)
            .expect("ended");
        assert_eq!(
            done,
            CompletedTxn {
                producer_id: 1,
                first_offset: 5,
                last_offset: 11,
                aborted: true,
                last_stable_offset: 7,
            }
        );
        // Producer 2 is still open from 7; producer 1's marker is at 11.
        assert_eq!(
            s.first_unstable_offset(11),
            Some(5),
            "marker not replicated yet"
        );
        assert_eq!(s.first_unstable_offset(12), Some(7));
        let done = s
            .record(&marker(2, 12), Some((Marker::Commit, 0)), 0)
            .expect("ended");
        assert!(!done.aborted);
        assert_eq!(done.last_stable_offset, 13);
        assert_eq!(s.first_unstable_offset(13), None);
        // A coordinator older than the last one to write a marker is fenced.
        s.record(&txn(1, 4, 1, 13), None, 0);
        let later = s
            .record(&marker(1, 14), Some((Marker::Abort, 3)), 0)
            .expect("ended");
        assert!(later.aborted);
        assert!(matches!(
            s.check(&marker(1, 15), Some(2)),
            Err(SequenceError::CoordinatorFenced {
                got: 2,
                current: 3,
                ..
            })
        ));
        assert_eq!(s.check(&marker(1, 15), Some(3)), Ok(SequenceCheck::Append));
        // The sequence carries on after the marker.
        assert_eq!(s.check(&txn(1, 5, 1, 15), None), Ok(SequenceCheck::Append));
        // An open transaction survives a snapshot; its producer never expires.
        s.record(&txn(3, 0, 1, 13), None, 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.snapshot");
        s.save_snapshot(&p).expect("save");
        let mut loaded = ProducerStates::load_snapshot(&p).expect("load");
        assert_eq!(loaded.first_unstable_offset(14), Some(13));
        assert_eq!(loaded.expire(i64::MAX, 0), 3, "all but the open one");
        assert_eq!(loaded.len(), 1);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(&header(1, 0, i, 1, i64::from(i)), None, 0);
        }
        assert!(matches!(
            s.check(&header(1, 0, 6, 1, -1), None),
            Ok(SequenceCheck::Duplicate(_))
        ));
        assert!(matches!(
            s.check(&header(1, 0, 2, 1, -1), None),
            Ok(SequenceCheck::Duplicate(_))
        ));
        assert!(s.check(&header(1, 0, 1, 1, -1), None).is_err());
    }

    #[test]
    fn snapshot_round_trip_and_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, 0, 1, 0), None, 1_000);
        s.record(&header(2, 0, 0, 1, 1), None, 50_000);
        let p = dir.path().join("x.snapshot");
        s.save_snapshot(&p).expect("save");
        assert_eq!(ProducerStates::load_snapshot(&p), Some(s.clone()));
        let mut bytes = fs::read(&p).expect("read");
        let n = bytes.len();
        bytes[n - 2] ^= 1;
        fs::write(&p, bytes).expect("write");
        assert_eq!(ProducerStates::load_snapshot(&p), None);
        assert_eq!(s.expire(60_000, 20_000), 1);
        assert_eq!(s.len(), 1);
    }
}
