//! Request handlers, one module per Kafka API family. `handle` routes a
//! decoded request to its handler and returns the response body (or `None`
//! where Kafka sends nothing back, i.e. Produce with acks=0).

mod acls;
pub mod authorize;
mod configs;
mod fetch;
mod groups;
pub mod inter_broker;
mod leader_epoch;
mod list_offsets;
mod metadata;
mod produce;
mod producer;
mod quorum;
mod reassign;
mod sasl;
mod topics;
mod transactions;
mod txn_markers;

use std::sync::Arc;

use futures::future::BoxFuture;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use sluice_protocol::DecodedRequest;

/// What each family of handlers gets: the services it uses, not the whole
/// broker (its settings, lifecycle and the metadata applier stay out of
/// reach). Built per request from the broker; all are references.
pub mod services {
    use sluice_metadata::producer_ids::ProducerIdAllocator;
    use sluice_metadata::quorum::Quorum;
    use sluice_plugin_host::PluginHost;

    use crate::broker::Broker;
    use crate::cluster::topics::TopicRegistry;
    use crate::config::ServeArgs;
    use crate::forward::Forwarder;
    use crate::groups::GroupCoordinator;
    use crate::metrics::Metrics;
    use crate::replication::ReplicaManager;
    use crate::transactions::TxnCoordinator;
    use crate::view::Views;
    use std::sync::Arc;

    /// Produce, forwarded produce and routing through plugins.
    #[derive(Clone, Copy)]
    pub struct Writes<'a> {
        pub node_id: i32,
        pub views: &'a Views,
        pub quorum: &'a Quorum,
        pub replicas: &'a ReplicaManager,
        pub plugins: &'a PluginHost,
        pub forwarder: &'a Forwarder,
        /// Transaction markers in offsets partitions settle offsets.
        pub groups: &'a GroupCoordinator,
        /// Partitions plugins route a transaction's records to join it.
        pub transactions: &'a Arc<TxnCoordinator>,
        pub metrics: &'a Metrics,
    }

    /// Fetch, ListOffsets, OffsetForLeaderEpoch.
    pub struct Reads<'a> {
        pub views: &'a Views,
        pub plugins: &'a PluginHost,
        pub metrics: &'a Metrics,
        /// A follower's fetch is contact with a peer (see `crate::liveness`).
        pub quorum: &'a Quorum,
    }

    /// Metadata, DescribeCluster, topics and configs.
    pub struct Admin<'a> {
        pub node_id: i32,
        pub settings: &'a ServeArgs,
        pub views: &'a Views,
        pub quorum: &'a Quorum,
        pub topics: &'a TopicRegistry,
        pub plugins: &'a PluginHost,
        pub metrics: &'a Metrics,
        /// Whether ACLs are on (the ACL APIs answer SECURITY_DISABLED if not).
        pub authorizer_enabled: bool,
    }

    /// The consumer-group APIs.
    pub struct Groups<'a> {
        pub views: &'a Views,
        pub groups: &'a GroupCoordinator,
        pub metrics: &'a Metrics,
    }

    /// InitProducerId.
    pub struct ProducerIds<'a> {
        pub producer_ids: &'a ProducerIdAllocator,
        pub transactions: &'a Arc<TxnCoordinator>,
        pub metrics: &'a Metrics,
    }

    /// The transaction coordinator's APIs.
    pub struct Transactions<'a> {
        pub views: &'a Views,
        pub transactions: &'a Arc<TxnCoordinator>,
        pub metrics: &'a Metrics,
    }

    impl Writes<'_> {
        /// Questions to transaction coordinators about partitions.
        pub fn membership(&self) -> crate::transactions::membership::Membership<'_> {
            crate::transactions::membership::Membership {
                node_id: self.node_id,
                coordinator: self.transactions,
                forwarder: self.forwarder,
            }
        }
    }

    impl Broker {
        pub fn writes(&self) -> Writes<'_> {
            Writes {
                node_id: self.node_id,
                views: &self.views,
                quorum: &self.quorum,
                replicas: &self.replicas,
                plugins: &self.plugins,
                forwarder: &self.forwarder,
                groups: &self.groups,
                transactions: &self.transactions,
                metrics: &self.metrics,
            }
        }

        pub fn reads(&self) -> Reads<'_> {
            Reads {
                views: &self.views,
                plugins: &self.plugins,
                metrics: &self.metrics,
                quorum: &self.quorum,
            }
        }

        pub fn admin(&self) -> Admin<'_> {
            Admin {
                node_id: self.node_id,
                settings: &self.args,
                views: &self.views,
                quorum: &self.quorum,
                topics: &self.topics,
                plugins: &self.plugins,
                metrics: &self.metrics,
                authorizer_enabled: self.authorizer.enabled,
            }
        }

        pub fn group_services(&self) -> Groups<'_> {
            Groups {
                views: &self.views,
                groups: &self.groups,
                metrics: &self.metrics,
            }
        }

        pub fn producer_id_services(&self) -> ProducerIds<'_> {
            ProducerIds {
                producer_ids: &self.producer_ids,
                transactions: &self.transactions,
                metrics: &self.metrics,
            }
        }

        pub fn transaction_services(&self) -> Transactions<'_> {
            Transactions {
                views: &self.views,
                transactions: &self.transactions,
                metrics: &self.metrics,
            }
        }
    }
}

