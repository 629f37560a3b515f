//! The one applied view of the cluster metadata on this broker.
//!
//! The controller quorum commits metadata; the applier (`Broker::apply_metadata`)
//! turns each committed image into local state, in log order and in one
//! place: plugins installed, partition logs opened, this broker's role in
//! every partition taken (leader terms begun and revoked, followers
//! fetching), group coordination moved. Only then is the result published
//! here as one immutable [`ClusterView`]. A request handler takes the view
//! once and reads everything from it (topics, leaders, leader epochs,
//! brokers, the cluster id), so it never sees a topic from one image and a
//! leader from another.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use tokio::sync::watch;

use crate::cluster::topics::Topic;
use crate::replication::{LeaderState, Leaders};
use sluice_metadata::image::{BrokerImage, MetadataImage, NO_LEADER, PartitionImage};
use sluice_metadata::quorum::Quorum;

/// How long a write waits for the applier to publish a leadership the
/// quorum already committed.
const CATCH_UP: Duration = Duration::from_secs(2);

/// The metadata at one quorum log index, as this broker applied it.
pub struct ClusterView {
    /// The quorum log index this view reflects.
    pub applied_index: u64,
    pub image: Arc<MetadataImage>,
    /// Every topic (and view) with the logs of its partitions placed here.
    pub topics: Arc<BTreeMap<String, Arc<Topic>>>,
    /// The partitions this broker leads in this view, with their terms.
    pub leaders: Arc<Leaders>,
    node_id: i32,
    /// This broker is cut off from the controller quorum: it leads
    /// nothing, whatever the (stale) image says (see `crate::liveness`).
    cut_off: bool,
}

impl ClusterView {
    /// Before anything is applied: no topics, no leaderships.
    pub fn empty(node_id: i32) -> ClusterView {
        ClusterView {
            applied_index: 0,
            image: Arc::default(),
            topics: Arc::default(),
            leaders: Arc::default(),
            node_id,
            cut_off: false,
        }
    }

    pub fn new(
        node_id: i32,
        applied_index: u64,
        image: Arc<MetadataImage>,
        topics: Arc<BTreeMap<String, Arc<Topic>>>,
        leaders: Arc<Leaders>,
        cut_off: bool,
    ) -> ClusterView {
        ClusterView {
            applied_index,
            image,
            topics,
            leaders,
            node_id,
            cut_off,
        }
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// Cut off from the controller quorum: the image's leaderships naming
    /// this broker are stale, and it does not act on them.
    pub fn cut_off(&self) -> bool {
        self.cut_off
    }

    /// The leader clients are told about: none where this broker, cut off,
    /// is named (another broker has probably been elected by now).
    pub fn advertised_leader(&self, state: &PartitionImage) -> i32 {
        if self.cut_off && state.leader == self.node_id {
            NO_LEADER
        } else {
            state.leader
        }
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<Topic>> {
        self.topics.get(name)
    }

    /// The cluster's id, agreed through the quorum (empty before the first
    /// broker has proposed one).
    pub fn cluster_id(&self) -> &str {
        self.image.cluster_id.as_deref().unwrap_or_default()
    }

    /// Leader, ISR and epochs of a partition in the image.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        self.image.partition(topic, partition)
    }

    /// This broker's leader state of a partition, if it leads it here.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<&Arc<LeaderState>> {
        let index = usize::try_from(partition).ok()?;
        self.leaders.get(topic)?.get(index)?.as_ref()
    }

    /// The leader state a client reads or writes `topic`-`partition`
    /// through (a view's partitions are its source's), or the Kafka error
    /// that sends the client elsewhere.
    pub fn lead(&self, topic: &str, partition: i32) -> Result<&Arc<LeaderState>, ResponseError> {
        let data = self
            .topic(topic)
            .map(|t| t.meta.view_of().unwrap_or(topic))
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        if let Some(ls) = self.leader(data, partition) {
            return Ok(ls);
        }
        match self.partition(data, partition) {
            None => Err(ResponseError::UnknownTopicOrPartition),
            Some(p) if p.leader == NO_LEADER => Err(ResponseError::LeaderNotAvailable),
            // Named leader, but the term could not begin (logged by the
            // applier), or led elsewhere.
            Some(_) => Err(ResponseError::NotLeaderOrFollower),
        }
    }

