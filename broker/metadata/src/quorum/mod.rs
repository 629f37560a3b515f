//! The controller quorum: every broker of the cluster is a voter of one
//! openraft group whose log holds metadata `Command`s. The Raft leader is
//! the controller. Brokers read the applied image locally and send changes
//! through `propose`, which forwards to the controller when needed.
//!
//! Membership: brokers starting together on empty disks found the group
//! with the voters in `--peers`. A broker that starts on an empty disk
//! when its peers already run a quorum joins it instead (`join`): the
//! controller adds it as a learner and promotes it to voter once it has
//! caught up (`promote_caught_up_learners`), one member at a time; a voter
//! leaves through `change_voters` (`VoterChange::Remove`).

mod contact;
mod log_store;
mod network;
pub mod rpc;
mod state_machine;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, SnapshotPolicy};
use tokio::sync::watch;
use uuid::Uuid;

use sluice_client::{Pool, Resolve, Transport};

pub use self::rpc::{
    ProposeError, Proposed, QuorumMembers, QuorumRequest, QuorumResponse, VoterChange,
};
pub use self::state_machine::MetadataView;
use crate::image::{Command, CommandResult, MetadataImage};

openraft::declare_raft_types!(
    /// Types of the metadata Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub node_id: i32,
    /// `--peers`: the brokers' ids and inter-broker listener addresses,
    /// this broker included; the voters when the group is founded.
    pub voters: BTreeMap<i32, String>,
    /// How to connect to the other brokers (TLS on an SSL inter-broker
    /// listener).
    pub transport: Transport,
    pub dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// Followers start an election after this long without a leader
    /// (randomized up to twice as long).
    pub election_timeout: Duration,
    /// Snapshot after this many applied entries; the log keeps a tenth of
    /// that behind the snapshot for followers that are only a little behind
    /// (further behind, they get the snapshot).
    pub snapshot_every: u64,
}

/// Metadata entries between snapshots, by default.
pub const SNAPSHOT_EVERY: u64 = 1000;

pub struct Quorum {
    node_id: i32,
    raft: Raft<TypeConfig>,
    view: watch::Receiver<MetadataView>,
    /// `--peers`: how this broker reaches the others it was told of.
    peer_addrs: BTreeMap<i32, String>,
    /// Started on an empty disk beside a running quorum: not a member
    /// until the controller adds it (see `join`).
    joining: bool,
    /// On the controller: when a majority of the voters last acknowledged
    /// its leadership (see `confirm_majority`).
    majority_confirmed: tokio::sync::Mutex<Option<Instant>>,
    heartbeat_interval: Duration,
    /// Persistent connections to the other voters, for heartbeats and
    /// proposals forwarded to the controller (Raft's own traffic has its
    /// connections in `network`).
    peers: Pool,
    transport: Transport,
    /// Last heartbeat per broker, kept by whoever is controller.
    heartbeats: Mutex<HashMap<i32, (Uuid, Instant)>>,
    /// Last exchange with each other voter.
    contact: Arc<contact::PeerContact>,
    /// Time from proposing a metadata change to seeing it applied here.
    pub commit_seconds: prometheus::Histogram,
    /// Controller changes this broker has seen.
    pub controller_changes: std::sync::atomic::AtomicU64,
}

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