/// Waits until the view includes quorum index `index` (a change this
/// broker just committed), so the handler reads its own write.
pub(crate) async fn committed(
    views: &crate::view::Views,
    index: u64,
) -> Result<Arc<crate::view::ClusterView>, crate::cluster::topics::TopicError> {
    use crate::cluster::topics::PROPOSE_TIMEOUT;
    views.wait_for(index, PROPOSE_TIMEOUT).await.ok_or_else(|| {
        crate::cluster::topics::TopicError::Controller(format!(
            "committed change {index} was not applied here within {PROPOSE_TIMEOUT:?}"
        ))
    })
}

/// Why a change to the replicated metadata did not happen.
pub(crate) enum ChangeFailed {
    /// No controller took it (none elected, unreachable, timed out).
    Unavailable(String),
    /// The controller's state machine refused it.
    Refused(sluice_metadata::image::MetadataError),
}

/// Proposes `command` to the controller quorum and, once committed, waits
/// until this broker's view has applied it, so a read right after sees it.
pub(crate) async fn change_metadata(
    b: &services::Admin<'_>,
    command: sluice_metadata::image::Command,
) -> Result<sluice_metadata::image::Applied, ChangeFailed> {
    use crate::cluster::topics::PROPOSE_TIMEOUT;
    let proposed = b
        .quorum
        .propose_indexed(command, PROPOSE_TIMEOUT)
        .await
        .map_err(|e| ChangeFailed::Unavailable(e.to_string()))?;
    let applied = proposed.result.map_err(ChangeFailed::Refused)?;
    // Committed either way; a slow local apply only delays reading it.
    let _ = committed(b.views, proposed.index).await;
    Ok(applied)
}

impl std::fmt::Display for ChangeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeFailed::Unavailable(m) => f.write_str(m),
            ChangeFailed::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// Where a connection's requests come from: the client's address and the
/// listener it connected to (whose advertised addresses it is told).
pub struct Session {
    pub peer: std::net::SocketAddr,
    pub listener: Arc<str>,
    /// The inter-broker listener: brokers' own requests are served.
    pub inter_broker: bool,
    /// Authentication (SASL listeners) and who the connection is.
    pub auth: std::sync::Mutex<crate::auth::AuthState>,
    /// Largest frame the connection's reader accepts: small until a SASL
    /// connection has authenticated (Kafka's sasl.server.max.receive.size).
    pub frame_limit: Arc<std::sync::atomic::AtomicUsize>,
    /// A SASL listener's connection.
    pub sasl: bool,
    /// Who the connection authenticated as with SASL, and how: a
    /// re-authentication (KIP-368) must keep both.
    pub sasl_identity: std::sync::Mutex<Option<(String, crate::auth::Mechanism)>>,
}

/// Largest frame before SASL authentication (Kafka's
/// `sasl.server.max.receive.size` default).
pub const UNAUTHENTICATED_FRAME_LIMIT: usize = 512 * 1024;

impl Session {
    pub fn new(
        peer: std::net::SocketAddr,
        listener: Arc<str>,
        inter_broker: bool,
        sasl: bool,
        max_request_bytes: usize,
    ) -> Session {
        use crate::auth::AuthState;
        let limit = if sasl {
            max_request_bytes.min(UNAUTHENTICATED_FRAME_LIMIT)
        } else {
            max_request_bytes
        };
        Session {
            peer,
            listener,
            inter_broker,
            frame_limit: Arc::new(std::sync::atomic::AtomicUsize::new(limit)),
            sasl,
            sasl_identity: std::sync::Mutex::new(None),
            auth: std::sync::Mutex::new(if sasl {
                AuthState::AwaitingHandshake
            } else {
                AuthState::NotRequired
            }),
        }
    }

