//! One transactional id's state as the coordinator keeps it, and the
//! transitions Kafka's coordinator allows (`TransactionMetadata`):
//! Empty → Ongoing (partitions added) → PrepareCommit / PrepareAbort
//! (EndTxn, a timeout, a new producer instance) → CompleteCommit /
//! CompleteAbort (every partition has its marker) → Ongoing again at the
//! next transaction. Pure: the coordinator persists each new state before
//! it counts.

use std::collections::BTreeSet;

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name for the state (ListTransactions, DescribeTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    /// Every state, for filters by name.
    pub const ALL: [TxnState; 6] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ];

    /// Markers are being written: nothing else may happen to it.
    pub fn is_preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// What the coordinator persists for a transactional id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Partitions the current (or ending) transaction wrote to.
    pub partitions: BTreeSet<(String, i32)>,
    /// When the current transaction began (its first partition).
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The epoch before the last bump by InitProducerId: a producer that
    /// retries that call (its answer was lost) gets the current epoch
    /// again instead of being fenced (KIP-360). Cleared when the
    /// coordinator itself bumps the epoch to fence a producer.
    #[serde(default)]
    pub last_producer_epoch: Option<i16>,
}

impl TxnMeta {
    pub fn new(producer_id: i64, timeout_ms: i32, now: i64) -> TxnMeta {
        TxnMeta {
            producer_id,
            producer_epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            started_ms: now,
            updated_ms: now,
            last_producer_epoch: None,
        }
    }

    /// No transaction open or ending, and nothing done for `expiration_ms`:
    /// the coordinator may forget the id (Kafka's
    /// transactional.id.expiration.ms).
    pub fn expired(&self, now: i64, expiration_ms: i64) -> bool {
        matches!(
            self.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        ) && now.saturating_sub(self.updated_ms) >= expiration_ms
    }

    /// The request's producer must be the one that owns the id now.
    pub fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != self.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(())
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the partitions join the
    /// transaction, which begins if none is open.
    pub fn add_partitions(
        &self,
        partitions: impl IntoIterator<Item = (String, i32)>,
        now: i64,
    ) -> Result<TxnMeta, ResponseError> {
        if self.state.is_preparing() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        let mut next = self.clone();
        if self.state != TxnState::Ongoing {
            next.partitions.clear();
            next.started_ms = now;
        }
        next.partitions.extend(partitions);
        next.state = TxnState::Ongoing;
        next.updated_ms = now;
        Ok(next)
    }

    /// Partitions a produce plugin routed records of the open transaction
    /// to join it, on behalf of the client whose `anchor` partition (the
    /// one it produced to) is in it: never begins a transaction, so a
    /// batch that arrives after its transaction ended cannot start the
    /// producer's next one.
    pub fn add_routed(
        &self,
        anchor: &(String, i32),
        partitions: impl IntoIterator<Item = (String, i32)>,
        now: i64,
    ) -> Result<TxnMeta, ResponseError> {
        if self.state.is_preparing() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        if self.state != TxnState::Ongoing || !self.partitions.contains(anchor) {
            return Err(ResponseError::InvalidTxnState);
        }
        self.add_partitions(partitions, now)
    }

