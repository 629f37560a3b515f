//! The group coordinator (Kafka's classic rebalance protocol): membership,
//! generations, the Empty → PreparingRebalance → CompletingRebalance →
//! Stable state machine, static members, session and rebalance timeouts,
//! and committed offsets (persisted through `store`).
//!
//! All group state sits behind one `std::sync::Mutex` that is never held
//! across an `.await`: handlers that must wait (JoinGroup until the
//! rebalance completes, SyncGroup until the leader assigns) park a oneshot
//! sender in the member and await the receiver after unlocking. A ticker
//! (`tick`) fires the time-based transitions.

pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use store::{Change, GroupValue, OffsetStore, PersistedMember};
pub use store::{CommittedOffset, OFFSETS_TOPIC};

/// The broker coordinating `group` in `view`: the leader of the offsets
/// partition the group id hashes to.
pub fn coordinator_of<'a>(
    view: &'a crate::view::ClusterView,
    group: &str,
) -> Option<&'a sluice_metadata::image::BrokerImage> {
    let offsets = view.image.topics.get(OFFSETS_TOPIC)?;
    let p = store::partition_for(group, offsets.partitions.len());
    view.live_broker(offsets.partitions.get(p)?.leader)
}

/// A topic's partitions with their committed offsets, if any.
pub type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);

/// Kafka's offset.metadata.max.bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Wait this long after the first member joins an empty group before
    /// completing the rebalance, so members starting together share one
    /// rebalance (Kafka's group.initial.rebalance.delay.ms).
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_millis(3000),
            min_session_timeout_ms: 1000,
            max_session_timeout_ms: 1_800_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// Everything a JoinGroup response carries.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    fn error(e: ResponseError, member_id: String) -> JoinOutcome {
        JoinOutcome {
            error: Some(e),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id,
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub error: Option<ResponseError>,
    pub assignment: Bytes,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
}

impl SyncOutcome {
    fn error(e: ResponseError) -> SyncOutcome {
        SyncOutcome {
            error: Some(e),
            assignment: Bytes::new(),
            protocol_type: None,
            protocol_name: None,
        }
    }
}

pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ clients expect MEMBER_ID_REQUIRED on their first join.
    pub require_known_member_id: bool,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
    heartbeat_deadline: Instant,
    /// Order of joining, to pick a stable leader.
    joined_seq: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// The persisted changes of committing `offsets`.
fn commit_changes(offsets: &[(String, i32, CommittedOffset)]) -> Vec<Change> {
    offsets
        .iter()
        .map(|(t, p, v)| Change::Commit {
            topic: t.clone(),
            partition: *p,
            value: v.clone(),
        })
        .collect()
}

struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join.
    pending: HashMap<String, Instant>,
    static_members: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    /// End of the initial delay of a rebalance that started from Empty.
    delay_deadline: Option<Instant>,
    offsets: HashMap<(String, i32), CommittedOffset>,
    /// Offsets committed in transactions not ended yet, by producer id
    /// (TxnOffsetCommit): they count once the commit marker is written.
    txn_offsets: HashMap<i64, HashMap<(String, i32), CommittedOffset>>,
    /// Persisted as existing (has a group record in the offsets topic).
    persisted: bool,
    /// Emptied since its last persisted Stable snapshot; the timer task
    /// writes the empty state so a restart does not resurrect members.
    needs_snapshot: bool,
}

impl Group {
    /// A group as the offsets topic last described it.
    fn from_loaded(id: String, g: store::LoadedGroup) -> Group {
        let mut group = Group::new(id);
        group.protocol_type = g.protocol_type;
        group.persisted = group.protocol_type.is_some();
        group.offsets = g.offsets;
        group.txn_offsets = g.txn_offsets;
        if let Some(meta) = g.metadata.filter(|m| !m.members.is_empty()) {
            group.restore(meta);
        }
        group
    }