    /// May this connection send `api_key` now? Before a SASL connection
    /// has authenticated, only ApiVersions and the SASL requests; once its
    /// session has expired, only the SaslHandshake that starts a
    /// re-authentication (Kafka closes on anything else).
    pub fn admits(&self, api_key: kafka_protocol::messages::ApiKey) -> bool {
        use kafka_protocol::messages::ApiKey;
        match api_key {
            ApiKey::SaslHandshake => true,
            ApiKey::ApiVersions | ApiKey::SaslAuthenticate => !self.sasl_session_expired(),
            _ => self.lock_auth().admits_requests(),
        }
    }

    /// Did authentication fail (the connection closes after the answer)?
    pub fn auth_failed(&self) -> bool {
        matches!(*self.lock_auth(), crate::auth::AuthState::Failed)
    }

    /// The principal (`User:alice`; `User:ANONYMOUS` without SASL).
    pub fn principal(&self) -> String {
        match &*self.lock_auth() {
            crate::auth::AuthState::Authenticated { principal, .. } => principal.clone(),
            _ => crate::auth::ANONYMOUS.to_string(),
        }
    }

    /// Who the connection is, from its client certificate.
    pub fn authenticated_as(&self, principal: String) {
        *self.lock_auth() = crate::auth::AuthState::Authenticated {
            principal,
            expires: None,
        };
    }

    /// A SASL exchange succeeded as `principal` with `mechanism`: the
    /// session lasts `lifetime` (KIP-368). A re-authentication must name
    /// the principal the connection had (Kafka's rule); otherwise the
    /// connection fails and the reason is returned.
    pub fn sasl_authenticated(
        &self,
        principal: String,
        mechanism: crate::auth::Mechanism,
        lifetime: Option<std::time::Duration>,
    ) -> Result<(), String> {
        use crate::auth::AuthState;
        let mut identity = self.sasl_identity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((previous, previous_mechanism)) = identity.as_ref() {
            let refusal = if *previous != principal {
                Some(format!(
                    "cannot change principals during re-authentication from {previous} to {principal}"
                ))
            } else if *previous_mechanism != mechanism {
                Some(format!(
                    "re-authentication must use the same SASL mechanism ({})",
                    previous_mechanism.name()
                ))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                *self.lock_auth() = AuthState::Failed;
                return Err(refusal);
            }
        }
        *identity = Some((principal.clone(), mechanism));
        *self.lock_auth() = AuthState::Authenticated {
            principal,
            expires: lifetime.map(|l| std::time::Instant::now() + l),
        };
        Ok(())
    }

    /// The SASL exchange failed: the connection closes after the answer.
    pub fn sasl_failed(&self) {
        *self.lock_auth() = crate::auth::AuthState::Failed;
    }

    /// Did the connection's SASL session expire without re-authentication?
    pub fn sasl_session_expired(&self) -> bool {
        matches!(
            &*self.lock_auth(),
            crate::auth::AuthState::Authenticated { expires: Some(e), .. }
                if std::time::Instant::now() >= *e
        )
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, crate::auth::AuthState> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Who sent a request, for the handlers that record it (group members).
pub struct RequestContext {
    pub peer: std::net::SocketAddr,
    pub client_id: String,
}

/// The rest of a request after its ordered part ran: resolves to the
/// response (`None` where Kafka sends nothing back).
pub type Completion<'a> = BoxFuture<'a, Answer>;

/// How a request is answered.
// By value, as `Option<ResponseKind>` was: boxing the response would
// allocate once more per request.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    Respond(ResponseKind),
    /// Nothing is sent back (an acks=0 produce that went well).
    Nothing,
    /// The connection closes, saying why in the log: an acks=0 produce
    /// with an error (Kafka closes the connection, the only way an acks=0
    /// client learns to refresh its metadata).
    Close(String),
}

impl From<Option<ResponseKind>> for Answer {
    fn from(r: Option<ResponseKind>) -> Answer {
        r.map_or(Answer::Nothing, Answer::Respond)
    }
}

/// Runs the part of a request that must happen in the connection's order
/// (for Produce: validating and appending every batch) and returns what
/// completes it (for Produce: the fsync and replication waits), so the
/// connection can start on its next request meanwhile. Every other API is
/// handled whole here.
pub async fn handle<'a>(
    broker: &'a Arc<Broker>,
    session: &Session,
    req: DecodedRequest,
) -> Completion<'a> {
    let DecodedRequest {
        api_key,
        version,
        header,
        body,
    } = req;
    // Built only where something is checked: with the authorizer off, or
    // for the trusted inter-broker listener (replication's hot path),
    // requests pay nothing for it.
    let authz = (broker.authorizer.enabled && !session.inter_broker).then(|| authorize::Authz {
        authorizer: &broker.authorizer,
        image: broker.view().image.clone(),
        caller: crate::auth::authorizer::Caller {
            principal: session.principal(),
            // IPv4 clients of an IPv6 socket as a.b.c.d, as ACLs name them.
            host: session.peer.ip().to_canonical().to_string(),
            trusted: false,
        },
        auto_create: broker.args.auto_create_topics,
    });
    // acks=0: the client reads no answer; an error closes the connection.
    let fire_and_forget = matches!(&body, RequestKind::Produce(r) if r.acks == 0);
    let (body, fix) = match authorize::check(authz.as_ref(), body, version) {
        authorize::Checked::Answer(_) if fire_and_forget => {
            return Box::pin(std::future::ready(Answer::Close(
                "an acks=0 produce was refused".into(),
            )));
        }
        authorize::Checked::Answer(resp) => {
            return Box::pin(std::future::ready(Answer::Respond(resp)));
        }
        authorize::Checked::Serve(body, fix) => (body, fix),
    };
    let req = match body {
        RequestKind::Produce(r) => {
            let pending = produce::produce(broker.writes(), session.listener.clone(), r).await;
            return Box::pin(async move {
                let mut resp = ResponseKind::Produce(pending.await);
                fix.apply(authz.as_ref(), &mut resp);
                if !fire_and_forget {
                    return Answer::Respond(resp);
                }
                match produce::first_error(&resp) {
                    Some(error) => Answer::Close(format!(
                        "an acks=0 produce failed ({error}); Kafka closes the connection so the client refreshes its metadata"
                    )),
                    None => Answer::Nothing,
                }
            });
        }
        body => DecodedRequest {
            api_key,
            version,
            header,
            body,
        },
    };
    let mut resp = handle_whole(broker, session, authz.as_ref(), req).await;
    if let Some(r) = resp.as_mut() {
        fix.apply(authz.as_ref(), r);
    }
    Box::pin(std::future::ready(resp.into()))
}