impl Quorum {
    /// Opens the quorum's storage in `dir` and joins the group. Every
    /// broker initializes the group with the same voters; openraft accepts
    /// that, and later starts skip it.
    pub async fn start(config: QuorumConfig) -> anyhow::Result<Quorum> {
        let log = log_store::LogStore::open(&config.dir)
            .with_context(|| format!("opening quorum log in {}", config.dir.display()))?;
        let (sm, view) = state_machine::StateMachineStore::open(&config.dir)
            .with_context(|| format!("opening quorum snapshot in {}", config.dir.display()))?;
        let election = config.election_timeout.as_millis() as u64;
        anyhow::ensure!(
            config.election_timeout >= config.heartbeat_interval * 2,
            "the election timeout ({:?}) must be at least twice the quorum heartbeat ({:?})",
            config.election_timeout,
            config.heartbeat_interval
        );
        let raft_config = openraft::Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            // openraft's followers refuse votes for `election_timeout_max`
            // after the last heartbeat (the leader lease), so the spread is
            // also how long a dead controller's followers wait.
            election_timeout_min: election,
            election_timeout_max: election * 3 / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: config.snapshot_every / 10,
            ..Default::default()
        }
        .validate()
        .context("quorum timing settings")?;
        let contact = Arc::new(contact::PeerContact::new(config.node_id));
        let raft = Raft::new(
            config.node_id as u64,
            Arc::new(raft_config),
            network::NetworkFactory {
                node_id: config.node_id,
                voters: config.voters.clone(),
                transport: config.transport.clone(),
                retry: config.heartbeat_interval,
                contact: contact.clone(),
            },
            log,
            sm,
        )
        .await
        .context("starting the quorum")?;
        let joining = if raft.is_initialized().await.context("quorum state")? {
            // A broker removed from the quorum and started again on its
            // old disk (a scale-down, then up again) is no member of the
            // running quorum: it joins again, its log catching up from the
            // leader.
            match running_quorum(&config).await {
                Some((peer, members)) if !members.includes(config.node_id) => {
                    tracing::info!(peer, voters = ?members.voters, "not a member of the running quorum: joining it again");
                    true
                }
                _ => false,
            }
        } else {
            found_or_join(&raft, &config).await?
        };
        let addrs = config.voters.clone();
        let metrics = raft.metrics();
        // `--peers` first, then the address a joined member gave.
        let resolve: Resolve = Arc::new(move |id| {
            addrs.get(&id).cloned().or_else(|| {
                let m = metrics.borrow();
                m.membership_config
                    .membership()
                    .get_node(&(id as u64))
                    .map(|n| n.addr.clone())
            })
        });
        Ok(Quorum {
            node_id: config.node_id,
            peers: Pool::new(
                format!("sluice-controller-{}", config.node_id),
                resolve,
                RPC_TIMEOUT,
            )
            .with_transport(config.transport.clone()),
            transport: config.transport,
            raft,
            view,
            peer_addrs: config.voters,
            joining,
            majority_confirmed: tokio::sync::Mutex::new(None),
            heartbeat_interval: config.heartbeat_interval,
            heartbeats: Mutex::new(HashMap::new()),
            contact,
            commit_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "sluice_quorum_commit_duration_seconds",
                    "Time from proposing a metadata change to having it applied on this broker.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )
            .context("quorum commit histogram")?,
            controller_changes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// Where broker `id`'s inter-broker listener is reached: its `--peers`
    /// address, else the one it gave when it joined the quorum, else the
    /// one it registered.
    pub fn peer_addr(&self, id: i32) -> Option<String> {
        self.peer_addrs
            .get(&id)
            .cloned()
            .or_else(|| self.member_addr(id))
            .or_else(|| {
                self.image()
                    .brokers
                    .get(&id)
                    .map(|b| format!("{}:{}", b.host, b.port))
            })
    }

    fn member_addr(&self, id: i32) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&(id as u64))
            .map(|n| n.addr.clone())
    }

    /// A connection pool's way to find peers (see [`Quorum::peer_addr`]).
    pub fn peer_resolver(self: &Arc<Self>) -> Resolve {
        let quorum = self.clone();
        Arc::new(move |id| quorum.peer_addr(id))
    }

    /// How to connect to the other brokers.
    pub fn peer_transport(&self) -> &Transport {
        &self.transport
    }

    /// The voters' broker ids, sorted (the current membership; the last
    /// one committed or being committed).
    pub fn voter_ids(&self) -> Vec<i32> {
        self.members().voters
    }

    /// The quorum's members as this node knows them.
    pub fn members(&self) -> QuorumMembers {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let mut voters: Vec<i32> = membership.voter_ids().map(|id| id as i32).collect();
        voters.sort_unstable();
        let mut learners: Vec<i32> = membership.learner_ids().map(|id| id as i32).collect();
        learners.sort_unstable();
        QuorumMembers {
            initialized: !voters.is_empty(),
            voters,
            learners,
            leader: m.current_leader.map(|l| l as i32),
        }
    }

    /// Whether this broker started beside a running quorum that does not
    /// list it: it must ask to be added (`join`).
    pub fn is_joining(&self) -> bool {
        self.joining
    }