    fn new(id: String) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline: None,
            delay_deadline: None,
            offsets: HashMap::new(),
            txn_offsets: HashMap::new(),
            persisted: false,
            needs_snapshot: false,
        }
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Protocols every member supports, in the first member's order of preference.
    fn select_protocol(&self) -> Option<String> {
        let mut members = self.members.values();
        let first = members.next()?;
        let common: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(x, _)| x == *n))
            })
            .collect();
        // Vote: each member picks its most preferred common protocol.
        let mut votes: HashMap<&String, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| common.contains(&n)) {
                *votes.entry(n).or_default() += 1;
            }
        }
        common
            .iter()
            .max_by_key(|n| {
                (
                    votes.get(*n).copied().unwrap_or(0),
                    std::cmp::Reverse(common.iter().position(|x| x == *n)),
                )
            })
            .map(|n| (*n).clone())
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(n, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(x, _)| x == n))
        })
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Starts (or continues) a rebalance: everyone must rejoin.
    fn prepare_rebalance(&mut self, delay: Duration, why: &str) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncOutcome::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let now = Instant::now();
        if self.state == GroupState::Empty && !delay.is_zero() {
            self.delay_deadline = Some(now + delay);
        }
        if self.state != GroupState::PreparingRebalance {
            tracing::info!(group = %self.id, generation = self.generation, reason = why, "preparing rebalance");
            self.rebalance_deadline = Some(now + self.rebalance_timeout());
        }
        self.state = GroupState::PreparingRebalance;
    }

    fn remove_member(&mut self, id: &str) -> Option<Member> {
        let m = self.members.remove(id)?;
        if let Some(i) = &m.instance_id
            && self.static_members.get(i).is_some_and(|x| x == id)
        {
            self.static_members.remove(i);
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        Some(m)
    }

    /// Completes the join phase if every member rejoined (and any initial
    /// delay passed) or the rebalance timeout expired. Returns whether a new
    /// generation started.
    fn maybe_complete_join(&mut self, now: Instant) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let timed_out = self.rebalance_deadline.is_some_and(|d| now >= d);
        let delay_over = self.delay_deadline.is_none_or(|d| now >= d);
        if !(timed_out || (self.all_joined() && delay_over && !self.members.is_empty())) {
            if self.members.is_empty() {
                self.reset_to_empty();
            }
            return false;
        }
        let laggards: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in laggards {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
            self.remove_member(&id);
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.reset_to_empty();
            return true;
        }
        self.protocol = self.select_protocol();
        if self.leader.is_none() {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        // Members (above all the leader) must sync within the rebalance
        // timeout, or the group would wait for an assignment forever.
        self.rebalance_deadline = Some(now + self.rebalance_timeout());
        self.delay_deadline = None;
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let all: Vec<(String, Option<String>, Bytes)> = self
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.metadata_for(&protocol),
                )
            })
            .collect();
        for m in self.members.values_mut() {
            m.heartbeat_deadline = now + m.session_timeout;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinOutcome {
                    error: None,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: Some(protocol.clone()),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members: if m.id == leader {
                        all.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(), protocol = %protocol, "rebalance complete, awaiting assignment");
        true
    }

    /// What to persist when the group becomes Stable.
    fn snapshot(&self) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| PersistedMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    metadata: m.metadata_for(&protocol).to_vec(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        }
    }

    /// Reinstates a Stable group from its snapshot after a restart. Members
    /// get a fresh session timeout to show up; those that do not expire.
    fn restore(&mut self, v: GroupValue) {
        let now = Instant::now();
        let protocol = v.protocol.clone().unwrap_or_default();
        self.generation = v.generation;
        self.protocol = v.protocol;
        self.leader = v.leader;
        self.state = GroupState::Stable;
        for (seq, m) in v.members.into_iter().enumerate() {
            if let Some(i) = &m.instance_id {
                self.static_members.insert(i.clone(), m.id.clone());
            }
            let session = Duration::from_millis(m.session_timeout_ms);
            self.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: session,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                    protocols: vec![(protocol.clone(), Bytes::from(m.metadata))],
                    assignment: Bytes::from(m.assignment),
                    join_waiter: None,
                    sync_waiter: None,
                    heartbeat_deadline: now + session,
                    joined_seq: seq as u64,
                },
            );
        }
    }

    fn reset_to_empty(&mut self) {
        if self.persisted && self.state != GroupState::Empty {
            self.needs_snapshot = true;
        }
        self.state = GroupState::Empty;
        self.protocol = None;
        self.leader = None;
        self.rebalance_deadline = None;
        self.delay_deadline = None;
    }
}

/// Counters the coordinator reports to the metrics module.
#[derive(Default)]
pub struct GroupStats {
    pub rebalances: std::sync::atomic::AtomicU64,
    pub commits: std::sync::atomic::AtomicU64,
}

pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    /// Offsets partitions whose groups are loaded here, with the leader
    /// epoch they were loaded in. A group is coordinated here while its
    /// partition is led here in that same epoch.
    loaded: Mutex<HashMap<usize, i32>>,
    store: OffsetStore,
    config: GroupConfig,
    next_seq: std::sync::atomic::AtomicU64,
    pub stats: GroupStats,
}

/// A point-in-time view for DescribeGroups and metrics.
pub struct GroupSummary {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

fn new_member_id(client_id: &str) -> String {
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl GroupCoordinator {
    /// A coordinator with no groups yet: `refresh_ownership` loads those
    /// of the offsets partitions this broker leads.
    pub fn open(store: OffsetStore, config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            store,
            config,
            next_seq: Default::default(),
            stats: GroupStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this broker coordinates `group` now: the leader of its
    /// offsets partition, with the groups of that leadership loaded.
    pub fn coordination(&self, group: &str) -> Result<(), ResponseError> {
        let p = store::partition_for(group, self.store.partition_count());
        let Some(epoch) = self.store.leader_epoch(p) else {
            return Err(ResponseError::NotCoordinator);
        };
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match loaded.get(&p) {
            Some(e) if *e == epoch => Ok(()),
            // Just became leader: the applier is still reading the log.
            _ => Err(ResponseError::CoordinatorLoadInProgress),
        }
    }

    /// Follows offsets-partition leadership (called by the metadata
    /// applier after each view): groups of partitions this broker stopped
    /// leading are dropped (their members rejoin at the new coordinator);
    /// groups of partitions it started leading, or leads in a new epoch,
    /// are loaded from its replica of the log.
    pub fn refresh_ownership(&self) {
        let count = self.store.partition_count();
        let now: HashMap<usize, i32> = (0..count)
            .filter_map(|p| self.store.leader_epoch(p).map(|e| (p, e)))
            .collect();
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == now {
            return;
        }
        let gained: Vec<usize> = now
            .iter()
            .filter(|(p, e)| loaded.get(p) != Some(e))
            .map(|(p, _)| *p)
            .collect();
        let groups_of = match self.store.load_partitions(gained.iter().copied()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, partitions = ?gained, "loading groups of newly led offsets partitions failed");
                return;
            }
        };
        let mut groups = self.lock();
        let before = groups.len();
        // Groups whose partition is not led here, or was just (re)loaded.
        groups.retain(|id, _| {
            let p = store::partition_for(id, count);
            now.contains_key(&p) && !gained.contains(&p)
        });
        let dropped = before - groups.len();
        let added = groups_of.len();
        for (id, g) in groups_of {
            groups.insert(id.clone(), Group::from_loaded(id, g));
        }
        drop(groups);
        if dropped > 0 || !gained.is_empty() {
            tracing::info!(gained = ?gained, loaded_groups = added, dropped_groups = dropped, "group coordination moved");
        }
        *loaded = now;
    }

    pub async fn join(&self, req: JoinRequest) -> JoinOutcome {
        if let Err(e) = self.coordination(&req.group_id) {
            return JoinOutcome::error(e, req.member_id);
        }
        let group = req.group_id.clone();
        let (rx, persist) = match self.join_locked(req) {
            Ok(x) => x,
            Err(outcome) => return *outcome,
        };
        if let Err(e) = self.store.persist(&group, &persist).await {
            tracing::error!(group = %group, error = %e, "persisting group change failed");
        }
        match rx.await {
            Ok(outcome) => outcome,
            // The group was deleted or the coordinator dropped the waiter.
            Err(_) => JoinOutcome::error(ResponseError::UnknownMemberId, String::new()),
        }
    }

    #[allow(clippy::type_complexity)]
    fn join_locked(
        &self,
        req: JoinRequest,
    ) -> Result<(oneshot::Receiver<JoinOutcome>, Vec<Change>), Box<JoinOutcome>> {
        let fail = |e| Err(Box::new(JoinOutcome::error(e, req.member_id.clone())));
        if req.group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(req.group_id.clone()));
        if !group.supports_protocols(&req.protocol_type, &req.protocols) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let mut persist = Vec::new();
        if !group.persisted {
            group.persisted = true;
            persist.push(Change::GroupCreated {
                protocol_type: req.protocol_type.clone(),
            });
        }
        if group.members.is_empty() {
            group.protocol_type = Some(req.protocol_type.clone());
        }
        let (tx, rx) = oneshot::channel();
        let session = Duration::from_millis(req.session_timeout_ms as u64);
        let rebalance =
            Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64);
        let delay = self.config.initial_rebalance_delay.min(rebalance);
        let mut member_id = req.member_id.clone();