async fn handle_whole(
    broker: &Arc<Broker>,
    session: &Session,
    authz: Option<&authorize::Authz<'_>>,
    req: DecodedRequest,
) -> Option<ResponseKind> {
    let v = req.version;
    let b = broker.as_ref();
    let listener: &str = &session.listener;
    let ctx = RequestContext {
        peer: session.peer,
        client_id: req
            .header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
    };
    Some(match req.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(metadata::api_versions()),
        RequestKind::SaslHandshake(r) => {
            ResponseKind::SaslHandshake(sasl::handshake(&b.auth, session, r, &b.metrics))
        }
        RequestKind::SaslAuthenticate(r) => ResponseKind::SaslAuthenticate({
            let resp = sasl::authenticate(&b.auth, &b.view().image, session, r, &b.metrics).await;
            if session.lock_auth().admits_requests() {
                session.frame_limit.store(
                    b.args.max_request_bytes,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            resp
        }),
        RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
            sasl::alter_user_scram_credentials(&b.admin(), r).await,
        ),
        RequestKind::CreateAcls(r) => {
            ResponseKind::CreateAcls(acls::create_acls(&b.admin(), authz, r).await)
        }
        RequestKind::DescribeAcls(r) => {
            ResponseKind::DescribeAcls(acls::describe_acls(&b.admin(), authz, r))
        }
        RequestKind::DeleteAcls(r) => {
            ResponseKind::DeleteAcls(acls::delete_acls(&b.admin(), authz, r).await)
        }
        RequestKind::DescribeUserScramCredentials(r) => ResponseKind::DescribeUserScramCredentials(
            sasl::describe_user_scram_credentials(&b.admin(), r),
        ),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::metadata(&b.admin(), listener, r, v).await)
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(metadata::describe_cluster(&b.admin(), listener, r))
        }
        RequestKind::DescribeQuorum(r) => ResponseKind::DescribeQuorum(
            quorum::describe_quorum(
                &b.quorum,
                &b.forwarder,
                r,
                v,
                ctx.client_id.starts_with(crate::forward::CLIENT_ID_PREFIX),
            )
            .await,
        ),
        RequestKind::RemoveRaftVoter(r) => {
            ResponseKind::RemoveRaftVoter(quorum::remove_raft_voter(&b.quorum, r).await)
        }
        RequestKind::UnregisterBroker(r) => {
            ResponseKind::UnregisterBroker(quorum::unregister_broker(&b.quorum, r).await)
        }
        RequestKind::AlterPartitionReassignments(r) => ResponseKind::AlterPartitionReassignments(
            reassign::alter_partition_reassignments(&b.admin(), r).await,
        ),
        RequestKind::ListPartitionReassignments(r) => ResponseKind::ListPartitionReassignments(
            reassign::list_partition_reassignments(&b.admin(), r),
        ),
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(&b.reads(), r).await),
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(leader_epoch::offset_for_leader_epoch(&b.reads(), r))
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::list_offsets(&b.reads(), r, v))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(topics::create_topics(&b.admin(), r, v).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(topics::delete_topics(&b.admin(), r).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(topics::create_partitions(&b.admin(), r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(&b.admin(), r))
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(configs::alter_configs(&b.admin(), r).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter_configs(&b.admin(), r).await,
        ),
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(groups::find_coordinator(
            &b.group_services(),
            listener,
            r,
            v,
        )),
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(groups::join_group(&b.group_services(), &ctx, r, v).await)
        }
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(groups::sync_group(&b.group_services(), r, v).await)
        }
        RequestKind::Heartbeat(r) => {
            ResponseKind::Heartbeat(groups::heartbeat(&b.group_services(), r))
        }
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(&b.group_services(), r, v))
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(&b.group_services(), r, v).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(&b.group_services(), r, v))
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(groups::list_groups(&b.group_services(), r, v))
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(&b.group_services(), r, v))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(&b.group_services(), r).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(&b.group_services(), r).await)
        }
        RequestKind::WriteTxnMarkers(r) => {
            ResponseKind::WriteTxnMarkers(txn_markers::write_txn_markers(&b.writes(), r).await)
        }
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(
            producer::init_producer_id(&b.producer_id_services(), r, v).await,
        ),
        RequestKind::AddPartitionsToTxn(r) => ResponseKind::AddPartitionsToTxn(
            transactions::add_partitions_to_txn(&b.transaction_services(), r, v).await,
        ),
        RequestKind::AddOffsetsToTxn(r) => ResponseKind::AddOffsetsToTxn(
            transactions::add_offsets_to_txn(&b.transaction_services(), r, v).await,
        ),
        RequestKind::TxnOffsetCommit(r) => ResponseKind::TxnOffsetCommit(
            groups::txn_offset_commit(&b.group_services(), r, v).await,
        ),
        RequestKind::ListTransactions(r) => ResponseKind::ListTransactions(
            transactions::list_transactions(&b.transaction_services(), r),
        ),
        RequestKind::DescribeTransactions(r) => ResponseKind::DescribeTransactions(
            transactions::describe_transactions(&b.transaction_services(), r),
        ),
        RequestKind::DescribeProducers(r) => ResponseKind::DescribeProducers(
            transactions::describe_producers(&b.transaction_services(), r),
        ),
        RequestKind::EndTxn(r) => {
            ResponseKind::EndTxn(transactions::end_txn(&b.transaction_services(), r, v).await)
        }
        other => {
            // The decoder only lets through APIs listed in protocol::versions,
            // and each of those has an arm above.
            tracing::error!(request = ?std::mem::discriminant(&other), "no handler for an advertised API");
            return None;
        }
    })
}