    /// EndTxn: `Ok(None)` when the transaction already ended this way (a
    /// retried request).
    pub fn prepare_end(&self, commit: bool, now: i64) -> Result<Option<TxnMeta>, ResponseError> {
        use TxnState::*;
        match (self.state, commit) {
            (Ongoing, _) => {
                let mut next = self.clone();
                next.state = if commit { PrepareCommit } else { PrepareAbort };
                next.updated_ms = now;
                Ok(Some(next))
            }
            (CompleteCommit, true) | (CompleteAbort, false) => Ok(None),
            (PrepareCommit, true) | (PrepareAbort, false) => {
                Err(ResponseError::ConcurrentTransactions)
            }
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// A transaction the coordinator aborts itself (timed out, or a new
    /// instance of the producer started): the epoch is bumped, fencing
    /// the old instance, whose late writes then fail at the partitions.
    pub fn prepare_abort_fencing(&self, now: i64) -> Option<TxnMeta> {
        if self.state != TxnState::Ongoing || self.producer_epoch == i16::MAX {
            return None;
        }
        let mut next = self.clone();
        next.producer_epoch += 1;
        next.last_producer_epoch = None;
        next.state = TxnState::PrepareAbort;
        next.updated_ms = now;
        Some(next)
    }

    /// Every partition has its marker.
    pub fn complete(&self, now: i64) -> TxnMeta {
        let mut next = self.clone();
        next.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            _ => TxnState::CompleteAbort,
        };
        next.partitions.clear();
        next.updated_ms = now;
        next
    }

    /// InitProducerId by a (new instance of the) producer once nothing is
    /// open: a new epoch (or, when epochs run out, the `fresh_id` at epoch
    /// 0), no partitions.
    pub fn reinit(&self, timeout_ms: i32, fresh_id: Option<i64>, now: i64) -> TxnMeta {
        let mut next = self.clone();
        match fresh_id {
            Some(id) => {
                next.producer_id = id;
                next.producer_epoch = 0;
                next.last_producer_epoch = None;
            }
            None => {
                next.last_producer_epoch = Some(self.producer_epoch);
                next.producer_epoch += 1;
            }
        }
        next.timeout_ms = timeout_ms;
        next.state = TxnState::Empty;
        next.partitions.clear();
        next.updated_ms = now;
        next
    }

    /// Whether a new epoch would overflow (a fresh producer id is needed).
    pub fn epochs_exhausted(&self) -> bool {
        self.producer_epoch >= i16::MAX - 1
    }

    /// An open transaction older than its timeout.
    pub fn timed_out(&self, now: i64) -> bool {
        self.state == TxnState::Ongoing
            && now.saturating_sub(self.started_ms) > i64::from(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_string(), p)
    }

    #[test]
    fn routed_partitions_join_only_an_open_transaction_holding_the_anchor() {
        let m = TxnMeta::new(7, 60_000, 0);
        let anchor = tp("t", 0);
        assert_eq!(
            m.add_routed(&anchor, [tp("t", 1)], 1).map(drop),
            Err(ResponseError::InvalidTxnState),
            "never begins a transaction"
        );
        let open = m.add_partitions([tp("u", 0)], 1).expect("begins");
        assert_eq!(
            open.add_routed(&anchor, [tp("t", 1)], 2).map(drop),
            Err(ResponseError::InvalidTxnState),
            "the client's partition is not in it"
        );
        let open = open.add_partitions([anchor.clone()], 2).expect("added");
        let joined = open
            .add_routed(&anchor, [anchor.clone(), tp("t", 1)], 3)
            .expect("joins");
        assert!(joined.partitions.contains(&tp("t", 1)));
        let ending = joined
            .prepare_end(false, 4)
            .expect("abort")
            .expect("prepared");
        assert_eq!(
            ending.add_routed(&anchor, [tp("t", 2)], 5).map(drop),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(
            ending
                .complete(6)
                .add_routed(&anchor, [tp("t", 2)], 7)
                .map(drop),
            Err(ResponseError::InvalidTxnState),
            "a late batch cannot start the next transaction"
        );
    }

    #[test]
    fn only_an_idle_id_without_a_transaction_expires() {
        let m = TxnMeta::new(7, 60_000, 1_000);
        assert!(!m.expired(1_999, 1_000), "not idle long enough");
        assert!(m.expired(2_000, 1_000));
        let open = m.add_partitions([tp("t", 0)], 1_000).expect("begins");
        assert!(
            !open.expired(i64::MAX, 1_000),
            "an open transaction never expires"
        );
        let ending = open
            .prepare_end(true, 1_000)
            .expect("commit")
            .expect("prepared");
        assert!(
            !ending.expired(i64::MAX, 1_000),
            "nor one whose markers are pending"
        );
        assert!(ending.complete(1_000).expired(2_000, 1_000));
    }

    #[test]
    fn a_transaction_goes_through_its_states() {
        let m = TxnMeta::new(7, 60_000, 0);
        assert_eq!(m.check_producer(7, 0), Ok(()));
        assert_eq!(
            m.check_producer(8, 0),
            Err(ResponseError::InvalidProducerIdMapping)
        );
        assert_eq!(m.check_producer(7, 1), Err(ResponseError::ProducerFenced));
        assert_eq!(m.prepare_end(true, 1), Err(ResponseError::InvalidTxnState));

        let m = m.add_partitions([tp("a", 0)], 10).expect("add");
        let m = m.add_partitions([tp("b", 1)], 20).expect("add more");
        assert_eq!(m.state, TxnState::Ongoing);
        assert_eq!(m.started_ms, 10);
        assert_eq!(m.partitions.len(), 2);
        let prepared = m.prepare_end(true, 30).expect("end").expect("a change");
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        assert_eq!(
            prepared.add_partitions([tp("c", 0)], 31),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(
            prepared.prepare_end(true, 31),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(
            prepared.prepare_end(false, 31),
            Err(ResponseError::InvalidTxnState)
        );
        let done = prepared.complete(40);
        assert_eq!(done.state, TxnState::CompleteCommit);
        assert!(done.partitions.is_empty());
        assert_eq!(done.prepare_end(true, 41), Ok(None), "a retried commit");
        assert_eq!(
            done.prepare_end(false, 41),
            Err(ResponseError::InvalidTxnState)
        );
        // The next transaction starts afresh.
        let next = done.add_partitions([tp("c", 0)], 50).expect("next");
        assert_eq!((next.started_ms, next.partitions.len()), (50, 1));
    }

    #[test]
    fn timeouts_and_new_instances_abort_with_a_bumped_epoch() {
        let m = TxnMeta::new(7, 1_000, 0)
            .add_partitions([tp("a", 0)], 100)
            .expect("add");
        assert!(!m.timed_out(1_100));
        assert!(m.timed_out(1_101));
        let aborting = m.prepare_abort_fencing(1_200).expect("abort");
        assert_eq!(
            (aborting.state, aborting.producer_epoch),
            (TxnState::PrepareAbort, 1)
        );
        assert_eq!(
            aborting.check_producer(7, 0),
            Err(ResponseError::ProducerFenced)
        );
        let done = aborting.complete(1_300);
        assert_eq!(done.state, TxnState::CompleteAbort);
        let again = done.reinit(5_000, None, 1_400);
        assert_eq!(
            (again.producer_epoch, again.state, again.timeout_ms),
            (2, TxnState::Empty, 5_000)
        );
        assert_eq!(
            again.last_producer_epoch,
            Some(1),
            "a lost answer can be retried"
        );
        assert_eq!(
            aborting.last_producer_epoch, None,
            "a fenced producer cannot"
        );
        let fresh = again.reinit(5_000, Some(99), 1_500);
        assert_eq!((fresh.producer_id, fresh.producer_epoch), (99, 0));
        assert_eq!(fresh.last_producer_epoch, None);
    }
}
