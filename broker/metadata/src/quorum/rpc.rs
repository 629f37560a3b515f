//! Quorum traffic between brokers, carried on the inter-broker Kafka
//! listener under a private API key (far outside Kafka's range, never
//! advertised in ApiVersions), so a cluster needs one address per broker.
//! Other listeners refuse these frames (`sluice_broker::server`).
//!
//! Request frame: `[len: i32][api key: i16][version: i16][correlation: i32][JSON]`,
//! response frame: `[len: i32][correlation: i32][JSON]`. JSON because the
//! messages are openraft's own serde types and metadata traffic is small.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use sluice_client::{ClientError, Connection, Transport};
use uuid::Uuid;

use super::TypeConfig;
use crate::image::{Command, CommandResult};

/// Private API key of quorum frames.
pub const QUORUM_API_KEY: i16 = 32_101;
const VERSION: i16 = 0;

#[derive(Debug, Serialize, Deserialize)]
pub enum QuorumRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata change for the controller to commit.
    Propose(Command),
    /// A broker is alive; sent to the controller every heartbeat interval.
    Heartbeat {
        broker: i32,
        incarnation: Uuid,
    },
    /// Whether this node's quorum is initialized, and its members: asked
    /// by a broker starting on an empty disk, which joins an existing
    /// quorum instead of founding one.
    Status,
    /// A change of the quorum's members, for the controller to make.
    ChangeVoters(VoterChange),
}

/// A change of the controller quorum's members, one node at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoterChange {
    /// A broker new to the quorum (empty disk) joins as a learner, reached
    /// at `addr` (its inter-broker listener); the controller promotes it
    /// once it has caught up.
    AddLearner { node: i32, addr: String },
    /// A caught-up learner becomes a voter.
    Promote { node: i32 },
    /// A voter or learner leaves the quorum.
    Remove { node: i32 },
}

/// What `Status` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumMembers {
    pub initialized: bool,
    pub voters: Vec<i32>,
    pub learners: Vec<i32>,
    pub leader: Option<i32>,
}

impl QuorumMembers {
    /// Whether `node` is a voter or a learner.
    pub fn includes(&self, node: i32) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum QuorumResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Propose(Result<Proposed, ProposeError>),
    Heartbeat(Result<(), ProposeError>),
    Status(QuorumMembers),
    ChangeVoters(Result<(), ProposeError>),
    /// The frame could not be decoded.
    BadRequest(String),
}

/// A committed proposal: its log index and what applying it produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposed {
    pub index: u64,
    pub result: CommandResult,
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("broker {node} is not the controller (controller: {leader:?})")]
    NotController { node: i32, leader: Option<i32> },
    #[error("no controller reachable within {0:?}")]
    Timeout(Duration),
    #[error("controller quorum unavailable: {0}")]
    Unavailable(String),
    /// The controller refused the change (e.g. removing the last voter).
    #[error("{0}")]
    Refused(String),
}

/// Is this frame (without its length prefix) quorum traffic?
pub fn is_quorum_frame(frame: &[u8]) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == QUORUM_API_KEY
}

/// Splits a quorum frame into correlation id and decoded request.
pub fn decode_request(frame: &[u8]) -> (i32, Result<QuorumRequest, String>) {
    let Some(header) = frame.get(..8) else {
        return (0, Err("quorum frame shorter than its header".into()));
    };
    let version = i16::from_be_bytes([header[2], header[3]]);
    let correlation = i32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if version != VERSION {
        return (
            correlation,
            Err(format!(
                "quorum protocol version {version} is not {VERSION}"
            )),
        );
    }
    let request = serde_json::from_slice(&frame[8..]).map_err(|e| format!("quorum request: {e}"));
    (correlation, request)
}

/// A length-prefixed response frame.
pub fn encode_response(correlation: i32, response: &QuorumResponse) -> Vec<u8> {
    let body = serde_json::to_vec(response).unwrap_or_else(|e| {
        serde_json::to_vec(&QuorumResponse::BadRequest(format!(
            "encoding response: {e}"
        )))
        .unwrap_or_default()
    });
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&correlation.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Quorum requests to one peer over one persistent connection (the
/// broker's internal client), reopened after any error.
pub struct PeerConnection {
    addr: String,
    client_id: String,
    transport: Transport,
    conn: Option<Connection>,
}

impl PeerConnection {
    pub fn new(addr: String, client_id: String, transport: Transport) -> PeerConnection {
        PeerConnection {
            addr,
            client_id,
            transport,
            conn: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and waits for its response, within `timeout`.
    pub async fn call(
        &mut self,
        request: &QuorumRequest,
        timeout: Duration,
    ) -> std::io::Result<QuorumResponse> {
        let result = self.call_inner(request, timeout).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn call_inner(
        &mut self,
        request: &QuorumRequest,
        timeout: Duration,
    ) -> std::io::Result<QuorumResponse> {
        if !self.conn.as_ref().is_some_and(Connection::is_open) {
            let c = Connection::open(&self.addr, &self.client_id, timeout, &self.transport)
                .await
                .map_err(to_io)?;
            self.conn = Some(c);
        }
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| std::io::Error::other("connection vanished"))?;
        call(conn, request, timeout).await
    }
}

/// One quorum request over `conn`: a Kafka request header v0 (api key,
/// version, correlation id) and JSON, answered with a v0 response header
/// (the correlation id) and JSON.
pub async fn call(
    conn: &Connection,
    request: &QuorumRequest,
    timeout: Duration,
) -> std::io::Result<QuorumResponse> {
    let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    let answer = conn
        .send_raw(QUORUM_API_KEY, VERSION, 0, body.into(), timeout)
        .await
        .map_err(to_io)?;
    serde_json::from_slice(&answer).map_err(std::io::Error::other)
}

/// Keeps the kind that tells a slow peer (timed out) from a gone one.
pub fn to_io(e: ClientError) -> std::io::Error {
    let kind = match &e {
        ClientError::Timeout { .. } => std::io::ErrorKind::TimedOut,
        ClientError::Connect { source, .. } | ClientError::Io { source, .. } => source.kind(),
        _ => std::io::ErrorKind::ConnectionAborted,
    };
    std::io::Error::new(kind, e.to_string())
}