        if member_id.is_empty() {
            if let Some(instance) = &req.instance_id {
                let previous = group.static_members.get(instance).cloned();
                let leader_before = group.leader.clone();
                if let Some((old_id, mut old)) =
                    previous.and_then(|id| group.remove_member(&id).map(|m| (id, m)))
                {
                    // A static member restarted: it takes over its old
                    // identity (and partitions) under a new member id.
                    if let Some(w) = old.join_waiter.take() {
                        let _ = w.send(JoinOutcome::error(
                            ResponseError::FencedInstanceId,
                            old_id.clone(),
                        ));
                    }
                    if let Some(w) = old.sync_waiter.take() {
                        let _ = w.send(SyncOutcome::error(ResponseError::FencedInstanceId));
                    }
                    let new_id = new_member_id(&req.client_id);
                    let was_leader = leader_before.as_deref() == Some(old_id.as_str());
                    let same_protocols = old.protocols == req.protocols;
                    old.id = new_id.clone();
                    old.client_id = req.client_id.clone();
                    old.client_host = req.client_host.clone();
                    old.session_timeout = session;
                    old.rebalance_timeout = rebalance;
                    old.protocols = req.protocols.clone();
                    old.heartbeat_deadline = now + session;
                    group
                        .static_members
                        .insert(instance.clone(), new_id.clone());
                    if was_leader {
                        group.leader = Some(new_id.clone());
                    }
                    if group.state == GroupState::Stable && same_protocols {
                        group.members.insert(new_id.clone(), old);
                        let protocol = group.protocol.clone().unwrap_or_default();
                        let leader = group.leader.clone().unwrap_or_default();
                        let members = if leader == new_id {
                            group
                                .members
                                .values()
                                .map(|m| {
                                    (
                                        m.id.clone(),
                                        m.instance_id.clone(),
                                        m.metadata_for(&protocol),
                                    )
                                })
                                .collect()
                        } else {
                            Vec::new()
                        };
                        tracing::info!(group = %group.id, instance = %instance, member = %new_id, "static member rejoined without rebalance");
                        persist.push(Change::GroupMetadata(group.snapshot()));
                        let _ = tx.send(JoinOutcome {
                            error: None,
                            generation: group.generation,
                            protocol_type: group.protocol_type.clone(),
                            protocol_name: Some(protocol),
                            leader,
                            member_id: new_id,
                            members,
                        });
                        return Ok((rx, persist));
                    }
                    old.join_waiter = Some(tx);
                    group.members.insert(new_id, old);
                    group.prepare_rebalance(
                        Duration::ZERO,
                        "static member rejoined with new metadata",
                    );
                    group.maybe_complete_join(now);
                    return Ok((rx, persist));
                }
            } else if req.require_known_member_id {
                let id = new_member_id(&req.client_id);
                group.pending.insert(id.clone(), now + session);
                return fail_with_id(ResponseError::MemberIdRequired, id);
            }
            member_id = new_member_id(&req.client_id);
        } else if group.pending.remove(&member_id).is_some() {
            // Second round of the MEMBER_ID_REQUIRED handshake.
        } else if let Some(m) = group.members.get_mut(&member_id) {
            if m.instance_id != req.instance_id {
                return fail(ResponseError::FencedInstanceId);
            }
            let unchanged = m.protocols == req.protocols;
            m.protocols = req.protocols.clone();
            m.session_timeout = session;
            m.rebalance_timeout = rebalance;
            m.heartbeat_deadline = now + session;
            let is_leader = group.leader.as_deref() == Some(member_id.as_str());
            // As Kafka's coordinator: the same metadata again while the
            // group awaits its assignment (the member missed its JoinGroup
            // answer, e.g. a client-side timeout), or from a follower of a
            // stable group, gets the current generation back instead of a
            // new rebalance. (Rebalancing there made a member that kept
            // rejoining restart the group every few hundred ms, and the
            // other member never got an assignment.)
            let current = unchanged
                && match group.state {
                    GroupState::CompletingRebalance => true,
                    GroupState::Stable => !is_leader,
                    _ => false,
                };
            if current {
                let protocol = group.protocol.clone().unwrap_or_default();
                let members = if is_leader {
                    group
                        .members
                        .values()
                        .map(|m| {
                            (
                                m.id.clone(),
                                m.instance_id.clone(),
                                m.metadata_for(&protocol),
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let _ = tx.send(JoinOutcome {
                    error: None,
                    generation: group.generation,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: Some(protocol),
                    leader: group.leader.clone().unwrap_or_default(),
                    member_id,
                    members,
                });
                return Ok((rx, persist));
            }
            if let Some(old) = m.join_waiter.replace(tx) {
                let _ = old.send(JoinOutcome::error(
                    ResponseError::UnknownMemberId,
                    member_id.clone(),
                ));
            }
            if group.state != GroupState::PreparingRebalance {
                let why = format!(
                    "member {member_id} rejoined ({}{})",
                    if unchanged {
                        "same metadata"
                    } else {
                        "new metadata"
                    },
                    if is_leader { ", the leader" } else { "" }
                );
                group.prepare_rebalance(delay, &why);
            }
            group.maybe_complete_join(now);
            return Ok((rx, persist));
        } else {
            return fail(ResponseError::UnknownMemberId);
        }

        // A brand-new member.
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(instance) = &req.instance_id {
            group
                .static_members
                .insert(instance.clone(), member_id.clone());
        }
        group.members.insert(
            member_id.clone(),
            Member {
                id: member_id.clone(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: session,
                rebalance_timeout: rebalance,
                protocols: req.protocols.clone(),
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                heartbeat_deadline: now + session,
                joined_seq: seq,
            },
        );
        if group.state != GroupState::PreparingRebalance {
            self.stats
                .rebalances
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        group.prepare_rebalance(delay, "new member joined");
        group.maybe_complete_join(now);
        Ok((rx, persist))
    }

    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        if let Err(e) = self.coordination(group_id) {
            return SyncOutcome::error(e);
        }
        let mut snapshot = None;
        let rx = {
            let mut groups = self.lock();
            let Some(group) = groups.get_mut(group_id) else {
                return SyncOutcome::error(ResponseError::UnknownMemberId);
            };
            let Some(member) = group.members.get(member_id) else {
                return SyncOutcome::error(ResponseError::UnknownMemberId);
            };
            if instance_id.is_some() && member.instance_id.as_deref() != instance_id {
                return SyncOutcome::error(ResponseError::FencedInstanceId);
            }
            if generation != group.generation {
                return SyncOutcome::error(ResponseError::IllegalGeneration);
            }
            let done = |g: &Group, a: Bytes| SyncOutcome {
                error: None,
                assignment: a,
                protocol_type: g.protocol_type.clone(),
                protocol_name: g.protocol.clone(),
            };
            match group.state {
                GroupState::Empty => return SyncOutcome::error(ResponseError::UnknownMemberId),
                GroupState::PreparingRebalance => {
                    return SyncOutcome::error(ResponseError::RebalanceInProgress);
                }
                GroupState::Stable => {
                    let a = member.assignment.clone();
                    return done(group, a);
                }
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            let is_leader = group.leader.as_deref() == Some(member_id);
            if let Some(m) = group.members.get_mut(member_id) {
                m.sync_waiter = Some(tx);
            }
            if is_leader {
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                for m in group.members.values_mut() {
                    m.assignment = given.remove(&m.id).unwrap_or_default();
                }
                group.state = GroupState::Stable;
                group.rebalance_deadline = None;
                let now = Instant::now();
                let (pt, pn) = (group.protocol_type.clone(), group.protocol.clone());
                for m in group.members.values_mut() {
                    m.heartbeat_deadline = now + m.session_timeout;
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncOutcome {
                            error: None,
                            assignment: m.assignment.clone(),
                            protocol_type: pt.clone(),
                            protocol_name: pn.clone(),
                        });
                    }
                }
                tracing::info!(group = %group.id, generation = group.generation, "group stable");
                snapshot = Some(group.snapshot());
            }
            rx
        };
        if let Some(v) = snapshot {
            self.persist_change(group_id, Change::GroupMetadata(v))
                .await;
        }
        rx.await
            .unwrap_or_else(|_| SyncOutcome::error(ResponseError::RebalanceInProgress))
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Option<ResponseError> {
        if let Err(e) = self.coordination(group_id) {
            return Some(e);
        }
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let state = group.state;
        let current = group.generation;
        let Some(m) = group.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if instance_id.is_some() && m.instance_id.as_deref() != instance_id {
            return Some(ResponseError::FencedInstanceId);
        }
        if generation != current {
            return Some(ResponseError::IllegalGeneration);
        }
        m.heartbeat_deadline = Instant::now() + m.session_timeout;
        match state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            _ => None,
        }
    }

    /// LeaveGroup for one or more members; `member_id` may be empty when
    /// the instance id names a static member.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        self.coordination(group_id)?;
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        let mut results = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance_id) in members {
            let id = if member_id.is_empty() {
                instance_id
                    .as_ref()
                    .and_then(|i| group.static_members.get(i).cloned())
            } else {
                Some(member_id.clone())
            };
            let Some(id) = id.filter(|id| group.members.contains_key(id)) else {
                results.push(Some(ResponseError::UnknownMemberId));
                continue;
            };
            if let (Some(i), Some(m)) = (instance_id, group.members.get(&id))
                && m.instance_id.as_ref() != Some(i)
            {
                results.push(Some(ResponseError::FencedInstanceId));
                continue;
            }
            if let Some(mut m) = group.remove_member(&id) {
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(JoinOutcome::error(
                        ResponseError::UnknownMemberId,
                        id.clone(),
                    ));
                }
                tracing::info!(group = %group.id, member = %id, "member left");
            }
            removed = true;
            results.push(None);
        }
        if removed {
            self.after_removal(group);
        }
        Ok(results)
    }

