//! openraft's view of the other voters: one `PeerConnection` per target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::TypeConfig;
use super::contact::PeerContact;
use super::rpc::{PeerConnection, QuorumRequest, QuorumResponse};

type NodeId = u64;
type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// Resolves voters through this broker's own `--peers`, not the addresses
/// recorded in the membership (those are whichever broker initialized the
/// group's view; each broker may reach a peer by a different route).
pub struct NetworkFactory {
    pub node_id: i32,
    pub voters: BTreeMap<i32, String>,
    pub transport: sluice_client::Transport,
    /// How soon to retry an unreachable peer (see `PeerNetwork::backoff`).
    pub retry: Duration,
    pub contact: Arc<PeerContact>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        let addr = i32::try_from(target)
            .ok()
            .and_then(|id| self.voters.get(&id).cloned())
            .unwrap_or_else(|| node.addr.clone());
        PeerNetwork {
            target,
            conn: PeerConnection::new(
                addr,
                format!("sluice-quorum-{}", self.node_id),
                self.transport.clone(),
            ),
            retry: self.retry,
            contact: self.contact.clone(),
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    conn: PeerConnection,
    retry: Duration,
    contact: Arc<PeerContact>,
}

impl PeerNetwork {
    async fn call<E: std::error::Error>(
        &mut self,
        request: QuorumRequest,
        timeout: Duration,
    ) -> Result<QuorumResponse, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let answer = self.conn.call(&request, timeout).await;
        if let Ok(peer) = i32::try_from(self.target) {
            match &answer {
                Ok(_) => self.contact.heard_from(peer),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    self.contact.refused_by(peer);
                }
                Err(_) => {}
            }
        }
        answer.map_err(|e| {
            // A refused or reset connection means the peer is down: back
            // off instead of retrying in a tight loop.
            match e.kind() {
                std::io::ErrorKind::TimedOut => RPCError::Network(NetworkError::new(&e)),
                _ => RPCError::Unreachable(Unreachable::new(&e)),
            }
        })
    }

    fn unexpected<E: std::error::Error>(
        &self,
        got: &QuorumResponse,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        let e = std::io::Error::other(format!(
            "peer {} at {} answered with an unexpected message: {got:?}",
            self.target,
            self.conn.addr()
        ));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    /// Retry an unreachable peer every heartbeat interval, not openraft's
    /// default 500 ms: a restarted broker must hear from the leader before
    /// its own election timeout, or it starts elections it cannot win
    /// (openraft 0.9 has no pre-vote) and keeps bumping the term.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.retry))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self
            .call(QuorumRequest::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            QuorumResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .call(QuorumRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await?
        {
            QuorumResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self
            .call(QuorumRequest::Vote(rpc), option.hard_ttl())
            .await?
        {
            QuorumResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }
}