/// A forwarded produce from another broker (see `produce::forwarded_produce`):
/// its appends now, in order; the returned future waits for its acks.
pub async fn handle_forwarded_produce<'a>(
    broker: &'a Arc<Broker>,
    req: kafka_protocol::messages::ProduceRequest,
) -> BoxFuture<'a, kafka_protocol::messages::ProduceResponse> {
    produce::forwarded_produce(broker.writes(), req).await
}

/// Bound plugins must be uploaded and of the kind they are bound as.
pub(crate) fn check_plugin_bindings(
    plugins: &sluice_plugin_host::PluginHost,
    configs: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let bindings = sluice_plugin_host::Bindings::from_configs(configs);
    for (name, kind) in bindings.named() {
        match plugins.registry.kind(name) {
            None => {
                return Err(format!(
                    "plugin '{name}' is not uploaded; upload it before binding it"
                ));
            }
            Some(k) if k != kind => return Err(format!("plugin '{name}' is a {k}, not a {kind}")),
            Some(_) => {}
        }
    }
    if bindings.failure == sluice_plugin_host::FailurePolicy::DeadLetter
        && bindings.dead_letter_topic.is_none()
    {
        return Err(
            "sluice.plugin.failure.policy=dead-letter needs sluice.plugin.dead.letter.topic".into(),
        );
    }
    Ok(())
}

/// Returns the wire code of `e`, counting it in the error metric.
pub(crate) fn error_code(metrics: &crate::metrics::Metrics, e: ResponseError) -> i16 {
    metrics.errors.with_label_values(&[&format!("{e:?}")]).inc();
    e.code()
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