    /// Registered, unfenced brokers: the only ones clients are sent to.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerImage> {
        self.image.brokers.values().filter(|b| !b.fenced)
    }

    /// The brokers clients are told about: every registered broker, fenced
    /// ones included, except this broker while it is cut off from the
    /// quorum. A fenced broker leads nothing, so clients have no reason to
    /// connect to it, but dropping it from the list in the same answer that
    /// moves its leaderships makes librdkafka decommission it mid-move and
    /// lose the partition's new leader until its next topic scan (a second
    /// later). A client that finds the broker it talks to gone from the
    /// list, on the other hand, drops it and asks the others: that is what
    /// a cut-off broker wants (librdkafka keeps asking the broker it is
    /// connected to otherwise, and would never learn the new leaders).
    /// Each broker's address on `listener` (the one the asking client
    /// connected to); brokers without that listener are left out.
    pub fn advertised_brokers<'a>(
        &'a self,
        listener: &'a str,
    ) -> impl Iterator<Item = Advertised<'a>> {
        let hide = self.cut_off.then_some(self.node_id);
        self.image
            .brokers
            .values()
            .filter(move |b| Some(b.id) != hide)
            .filter_map(move |b| {
                let (host, port) = b.endpoint(listener)?;
                Some(Advertised {
                    id: b.id,
                    host,
                    port,
                })
            })
    }

    /// Ids of the live brokers, sorted: where new replicas may go.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.image.live_brokers()
    }

    /// A live broker by id.
    pub fn live_broker(&self, id: i32) -> Option<&BrokerImage> {
        self.image.brokers.get(&id).filter(|b| !b.fenced)
    }
}

/// Where the applier publishes views and everyone else takes them.
pub struct Views {
    tx: watch::Sender<Arc<ClusterView>>,
}

impl Views {
    pub fn new(node_id: i32) -> Views {
        Views {
            tx: watch::Sender::new(Arc::new(ClusterView::empty(node_id))),
        }
    }

    /// The latest published view: take it once per request.
    pub fn current(&self) -> Arc<ClusterView> {
        self.tx.borrow().clone()
    }

    /// Called by the applier only.
    pub fn publish(&self, view: ClusterView) {
        self.tx.send_replace(Arc::new(view));
    }

    /// Waits until a view reflecting quorum index `index` (or later) is
    /// published; `None` on timeout.
    pub async fn wait_for(&self, index: u64, timeout: Duration) -> Option<Arc<ClusterView>> {
        let mut rx = self.tx.subscribe();
        let wait = rx.wait_for(|v| v.applied_index >= index);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// This broker's leader state of `topic`-`partition` for a write: from
    /// `view`, or, when the quorum has already committed an image naming
    /// this broker leader that the applier is still applying, from the
    /// first view that has it (waiting up to two seconds). Clients learn of
    /// a new leader from any broker's metadata, often before the leader
    /// itself has applied it; refusing them there would answer one of
    /// several pipelined batches NOT_LEADER and the next one out of order.
    pub async fn leader_for_write(
        &self,
        quorum: &Quorum,
        view: &ClusterView,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<LeaderState>, ResponseError> {
        let refused = match view.lead(topic, partition) {
            Ok(ls) if ls.is_current() => return Ok(ls.clone()),
            Ok(_) => ResponseError::NotLeaderOrFollower,
            Err(e) => e,
        };
        let latest = quorum.view();
        let named = latest
            .image
            .partition(topic, partition)
            .is_some_and(|p| p.leader == view.node_id());
        if !named || latest.applied_index <= view.applied_index {
            return Err(refused);
        }
        let newer = self
            .wait_for(latest.applied_index, CATCH_UP)
            .await
            .ok_or(refused)?;
        newer
            .lead(topic, partition)
            .ok()
            .filter(|ls| ls.is_current())
            .cloned()
            .ok_or(refused)
    }

    /// Wakes on every published view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.tx.subscribe()
    }
}

/// A broker as a client on some listener is told about it.
pub struct Advertised<'a> {
    pub id: i32,
    pub host: &'a str,
    pub port: i32,
}