    fn after_removal(&self, group: &mut Group) {
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.stats
                    .rebalances
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                group.prepare_rebalance(Duration::ZERO, "member left or expired");
                group.maybe_complete_join(Instant::now());
            }
            GroupState::PreparingRebalance => {
                group.maybe_complete_join(Instant::now());
            }
            GroupState::Empty => {}
        }
        if group.members.is_empty() && group.state != GroupState::PreparingRebalance {
            group.reset_to_empty();
        }
    }

    /// Fires time-based transitions: expired sessions, finished initial
    /// delays and rebalance timeouts. Called every ~100 ms.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.lock();
        for group in groups.values_mut() {
            group.pending.retain(|_, deadline| *deadline > now);
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && m.heartbeat_deadline <= now
                })
                .map(|m| m.id.clone())
                .collect();
            for id in &expired {
                tracing::info!(group = %group.id, member = %id, "session timed out; member removed");
                group.remove_member(id);
            }
            if !expired.is_empty() {
                self.after_removal(group);
            } else if group.state == GroupState::PreparingRebalance
                && group.maybe_complete_join(now)
            {
                // completed by delay or timeout
            } else if group.state == GroupState::CompletingRebalance
                && group.rebalance_deadline.is_some_and(|d| now >= d)
            {
                // Whoever did not send SyncGroup in time (the leader, since
                // the group is not Stable) is removed; the rest rebalance.
                let unsynced: Vec<String> = group
                    .members
                    .values()
                    .filter(|m| m.sync_waiter.is_none())
                    .map(|m| m.id.clone())
                    .collect();
                for id in &unsynced {
                    tracing::info!(group = %group.id, member = %id, "no SyncGroup within the rebalance timeout; member removed");
                    group.remove_member(id);
                }
                self.after_removal(group);
            }
        }
    }

    /// Groups that became Empty since their last snapshot, to persist.
    pub fn drain_snapshots(&self) -> Vec<(String, Change)> {
        let mut groups = self.lock();
        groups
            .values_mut()
            .filter_map(|g| {
                std::mem::take(&mut g.needs_snapshot)
                    .then(|| (g.id.clone(), Change::GroupMetadata(g.snapshot())))
            })
            .collect()
    }

    pub async fn persist_change(&self, group: &str, change: Change) {
        if let Err(e) = self.store.persist(group, &[change]).await {
            tracing::error!(group = %group, error = %e, "persisting group state failed");
        }
    }

    /// Validates an offset commit against the group's membership.
    fn check_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        let mut groups = self.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string()));
        if generation < 0 && member_id.is_empty() {
            // A commit from outside any generation (assign() consumers, tools).
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::IllegalGeneration)
            };
        }
        let Some(m) = group.members.get(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        if instance_id.is_some() && m.instance_id.as_deref() != instance_id {
            return Err(ResponseError::FencedInstanceId);
        }
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Commits offsets durably; `offsets` are already checked against topics.
    pub async fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<(), ResponseError> {
        self.coordination(group_id)?;
        self.check_commit(group_id, generation, member_id, instance_id)?;
        let mut changes = commit_changes(&offsets);
        let needs_group_record = {
            let mut groups = self.lock();
            match groups.get_mut(group_id) {
                Some(g) if !g.persisted => {
                    g.persisted = true;
                    if g.protocol_type.is_none() {
                        g.protocol_type = Some(String::new());
                    }
                    true
                }
                _ => false,
            }
        };
        if needs_group_record {
            changes.insert(
                0,
                Change::GroupCreated {
                    protocol_type: String::new(),
                },
            );
        }
        self.store.persist(group_id, &changes).await.map_err(|e| {
            tracing::error!(group = %group_id, error = %e, "offset commit not persisted");
            ResponseError::CoordinatorNotAvailable
        })?;
        let mut groups = self.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string()));
        for (t, p, v) in offsets {
            group.offsets.insert((t, p), v);
        }
        self.stats
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// TxnOffsetCommit: offsets committed in `producer`'s (id, epoch) open
    /// transaction, persisted in it; they count for the group once its
    /// commit marker reaches the offsets partition (`end_transaction`).
    /// As in Kafka, the generation and member are checked only when given.
    pub async fn txn_commit(
        &self,
        group_id: &str,
        producer: (i64, i16),
        generation: i32,
        member_id: &str,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<(), ResponseError> {
        self.coordination(group_id)?;
        {
            let groups = self.lock();
            if let Some(group) = groups.get(group_id) {
                if !member_id.is_empty() && !group.members.contains_key(member_id) {
                    return Err(ResponseError::UnknownMemberId);
                }
                if generation >= 0 && generation != group.generation {
                    return Err(ResponseError::IllegalGeneration);
                }
            }
        }
        let changes = commit_changes(&offsets);
        self.store
            .persist_in_transaction(group_id, &changes, producer)
            .await
            .map_err(|e| {
                tracing::error!(group = %group_id, error = %e, "transactional offset commit not persisted");
                ResponseError::CoordinatorNotAvailable
            })?;
        let mut groups = self.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string()));
        let pending = group.txn_offsets.entry(producer.0).or_default();
        for (t, p, v) in offsets {
            pending.insert((t, p), v);
        }
        Ok(())
    }

    /// A transaction marker was written to offsets partition `partition`:
    /// the offsets `producer_id` committed in that transaction, for the
    /// groups of that partition, now count (commit) or are dropped.
    pub fn end_transaction(&self, partition: usize, producer_id: i64, commit: bool) {
        let count = self.store.partition_count();
        let mut groups = self.lock();
        for group in groups
            .values_mut()
            .filter(|g| store::partition_for(&g.id, count) == partition)
        {
            let Some(pending) = group.txn_offsets.remove(&producer_id) else {
                continue;
            };
            if commit {
                group.offsets.extend(pending);
            }
        }
    }

    /// Whether a transaction not ended yet committed an offset for
    /// `topic`-`partition` in the group (OffsetFetch with require_stable
    /// then answers UNSTABLE_OFFSET_COMMIT, and the client asks again).
    pub fn has_pending_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.lock().get(group_id).is_some_and(|g| {
            g.txn_offsets
                .values()
                .any(|o| o.contains_key(&(topic.to_string(), partition)))
        })
    }

    /// Committed offsets of a group: all of them, or those asked for.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<TopicOffsets> {
        let groups = self.lock();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        match wanted {
            Some(w) => w
                .into_iter()
                .map(|(t, ps)| {
                    let parts = ps
                        .into_iter()
                        .map(|p| (p, offsets.and_then(|o| o.get(&(t.clone(), p)).cloned())))
                        .collect();
                    (t, parts)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<CommittedOffset>)>> =
                    BTreeMap::new();
                for ((t, p), v) in offsets.into_iter().flatten() {
                    by_topic
                        .entry(t.clone())
                        .or_default()
                        .push((*p, Some(v.clone())));
                }
                for v in by_topic.values_mut() {
                    v.sort_by_key(|(p, _)| *p);
                }
                by_topic.into_iter().collect()
            }
        }
    }

    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let groups = self.lock();
        let mut out: Vec<_> = groups
            .values()
            .filter(|g| g.persisted || !g.members.is_empty())
            .map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state,
                )
            })
            .collect();
        out.sort();
        out
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        let groups = self.lock();
        let g = groups
            .get(group_id)
            .filter(|g| g.persisted || !g.members.is_empty())?;
        let protocol = g.protocol.clone().unwrap_or_default();
        let stable = g.state == GroupState::Stable;
        Some(GroupSummary {
            group_id: g.id.clone(),
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .values()
                .map(|m| MemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        })
    }

    /// All groups' committed offsets, for lag metrics.
    pub fn all_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let groups = self.lock();
        groups
            .values()
            .flat_map(|g| {
                g.offsets
                    .iter()
                    .map(|((t, p), v)| (g.id.clone(), t.clone(), *p, v.offset))
            })
            .collect()
    }

    /// (state, members) per group, for metrics.
    pub fn states(&self) -> Vec<(String, GroupState, usize)> {
        self.lock()
            .values()
            .map(|g| (g.id.clone(), g.state, g.members.len()))
            .collect()
    }

    pub async fn delete_group(&self, group_id: &str) -> Result<(), ResponseError> {
        self.coordination(group_id)?;
        {
            let groups = self.lock();
            match groups.get(group_id) {
                None => return Err(ResponseError::GroupIdNotFound),
                Some(g) if !g.members.is_empty() => return Err(ResponseError::NonEmptyGroup),
                Some(g) if !g.persisted => return Err(ResponseError::GroupIdNotFound),
                Some(_) => {}
            }
        }
        self.store
            .persist(group_id, &[Change::GroupDeleted])
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        let mut groups = self.lock();
        if groups.get(group_id).is_some_and(|g| g.members.is_empty()) {
            groups.remove(group_id);
        }
        Ok(())
    }

    /// OffsetDelete: refuses partitions of topics an active member subscribes to.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        self.coordination(group_id)?;
        let (subscribed, results): (HashSet<String>, Vec<Option<ResponseError>>) = {
            let groups = self.lock();
            let Some(g) = groups
                .get(group_id)
                .filter(|g| g.persisted || !g.members.is_empty())
            else {
                return Err(ResponseError::GroupIdNotFound);
            };
            let subscribed = subscribed_topics(g);
            let results = partitions
                .iter()
                .map(|(t, _)| {
                    subscribed
                        .contains(t)
                        .then_some(ResponseError::GroupSubscribedToTopic)
                })
                .collect();
            (subscribed, results)
        };
        let changes: Vec<Change> = partitions
            .iter()
            .filter(|(t, _)| !subscribed.contains(t))
            .map(|(t, p)| Change::DeleteOffset {
                topic: t.clone(),
                partition: *p,
            })
            .collect();
        self.store
            .persist(group_id, &changes)
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        let mut groups = self.lock();
        if let Some(g) = groups.get_mut(group_id) {
            for (t, p) in partitions.iter().filter(|(t, _)| !subscribed.contains(t)) {
                g.offsets.remove(&(t.clone(), *p));
            }
        }
        Ok(results)
    }
}

