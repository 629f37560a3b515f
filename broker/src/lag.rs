//! High watermarks for consumer lag. A group's coordinator knows its
//! committed offsets, but on a cluster most committed partitions are led
//! (and their high watermark known) by other brokers. This keeps the high
//! watermark of every committed partition this broker does not lead,
//! asked of its leader with ListOffsets every few seconds over one
//! persistent connection per broker, so `/metrics` can report lag without
//! waiting on the network.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_client::Pool;

use crate::broker::Broker;
use crate::view::ClusterView;
use sluice_metadata::quorum::Quorum;

/// How often remote high watermarks are refreshed.
const REFRESH: Duration = Duration::from_secs(2);
/// A remote high watermark older than this is not reported.
const STALE: Duration = Duration::from_secs(30);
const LATEST: i64 = -1;
const LIST_OFFSETS_VERSION: i16 = 7;

pub struct HighWatermarks {
    remote: Mutex<HashMap<(String, i32), (i64, Instant)>>,
    pool: Pool,
}

impl HighWatermarks {
    pub fn new(node_id: i32, quorum: Arc<Quorum>) -> HighWatermarks {
        HighWatermarks {
            remote: Mutex::new(HashMap::new()),
            pool: Pool::new(
                format!("sluice-lag-{node_id}"),
                quorum.peer_resolver(),
                Duration::from_secs(3),
            )
            .with_transport(quorum.peer_transport().clone()),
        }
    }

    /// The high watermark of `topic`-`partition`: this broker's own if it
    /// leads it, else the last one its leader reported (if recent).
    pub fn get(&self, view: &ClusterView, topic: &str, partition: i32) -> Option<i64> {
        if let Some(ls) = view.leader(topic, partition) {
            return Some(ls.log.high_watermark());
        }
        let remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        remote
            .get(&(topic.to_string(), partition))
            .filter(|(_, at)| at.elapsed() < STALE)
            .map(|(hw, _)| *hw)
    }

    /// Asks the leaders of `partitions` (none led here) for their high
    /// watermarks, one request per broker.
    async fn refresh(&self, view: &ClusterView, partitions: Vec<(String, i32)>) {
        let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for (topic, p) in partitions {
            if let Some(leader) = view
                .partition(&topic, p)
                .map(|x| x.leader)
                .filter(|l| *l >= 0)
            {
                by_leader
                    .entry(leader)
                    .or_default()
                    .entry(topic)
                    .or_default()
                    .push(p);
            }
        }
        for (leader, topics) in by_leader {
            let mut req = ListOffsetsRequest::default();
            req.replica_id = BrokerId(-1);
            req.topics = topics
                .into_iter()
                .map(|(t, ps)| {
                    let mut lt = ListOffsetsTopic::default();
                    lt.name = TopicName(StrBytes::from_string(t));
                    lt.partitions = ps
                        .into_iter()
                        .map(|p| {
                            let mut lp = ListOffsetsPartition::default();
                            lp.partition_index = p;
                            lp.timestamp = LATEST;
                            lp.current_leader_epoch = -1;
                            lp
                        })
                        .collect();
                    lt
                })
                .collect();
            let answer = match self.pool.get(leader).await {
                Ok(conn) => conn.send(&req, LIST_OFFSETS_VERSION, REFRESH).await,
                Err(e) => Err(e),
            };
            let resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(leader, error = %e, "high watermarks for consumer lag not fetched");
                    self.pool.reset(leader).await;
                    continue;
                }
            };
            let now = Instant::now();
            let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            for t in resp.topics {
                for p in t.partitions.into_iter().filter(|p| p.error_code == 0) {
                    remote.insert((t.name.0.to_string(), p.partition_index), (p.offset, now));
                }
            }
        }
        let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        remote.retain(|_, (_, at)| at.elapsed() < STALE);
    }
}

/// Keeps the remote high watermarks of the partitions this broker's
/// groups committed fresh.
pub async fn refresh_loop(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let view = broker.view();
        let mut wanted: Vec<(String, i32)> = broker
            .groups
            .all_offsets()
            .into_iter()
            .map(|(_, t, p, _)| (t, p))
            .filter(|(t, p)| view.leader(t, *p).is_none())
            .collect();
        wanted.sort();
        wanted.dedup();
        if !wanted.is_empty() {
            broker.high_watermarks.refresh(&view, wanted).await;
        }
    }
}
