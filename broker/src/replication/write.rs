//! The leader write path: the one way anything is appended to a partition
//! as its leader (client produce, plugin-routed and forwarded sub-batches,
//! dead letters, group commits; transaction markers later).
//!
//! For one batch, in order: the leader term must still be current (the
//! caller found it in the view; a newer view may have revoked it) →
//! `min.insync.replicas` for acks=all → the storage append, which checks
//! the producer's sequence and stamps the term's epoch → an fsync when
//! acks=all or `flush.messages` asks for one (concurrent writers share it)
//! → for acks=all, the wait until the high watermark passes the batch,
//! i.e. every in-sync replica has it (the followers fetch while the leader
//! fsyncs; the answer waits for both).

use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::ResponseError;

use super::{LeaderState, ReplicaManager};
use sluice_protocol::batch::BatchError;
use sluice_protocol::batch::ValidatedBatch;
use sluice_storage::LogError;
use sluice_storage::producer_state::SequenceError;

/// How much of a write must be done before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: nobody waits for an answer.
    None,
    /// acks=1: written to the leader's log (page cache).
    Leader,
    /// acks=all: fsynced on the leader and written to every in-sync
    /// replica's log (the followers fsync per `flush.ms`, as in Kafka).
    All,
}

impl Acks {
    /// The produce request's `acks` field; `None` for values Kafka refuses.
    pub fn from_wire(acks: i16) -> Option<Acks> {
        match acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        }
    }

    pub fn to_wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Where a batch landed.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// -1 unless the topic uses LogAppendTime.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// Records written (0 for a duplicate).
    pub records: i64,
    /// A retried idempotent batch: answered with its first offsets.
    pub duplicate: bool,
}

/// Why a write was not acknowledged: the Kafka error and what happened.
#[derive(Debug, Clone)]
pub struct WriteError {
    pub code: ResponseError,
    pub message: String,
}

impl WriteError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> WriteError {
        WriteError {
            code,
            message: message.into(),
        }
    }

    /// The Kafka error of a refused batch.
    pub fn from_batch(e: &BatchError) -> WriteError {
        let code = match e {
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
            BatchError::Invalid(_) => ResponseError::InvalidRecord,
            _ => ResponseError::CorruptMessage,
        };
        WriteError::new(code, e.to_string())
    }

    /// The Kafka error of a storage refusal.
    pub fn from_log(e: &LogError) -> WriteError {
        let code = match e {
            LogError::Batch(b) => return WriteError::from_batch(b),
            LogError::Sequence(SequenceError::InvalidProducerEpoch { .. }) => {
                ResponseError::InvalidProducerEpoch
            }
            LogError::Sequence(SequenceError::OutOfOrderSequence { .. }) => {
                ResponseError::OutOfOrderSequenceNumber
            }
            // Retriable, not persisted: the earlier batch's retry comes
            // first (see `SequenceError::Gap`; routed writes do the same).
            LogError::Sequence(SequenceError::Gap { .. }) => ResponseError::RequestTimedOut,
            LogError::Sequence(SequenceError::CoordinatorFenced { .. }) => {
                ResponseError::TransactionCoordinatorFenced
            }
            LogError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
            LogError::Leading(_)
            | LogError::OffsetOutOfRange { .. }
            | LogError::Corrupt { .. }
            | LogError::Io(_) => ResponseError::KafkaStorageError,
        };
        WriteError::new(code, e.to_string())
    }
}

/// A batch appended to the leader's log, not yet acknowledged: what is
/// left of the write path (fsync, replication wait) is `complete`. Splitting
/// the two lets a connection append its next pipelined request while this
/// one waits for the followers, and keeps appends in request order.
pub struct Staged {
    ls: Arc<LeaderState>,
    acks: Acks,
    min_insync_replicas: usize,
    appended: Appended,
    flush_due: bool,
}

impl Staged {
    pub fn appended(&self) -> &Appended {
        &self.appended
    }