fn fail_with_id(
    e: ResponseError,
    id: String,
) -> Result<(oneshot::Receiver<JoinOutcome>, Vec<Change>), Box<JoinOutcome>> {
    Err(Box::new(JoinOutcome::error(e, id)))
}

/// Topics the members' consumer-protocol subscriptions name.
fn subscribed_topics(g: &Group) -> HashSet<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut out = HashSet::new();
    if g.protocol_type.as_deref() != Some("consumer") {
        return out;
    }
    for m in g.members.values() {
        for (_, meta) in &m.protocols {
            let mut buf = meta.clone();
            if buf.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([buf[0], buf[1]]);
            let _ = bytes::Buf::get_i16(&mut buf);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)) {
                out.extend(sub.topics.iter().map(|t| t.to_string()));
            }
        }
    }
    out
}

pub type SharedCoordinator = Arc<GroupCoordinator>;

#[cfg(test)]
mod tests {
    use super::*;

    /// SyncGroup of `generation` from follower `b` and leader `a`, who
    /// assigns "A" to itself and "B" to `b`: each gets its own.
    async fn sync_pair(c: &Arc<GroupCoordinator>, generation: i32, a: &str, b: &str) {
        let c2 = c.clone();
        let bid = b.to_string();
        let follower =
            tokio::spawn(async move { c2.sync("g", generation, &bid, None, vec![]).await });
        let leader = c
            .sync(
                "g",
                generation,
                a,
                None,
                vec![
                    (a.to_string(), Bytes::from_static(b"A")),
                    (b.to_string(), Bytes::from_static(b"B")),
                ],
            )
            .await;
        assert_eq!(leader.assignment, Bytes::from_static(b"A"));
        assert_eq!(
            follower.await.expect("sync").assignment,
            Bytes::from_static(b"B")
        );
    }