    /// The latest applied metadata.
    pub fn view(&self) -> MetadataView {
        self.view.borrow().clone()
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.view.borrow().image.clone()
    }

    /// Wakes on every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<MetadataView> {
        self.view.clone()
    }

    /// The controller (Raft leader) as this broker last heard it.
    pub fn controller_id(&self) -> Option<i32> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map(|id| id as i32)
    }

    pub fn is_controller(&self) -> bool {
        self.controller_id() == Some(self.node_id)
    }

    /// Commits `command` through the controller and waits until this
    /// broker has applied it, so the caller reads its own write. Retries
    /// through elections until `timeout`.
    pub async fn propose(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, ProposeError> {
        self.propose_indexed(command, timeout)
            .await
            .map(|p| p.result)
    }

    /// `propose`, also giving the log index the command was committed at
    /// (so the caller can wait for a view that includes it).
    pub async fn propose_indexed(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<Proposed, ProposeError> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let attempt = match self.controller_id() {
                Some(id) if id == self.node_id => self.propose_local(command.clone()).await,
                Some(id) => self.forward(id, command.clone()).await,
                None => Err(ProposeError::NotController {
                    node: self.node_id,
                    leader: None,
                }),
            };
            match attempt {
                Ok(p) => {
                    self.wait_applied(p.index, deadline).await?;
                    self.commit_seconds.observe(started.elapsed().as_secs_f64());
                    return Ok(p);
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::debug!(error = %e, "proposal gave up");
                    return Err(ProposeError::Timeout(timeout));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "proposal will be retried");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn propose_local(&self, command: Command) -> Result<Proposed, ProposeError> {
        match self.raft.client_write(command).await {
            Ok(r) => {
                // Tell the followers the new commit index now rather than
                // with the next heartbeat (up to 100 ms later): every broker
                // should apply a leadership change before clients ask it
                // where the new leader is.
                if let Err(e) = self.raft.trigger().heartbeat().await {
                    tracing::debug!(error = %e, "could not trigger a quorum heartbeat");
                }
                Ok(Proposed {
                    index: r.log_id.index,
                    result: r.data,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotController {
                    node: self.node_id,
                    leader: f.leader_id.map(|l| l as i32),
                })
            }
            Err(e) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    async fn forward(&self, controller: i32, command: Command) -> Result<Proposed, ProposeError> {
        match self
            .call_peer(controller, &QuorumRequest::Propose(command))
            .await
        {
            Ok(QuorumResponse::Propose(r)) => r,
            Ok(other) => Err(ProposeError::Unavailable(format!(
                "controller {controller} answered {other:?}"
            ))),
            Err(e) => Err(ProposeError::Unavailable(format!(
                "controller {controller}: {e}"
            ))),
        }
    }

    /// One request to voter `id` on its persistent connection.
    async fn call_peer(&self, id: i32, request: &QuorumRequest) -> std::io::Result<QuorumResponse> {
        let conn = self.peers.get(id).await.map_err(rpc::to_io)?;
        let result = rpc::call(&conn, request, RPC_TIMEOUT).await;
        match &result {
            Ok(_) => self.contact.heard_from(id),
            Err(_) => self.peers.reset(id).await,
        }
        result
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ProposeError> {
        let mut rx = self.view.clone();
        let wait = rx.wait_for(|v| v.applied_index >= index);
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ProposeError::Unavailable("quorum stopped".into())),
            Err(_) => Err(ProposeError::Timeout(Duration::ZERO)),
        }
    }

    /// Tells the controller this broker is alive.
    pub async fn heartbeat(&self, incarnation: Uuid) -> Result<(), ProposeError> {
        match self.controller_id() {
            Some(id) if id == self.node_id => {
                // The controller's own heartbeat counts only while a
                // majority of voters still acknowledges its leadership (a
                // controller cut off from them believes it leads until it
                // hears of a newer term).
                self.confirm_majority().await?;
                self.record_heartbeat(self.node_id, incarnation);
                Ok(())
            }
            Some(id) => {
                let request = QuorumRequest::Heartbeat {
                    broker: self.node_id,
                    incarnation,
                };
                match self.call_peer(id, &request).await {
                    Ok(QuorumResponse::Heartbeat(r)) => {
                        if r.is_ok() {
                            self.contact.confirmed_by_controller();
                        }
                        r
                    }
                    Ok(other) => Err(ProposeError::Unavailable(format!("{other:?}"))),
                    Err(e) => Err(ProposeError::Unavailable(e.to_string())),
                }
            }
            None => Err(ProposeError::NotController {
                node: self.node_id,
                leader: None,
            }),
        }
    }

    /// On the controller: succeeds while a majority of the voters
    /// acknowledges its leadership, checked at most once per quorum
    /// heartbeat interval however many brokers ask.
    async fn confirm_majority(&self) -> Result<(), ProposeError> {
        let mut last = self.majority_confirmed.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.heartbeat_interval) {
            return Ok(());
        }
        match self.raft.get_read_log_id().await {
            Ok(_) => {
                *last = Some(Instant::now());
                Ok(())
            }
            Err(e) => Err(ProposeError::Unavailable(format!(
                "no majority of the controller quorum acknowledges this controller: {e}"
            ))),
        }
    }

    fn record_heartbeat(&self, broker: i32, incarnation: Uuid) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(broker, (incarnation, Instant::now()));
    }

    /// When the controller last heard from `broker`'s `incarnation`.
    pub fn last_heartbeat(&self, broker: i32, incarnation: Uuid) -> Option<Instant> {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&broker)
            .filter(|(inc, _)| *inc == incarnation)
            .map(|(_, at)| *at)
    }

    /// Forgets all heartbeats (on becoming controller: the previous
    /// controller's knowledge is not ours, so everyone gets a fresh grace
    /// period).
    pub fn reset_heartbeats(&self) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// A message from broker `peer` arrived here, or one to it was
    /// answered: any broker-to-broker traffic (quorum RPC, heartbeats,
    /// replication) shows the peer is within reach.
    pub fn heard_from(&self, peer: i32) {
        self.contact.heard_from(peer);
    }

    /// Whether voter `peer` refused a quorum connection since it was last
    /// heard from (the controller's replication reaches every voter every
    /// 100 ms, so a dead one shows here within about that).
    pub fn peer_refused(&self, peer: i32) -> bool {
        self.contact.refused(peer)
    }

    /// How long since this broker last had a majority of the voters
    /// within reach (see `contact`): a cut-off broker's silence grows.
    pub fn quorum_silence(&self) -> Duration {
        self.contact.silence(&self.voter_ids())
    }

    /// Answers one quorum request from a peer.
    pub async fn handle(&self, request: QuorumRequest) -> QuorumResponse {
        let sender = match &request {
            QuorumRequest::AppendEntries(r) => r.vote.leader_id().voted_for(),
            QuorumRequest::Vote(r) => r.vote.leader_id().voted_for(),
            QuorumRequest::InstallSnapshot(r) => r.vote.leader_id().voted_for(),
            QuorumRequest::Heartbeat { broker, .. } => u64::try_from(*broker).ok(),
            QuorumRequest::Propose(_) | QuorumRequest::Status | QuorumRequest::ChangeVoters(_) => {
                None
            }
        };
        if let Some(peer) = sender.and_then(|id| i32::try_from(id).ok()) {
            self.contact.heard_from(peer);
        }
        match request {
            QuorumRequest::AppendEntries(r) => {
                QuorumResponse::AppendEntries(self.raft.append_entries(r).await)
            }
            QuorumRequest::Vote(r) => QuorumResponse::Vote(self.raft.vote(r).await),
            QuorumRequest::InstallSnapshot(r) => {
                QuorumResponse::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            QuorumRequest::Propose(command) => {
                QuorumResponse::Propose(self.propose_local(command).await)
            }
            QuorumRequest::Heartbeat {
                broker,
                incarnation,
            } => QuorumResponse::Heartbeat(if !self.is_controller() {
                Err(ProposeError::NotController {
                    node: self.node_id,
                    leader: self.controller_id(),
                })
            } else if !self.members().includes(broker) {
                // Removed from the quorum: its metadata no longer moves, so
                // it must not pass for live (it is fenced when its session
                // runs out).
                Err(ProposeError::Refused(format!(
                    "broker {broker} is not a member of the controller quorum"
                )))
            } else {
                // Answered only with a majority behind it: the broker
                // counts the answer as contact with the quorum.
                self.confirm_majority().await.map(|()| {
                    self.record_heartbeat(broker, incarnation);
                })
            }),
            QuorumRequest::Status => QuorumResponse::Status(self.members()),
            QuorumRequest::ChangeVoters(change) => {
                QuorumResponse::ChangeVoters(self.change_voters_local(change).await)
            }
        }
    }

    /// Makes one membership change through the controller, retrying
    /// through elections until `timeout`. Done when the change is
    /// committed (a removed voter no longer counts for majorities).
    pub async fn change_voters(
        &self,
        change: VoterChange,
        timeout: Duration,
    ) -> Result<(), ProposeError> {
        let deadline = Instant::now() + timeout;
        // A broker not yet in the quorum knows no controller: it asks its
        // peers, which answer with the controller they know.
        let mut candidates: Vec<i32> = Vec::new();
        let mut hint: Option<i32> = None;
        loop {
            let target = hint.take().or_else(|| self.controller_id()).or_else(|| {
                if candidates.is_empty() {
                    candidates = self
                        .peer_addrs
                        .keys()
                        .copied()
                        .filter(|id| *id != self.node_id)
                        .collect();
                }
                candidates.pop()
            });
            let attempt = match target {
                Some(id) if id == self.node_id => self.change_voters_local(change.clone()).await,
                Some(id) => match self
                    .call_peer(id, &QuorumRequest::ChangeVoters(change.clone()))
                    .await
                {
                    Ok(QuorumResponse::ChangeVoters(r)) => r,
                    Ok(other) => Err(ProposeError::Unavailable(format!(
                        "broker {id} answered {other:?}"
                    ))),
                    Err(e) => Err(ProposeError::Unavailable(format!("broker {id}: {e}"))),
                },
                None => Err(ProposeError::NotController {
                    node: self.node_id,
                    leader: None,
                }),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e @ ProposeError::Refused(_)) => return Err(e),
                Err(ProposeError::NotController {
                    leader: Some(l), ..
                }) if Some(l) != target => hint = Some(l),
                Err(e) if Instant::now() >= deadline => {
                    tracing::debug!(error = %e, ?change, "membership change gave up");
                    return Err(ProposeError::Timeout(timeout));
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?change, "membership change will be retried");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// On the controller: makes `change` (done already counts as done).
    async fn change_voters_local(&self, change: VoterChange) -> Result<(), ProposeError> {
        if !self.is_controller() {
            return Err(ProposeError::NotController {
                node: self.node_id,
                leader: self.controller_id(),
            });
        }
        let members = self.members();
        let id = |node: i32| node as u64;
        let result = match &change {
            VoterChange::AddLearner { node, addr } => {
                let node_info = BasicNode { addr: addr.clone() };
                if members.voters.contains(node)
                    || (members.learners.contains(node)
                        && self.member_addr(*node).as_deref() == Some(addr.as_str()))
                {
                    return Ok(());
                }
                if members.learners.contains(node) {
                    // A learner that started again at another address (a
                    // joining broker that had to take a new port).
                    let nodes = [(id(*node), node_info)].into_iter().collect();
                    self.raft
                        .change_membership(ChangeMembers::SetNodes(nodes), false)
                        .await
                } else {
                    self.raft.add_learner(id(*node), node_info, false).await
                }
            }
            VoterChange::Promote { node } => {
                if members.voters.contains(node) {
                    return Ok(());
                }
                if !members.learners.contains(node) {
                    return Err(ProposeError::Refused(format!(
                        "broker {node} is not a member of the controller quorum"
                    )));
                }
                let ids = [id(*node)].into_iter().collect();
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
            }
            VoterChange::Remove { node } => {
                let ids: std::collections::BTreeSet<u64> = [id(*node)].into_iter().collect();
                if members.voters.contains(node) {
                    if members.voters.len() == 1 {
                        return Err(ProposeError::Refused(format!(
                            "broker {node} is the controller quorum's only voter"
                        )));
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(ids), false)
                        .await
                } else if members.learners.contains(node) {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(ids), false)
                        .await
                } else {
                    return Err(ProposeError::Refused(format!(
                        "broker {node} is not a member of the controller quorum"
                    )));
                }
            }
        };
        match result {
            Ok(_) => {
                tracing::info!(?change, "controller quorum membership changed");
                Ok(())
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotController {
                    node: self.node_id,
                    leader: f.leader_id.map(|l| l as i32),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ProposeError::Unavailable(format!("{change:?}: {e}")))
            }
            Err(e) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// For a broker that started beside a running quorum: asks the
    /// controller to add it (reached at `addr`) until it is a member. Its
    /// promotion to voter is the controller's (see
    /// `promote_caught_up_learners`).
    pub async fn join(&self, addr: String) {
        loop {
            let change = VoterChange::AddLearner {
                node: self.node_id,
                addr: addr.clone(),
            };
            match self.change_voters(change, RPC_TIMEOUT).await {
                Ok(()) => {
                    tracing::info!("joined the controller quorum as a learner");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not join the controller quorum yet"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// On the controller: makes voters of learners that have the whole
    /// log but for `slack` entries and are registered, live brokers, one at
    /// a time (each change is committed before the next).
    pub async fn promote_caught_up_learners(&self, slack: u64) {
        if !self.is_controller() {
            return;
        }
        let status = self.status();
        let Some(last) = status.last_log_index else {
            return;
        };
        let image = self.image();
        for (learner, matched) in status.learners {
            let caught_up = matched.flatten().is_some_and(|m| m + slack >= last);
            let live = image.brokers.get(&learner).is_some_and(|b| b.eligible());
            if !caught_up || !live {
                continue;
            }
            tracing::info!(learner, "promoting a caught-up learner to voter");
            if let Err(e) = self
                .change_voters(VoterChange::Promote { node: learner }, RPC_TIMEOUT)
                .await
            {
                tracing::warn!(learner, error = %e, "promotion not committed");
            }
            return;
        }
    }

    /// Answers a raw quorum frame (without length prefix) with a
    /// length-prefixed response frame.
    pub async fn handle_frame(&self, frame: &[u8]) -> Vec<u8> {
        let (correlation, request) = rpc::decode_request(frame);
        let response = match request {
            Ok(r) => self.handle(r).await,
            Err(e) => QuorumResponse::BadRequest(e),
        };
        rpc::encode_response(correlation, &response)
    }

    /// Raft metrics for /metrics and diagnostics.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The quorum as this node sees it, in log indexes (for DescribeQuorum).
    pub fn status(&self) -> QuorumStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let matched = |id: &u64| -> Option<Option<u64>> {
            if *id == m.id {
                return Some(m.last_log_index);
            }
            m.replication
                .as_ref()
                .and_then(|r| r.get(id))
                .map(|l| l.map(|l| l.index))
        };
        QuorumStatus {
            node_id: m.id as i32,
            leader: m.current_leader.map(|l| l as i32),
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters: membership
                .voter_ids()
                .map(|id| (id as i32, matched(&id)))
                .collect(),
            learners: membership
                .learner_ids()
                .map(|id| (id as i32, matched(&id)))
                .collect(),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "quorum did not shut down cleanly");
        }
    }
}

/// The quorum as one node sees it (`Quorum::status`). Indexes are the
/// metadata log's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    pub node_id: i32,
    pub leader: Option<i32>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// (id, last index known to be replicated there): known for this node
    /// always, for the others only on the leader (`None` when unknown,
    /// `Some(None)` when nothing is replicated yet).
    pub voters: Vec<(i32, Option<Option<u64>>)>,
    pub learners: Vec<(i32, Option<Option<u64>>)>,
}

/// Parses `--peers` (`id@host:port,...`) into voter addresses.
pub fn parse_peers(peers: &str) -> anyhow::Result<BTreeMap<i32, String>> {
    let mut out = BTreeMap::new();
    for item in peers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .with_context(|| format!("peer '{item}' must be id@host:port"))?;
        let id: i32 = id
            .parse()
            .with_context(|| format!("peer '{item}': id '{id}' is not a number"))?;
        anyhow::ensure!(id >= 0, "peer '{item}': id must be >= 0");
        let (host, port) = addr
            .rsplit_once(':')
            .with_context(|| format!("peer '{item}': address must be host:port"))?;
        anyhow::ensure!(!host.is_empty(), "peer '{item}': empty host");
        port.parse::<u16>()
            .with_context(|| format!("peer '{item}': port '{port}'"))?;
        anyhow::ensure!(
            out.insert(id, addr.to_string()).is_none(),
            "peer id {id} appears twice in peers"
        );
    }
    Ok(out)
}

/// A one-voter quorum in `dir` with broker 0 registered, for unit tests of
/// what sits on top of the metadata.
/// Always compiled (one build for tests and binaries).
#[doc(hidden)]
pub async fn single_voter_for_tests(dir: &std::path::Path) -> Arc<Quorum> {
    let quorum = Quorum::start(QuorumConfig {
        node_id: 0,
        voters: [(0, "127.0.0.1:9".to_string())].into(),
        dir: dir.join("quorum"),
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        snapshot_every: SNAPSHOT_EVERY,
        transport: Transport::Plain,
    })
    .await
    .expect("quorum starts");
    quorum
        .propose(
            Command::RegisterBroker {
                id: 0,
                host: "127.0.0.1".into(),
                port: 9092,
                incarnation: Uuid::new_v4(),
                listeners: Default::default(),
            },
            Duration::from_secs(10),
        )
        .await
        .expect("committed")
        .expect("registered");
    Arc::new(quorum)
}

#[cfg(test)]
mod tests;

/// For a broker whose quorum storage is empty: joins a running quorum if a
/// peer answers that it runs one (returns whether this broker must still
/// be added to it), else founds the group with the voters in `--peers` if
/// it is the lowest of them, else waits for one of those. One founder: two
/// brokers that each found it (a peer momentarily unreachable) would make
/// two clusters. A peer answers only once its own quorum has started, so
/// the others of a new cluster wait for the founder's (a few hundred ms).
async fn found_or_join(raft: &Raft<TypeConfig>, config: &QuorumConfig) -> anyhow::Result<bool> {
    let founder = config
        .voters
        .keys()
        .next()
        .copied()
        .unwrap_or(config.node_id);
    let started = Instant::now();
    let mut last_log = started;
    loop {
        if let Some((peer, members)) = running_quorum(config).await {
            let member = members.includes(config.node_id);
            tracing::info!(
                peer,
                voters = ?members.voters,
                learners = ?members.learners,
                member,
                "empty quorum storage and a running quorum: joining it, not founding one"
            );
            return Ok(!member);
        }
        if config.node_id == founder {
            let members: BTreeMap<u64, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id as u64, BasicNode { addr: addr.clone() }))
                .collect();
            tracing::info!(voters = ?config.voters.keys().collect::<Vec<_>>(), "founding the controller quorum");
            return match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
                Err(e) => Err(e).context("initializing the quorum"),
            };
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::warn!(
                founder,
                waited_s = started.elapsed().as_secs(),
                "empty quorum storage: waiting for a running quorum among the peers, or for broker {founder} to found one"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks every other broker in `--peers` (at once, briefly) whether it runs
/// a quorum; the first that does, with its members (an older broker that
/// does not know the question runs one too: its members are unknown).
async fn running_quorum(config: &QuorumConfig) -> Option<(i32, QuorumMembers)> {
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in config
        .voters
        .iter()
        .filter(|(id, _)| **id != config.node_id)
    {
        let mut conn = rpc::PeerConnection::new(
            addr.clone(),
            format!("sluice-quorum-{}", config.node_id),
            config.transport.clone(),
        );
        let id = *id;
        asks.spawn(async move {
            let answer = conn.call(&QuorumRequest::Status, STATUS_TIMEOUT).await;
            (id, answer)
        });
    }
    while let Some(done) = asks.join_next().await {
        match done {
            Ok((id, Ok(QuorumResponse::Status(members)))) if members.initialized => {
                return Some((id, members));
            }
            Ok((id, Ok(QuorumResponse::BadRequest(why)))) => {
                tracing::info!(peer = id, %why, "a peer of an older version runs the quorum");
                return Some((
                    id,
                    QuorumMembers {
                        initialized: true,
                        voters: Vec::new(),
                        learners: Vec::new(),
                        leader: None,
                    },
                ));
            }
            Ok((id, answer)) => {
                tracing::debug!(peer = id, ?answer, "peer runs no quorum (yet)");
            }
            Err(e) => tracing::debug!(error = %e, "asking a peer failed"),
        }
    }
    None
}

/// How long a starting broker waits for a peer's `Status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