    /// Waits until the batch is as safe as `acks` asks: fsynced when acks=all
    /// or `flush.messages` asks, and with acks=all on every in-sync replica
    /// (the followers fetch while the leader fsyncs). `deadline` bounds the
    /// acks=all wait.
    pub async fn complete(self, deadline: Instant) -> Result<Appended, WriteError> {
        let Staged {
            ls,
            acks,
            min_insync_replicas,
            appended,
            flush_due,
        } = self;
        let name = ls.log.name();
        let end = appended.last_offset + 1;
        // One fsync per partition; concurrent writers share it.
        let flush = async {
            if acks != Acks::All && !flush_due {
                return Ok(());
            }
            ls.log.flush_up_to(end).await.map_err(|e| {
                tracing::error!(partition = %name, error = %e, "fsync failed");
                WriteError::new(
                    ResponseError::KafkaStorageError,
                    format!("{name}: fsync failed: {e}"),
                )
            })
        };
        if acks != Acks::All {
            // A flush.messages fsync that fails is logged; acks=0/1 never
            // promised it.
            let _ = flush.await;
            return Ok(appended);
        }
        // A duplicate waits too: its first copy may not be committed yet.
        let (flushed, committed) = tokio::join!(flush, wait_committed(&ls, end, deadline));
        flushed?;
        committed?;
        let isr = ls.isr_len();
        if isr < min_insync_replicas {
            return Err(WriteError::new(
                ResponseError::NotEnoughReplicasAfterAppend,
                format!(
                    "{name}: written, but the ISR shrank to {isr} (min.insync.replicas {min_insync_replicas})"
                ),
            ));
        }
        Ok(appended)
    }
}

impl ReplicaManager {
    /// Appends `batch` to the partition `ls` leads and returns once it is
    /// as safe as `acks` asks (see the module docs). `min_insync_replicas`
    /// is the topic's setting; `deadline` bounds the acks=all wait.
    pub async fn append(
        &self,
        ls: &Arc<LeaderState>,
        batch: ValidatedBatch,
        acks: Acks,
        min_insync_replicas: usize,
        deadline: Instant,
    ) -> Result<Appended, WriteError> {
        self.stage(ls, batch, acks, min_insync_replicas)?
            .complete(deadline)
            .await
    }

    /// The ordered half of `append`: checks and appends now, without
    /// waiting; the rest is `Staged::complete`.
    pub fn stage(
        &self,
        ls: &Arc<LeaderState>,
        batch: ValidatedBatch,
        acks: Acks,
        min_insync_replicas: usize,
    ) -> Result<Staged, WriteError> {
        if acks == Acks::All && ls.isr_len() < min_insync_replicas {
            return Err(WriteError::new(
                ResponseError::NotEnoughReplicas,
                format!(
                    "{} has {} in-sync replica(s), min.insync.replicas is {min_insync_replicas}",
                    ls.log.name(),
                    ls.isr_len()
                ),
            ));
        }
        let producer = (batch.header.producer_id, batch.header.producer_epoch);
        let info = ls.log.append(batch, &ls.term).map_err(|e| {
            if let LogError::Sequence(_) = e {
                // Rare and telling: an idempotent client bumps its epoch
                // (and may resend what is already stored) after one.
                tracing::info!(partition = %ls.log.name(), epoch = ls.leader_epoch, ?producer, error = %e, "idempotent batch refused");
            }
            WriteError::from_log(&e)
        })?;
        Ok(Staged {
            ls: ls.clone(),
            acks,
            min_insync_replicas,
            appended: Appended {
                base_offset: info.base_offset,
                last_offset: info.last_offset,
                log_append_time: info.log_append_time,
                log_start_offset: info.log_start_offset,
                records: info.records,
                duplicate: info.duplicate,
            },
            flush_due: info.flush_due,
        })
    }
}

impl ReplicaManager {
    /// Waits until every in-sync replica has the partition up to `offset`
    /// (a retried batch answered from its first attempt, under acks=all).
    pub async fn await_committed(
        &self,
        ls: &LeaderState,
        offset: i64,
        deadline: Instant,
    ) -> Result<(), WriteError> {
        wait_committed(ls, offset, deadline).await
    }
}

/// Waits until the high watermark reaches `offset`: every in-sync replica
/// has the batch. Fails when the term is revoked (leadership moved: the
/// batch may or may not survive, and the client retries at the new leader,
/// whose producer state recognizes it if it does) or the deadline passes.
async fn wait_committed(
    ls: &LeaderState,
    offset: i64,
    deadline: Instant,
) -> Result<(), WriteError> {
    loop {
        // Registered before checking, so an advance in between still wakes
        // us; resigning wakes it too.
        let notified = ls.log.appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !ls.is_current() {
            return Err(WriteError::new(
                ResponseError::NotLeaderOrFollower,
                format!(
                    "{}: leadership moved (epoch {}) before the in-sync replicas had the batch",
                    ls.log.name(),
                    ls.leader_epoch
                ),
            ));
        }
        if ls.log.high_watermark() >= offset {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WriteError::new(
                ResponseError::RequestTimedOut,
                format!(
                    "{}: not replicated to the in-sync replicas within the request timeout",
                    ls.log.name()
                ),
            ));
        }
        let _ = tokio::time::timeout(deadline - now, notified).await;
    }
}