    fn coordinator(dir: &std::path::Path, delay_ms: u64) -> Arc<GroupCoordinator> {
        let c = GroupCoordinator::open(
            OffsetStore::new(crate::internal_log::LocalLogs::open(dir, 2)),
            GroupConfig {
                initial_rebalance_delay: Duration::from_millis(delay_ms),
                ..GroupConfig::default()
            },
        );
        c.refresh_ownership();
        Arc::new(c)
    }

    fn join_req(member: &str, instance: Option<&str>, session_ms: i32) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member.into(),
            instance_id: instance.map(String::from),
            client_id: "c".into(),
            client_host: "127.0.0.1".into(),
            session_timeout_ms: session_ms,
            rebalance_timeout_ms: session_ms,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"sub"))],
            require_known_member_id: true,
        }
    }

    /// Full v4+ join: MEMBER_ID_REQUIRED round trip, then the real join.
    async fn join_new(
        c: &Arc<GroupCoordinator>,
        instance: Option<&str>,
        session_ms: i32,
    ) -> JoinOutcome {
        let first = c.join(join_req("", instance, session_ms)).await;
        if instance.is_some() {
            return first;
        }
        assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
        c.join(join_req(&first.member_id, None, session_ms)).await
    }

    #[tokio::test]
    async fn two_members_share_one_generation_and_get_assignments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = coordinator(dir.path(), 0);
        let a = join_new(&c, None, 10_000).await;
        assert_eq!(a.error, None);
        assert_eq!(a.generation, 1);
        assert_eq!(a.leader, a.member_id);
        assert_eq!(a.members.len(), 1);
        // Sync as leader: stable with one member.
        let s = c
            .sync(
                "g",
                1,
                &a.member_id,
                None,
                vec![(a.member_id.clone(), Bytes::from_static(b"p0"))],
            )
            .await;
        assert_eq!(s.assignment, Bytes::from_static(b"p0"));
        // A second member triggers a rebalance; the first learns via heartbeat and rejoins.
        let c2 = c.clone();
        let b_task = tokio::spawn(async move { join_new(&c2, None, 10_000).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id, None),
            Some(ResponseError::RebalanceInProgress)
        );
        let a2 = c.join(join_req(&a.member_id, None, 10_000)).await;
        let b = b_task.await.expect("join task");
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(
            a2.leader, a.member_id,
            "the leader is kept across rebalances"
        );
        assert_eq!(a2.members.len(), 2);
        assert!(b.members.is_empty(), "followers do not get member metadata");
        sync_pair(&c, 2, &a.member_id, &b.member_id).await;
        assert_eq!(c.heartbeat("g", 2, &b.member_id, None), None);
        assert_eq!(
            c.heartbeat("g", 1, &b.member_id, None),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            c.heartbeat("g", 2, "nobody", None),
            Some(ResponseError::UnknownMemberId)
        );
    }

    /// A member that rejoins with the same metadata while the group awaits
    /// its assignment (it missed its JoinGroup answer) gets the current
    /// generation back, the leader with every member's metadata, and the
    /// group completes; different metadata starts a new rebalance. As
    /// Kafka's coordinator does.
    #[tokio::test]
    async fn rejoining_with_the_same_metadata_while_awaiting_assignment_keeps_the_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = coordinator(dir.path(), 0);
        let a = join_new(&c, None, 10_000).await;
        c.sync(
            "g",
            1,
            &a.member_id,
            None,
            vec![(a.member_id.clone(), Bytes::from_static(b"p0"))],
        )
        .await;
        let c2 = c.clone();
        let b_task = tokio::spawn(async move { join_new(&c2, None, 10_000).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let a2 = c.join(join_req(&a.member_id, None, 10_000)).await;
        let b = b_task.await.expect("join task");
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(
            c.describe("g").expect("group").state,
            GroupState::CompletingRebalance
        );
        // Both rejoin with what they sent before: same generation, no
        // rebalance; the leader gets the members again.
        // (Answered at once: a new rebalance would hold the first until the
        // other rejoined.)
        let at_once = |member: &str| {
            let join = c.join(join_req(member, None, 10_000));
            async move {
                tokio::time::timeout(Duration::from_secs(5), join)
                    .await
                    .expect("a rejoin with the same metadata is answered at once")
            }
        };
        let b_again = at_once(&b.member_id).await;
        let a_again = at_once(&a.member_id).await;
        assert_eq!((b_again.error, b_again.generation), (None, 2));
        assert!(b_again.members.is_empty());
        assert_eq!((a_again.error, a_again.generation), (None, 2));
        assert_eq!(a_again.members.len(), 2);
        assert_eq!(
            c.describe("g").expect("group").state,
            GroupState::CompletingRebalance
        );
        sync_pair(&c, 2, &a.member_id, &b.member_id).await;
        assert_eq!(c.describe("g").expect("group").state, GroupState::Stable);
        // New metadata (another subscription) does start a rebalance.
        let mut changed = join_req(&b.member_id, None, 10_000);
        changed.protocols = vec![("range".into(), Bytes::from_static(b"other"))];
        let c4 = c.clone();
        let b_task = tokio::spawn(async move { c4.join(changed).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            c.describe("g").expect("group").state,
            GroupState::PreparingRebalance
        );
        let a3 = c.join(join_req(&a.member_id, None, 10_000)).await;
        assert_eq!(
            (a3.generation, b_task.await.expect("join").generation),
            (3, 3)
        );
    }

    #[tokio::test]
    async fn expired_session_removes_member_and_rebalances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = coordinator(dir.path(), 0);
        let a = join_new(&c, None, 1000).await;
        c.sync("g", a.generation, &a.member_id, None, vec![]).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.tick();
        let d = c.describe("g").expect("group");
        assert_eq!(d.state, GroupState::Empty);
        assert!(d.members.is_empty());
        assert_eq!(
            c.heartbeat("g", a.generation, &a.member_id, None),
            Some(ResponseError::UnknownMemberId)
        );
    }

    #[tokio::test]
    async fn static_member_restart_keeps_assignment_without_rebalance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = coordinator(dir.path(), 0);
        let a = join_new(&c, Some("i1"), 10_000).await;
        assert_eq!(a.error, None);
        c.sync(
            "g",
            a.generation,
            &a.member_id,
            None,
            vec![(a.member_id.clone(), Bytes::from_static(b"mine"))],
        )
        .await;
        let rebalances = c
            .stats
            .rebalances
            .load(std::sync::atomic::Ordering::Relaxed);
        // Restart: same instance id, no member id.
        let again = c.join(join_req("", Some("i1"), 10_000)).await;
        assert_eq!(again.error, None);
        assert_eq!(again.generation, a.generation, "no new generation");
        assert_ne!(again.member_id, a.member_id);
        let s = c
            .sync("g", again.generation, &again.member_id, Some("i1"), vec![])
            .await;
        assert_eq!(s.assignment, Bytes::from_static(b"mine"));
        assert_eq!(
            c.stats
                .rebalances
                .load(std::sync::atomic::Ordering::Relaxed),
            rebalances
        );
        // The old incarnation is fenced.
        assert_eq!(
            c.heartbeat("g", a.generation, &a.member_id, None),
            Some(ResponseError::UnknownMemberId)
        );
    }

    #[tokio::test]
    async fn commits_are_checked_persisted_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let off = |o| CommittedOffset {
            offset: o,
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_ms: 0,
        };
        {
            let c = coordinator(dir.path(), 0);
            // Standalone commit (no generation) into an empty group.
            c.commit("g", -1, "", None, vec![("t".into(), 0, off(5))])
                .await
                .expect("commit");
            let a = join_new(&c, None, 10_000).await;
            assert_eq!(
                c.commit("g", -1, "", None, vec![("t".into(), 0, off(6))])
                    .await,
                Err(ResponseError::IllegalGeneration),
                "a group with members refuses commits from outside"
            );
            assert_eq!(
                c.commit(
                    "g",
                    a.generation,
                    &a.member_id,
                    None,
                    vec![("t".into(), 0, off(6))]
                )
                .await,
                Err(ResponseError::RebalanceInProgress),
                "awaiting SyncGroup"
            );
            c.sync("g", a.generation, &a.member_id, None, vec![]).await;
            c.commit(
                "g",
                a.generation,
                &a.member_id,
                None,
                vec![("t".into(), 0, off(7))],
            )
            .await
            .expect("commit");
            assert_eq!(c.delete_group("g").await, Err(ResponseError::NonEmptyGroup));
            c.leave("g", &[(a.member_id.clone(), None)]).expect("leave");
            for (g, change) in c.drain_snapshots() {
                c.persist_change(&g, change).await;
            }
        }
        let c = coordinator(dir.path(), 0);
        let got = c.fetch_offsets("g", None);
        assert_eq!(got[0].1[0].1.as_ref().map(|v| v.offset), Some(7));
        assert_eq!(c.list().len(), 1);
        c.delete_group("g").await.expect("delete empty group");
        assert_eq!(
            c.delete_group("g").await,
            Err(ResponseError::GroupIdNotFound)
        );
        let c = coordinator(dir.path(), 0);
        assert!(c.list().is_empty(), "deletion is persisted");
    }

    #[tokio::test]
    async fn initial_delay_lets_simultaneous_members_share_the_first_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = coordinator(dir.path(), 300);
        let c1 = c.clone();
        let c2 = c.clone();
        let ticker = {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    c.tick();
                }
            })
        };
        let (a, b) = tokio::join!(join_new(&c1, None, 10_000), join_new(&c2, None, 10_000));
        ticker.abort();
        assert_eq!((a.generation, b.generation), (1, 1));
        assert_eq!(a.leader, b.leader);
    }

    #[tokio::test]
    async fn stable_group_survives_coordinator_restart_without_rebalance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, generation) = {
            let c = coordinator(dir.path(), 0);
            let a = join_new(&c, Some("i1"), 10_000).await;
            c.sync(
                "g",
                a.generation,
                &a.member_id,
                None,
                vec![(a.member_id.clone(), Bytes::from_static(b"mine"))],
            )
            .await;
            (a.member_id, 1)
        };
        let c = coordinator(dir.path(), 0);
        let d = c.describe("g").expect("restored");
        assert_eq!(d.state, GroupState::Stable);
        assert_eq!(
            c.heartbeat("g", generation, &a, None),
            None,
            "same member, same generation"
        );
        let s = c.sync("g", generation, &a, None, vec![]).await;
        assert_eq!(s.assignment, Bytes::from_static(b"mine"));
        // The restored static mapping still lets the instance take over.
        let again = c.join(join_req("", Some("i1"), 10_000)).await;
        assert_eq!(again.generation, generation);
    }
}
