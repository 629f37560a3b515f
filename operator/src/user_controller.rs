//! The User controller: observe (the Cluster, the password Secret, the
//! credentials and ACLs the brokers hold for the user), plan (`user_plan`,
//! pure), then perform the actions in order.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action as Requeue;

use crate::context::{self, Context};
use crate::crd::User;
use crate::error::{Error, Result};
use crate::kube_writes;
use crate::topic_controller::{connect, live_cluster};
use crate::user_plan::{self, Action, FINALIZER, Observed, Password};

pub const CONTROLLER: &str = "user";

pub async fn reconcile(user: Arc<User>, ctx: Arc<Context>) -> Result<Requeue> {
    let metrics = ctx.metrics.clone();
    metrics
        .measure(CONTROLLER, reconcile_inner(&user, &ctx))
        .await
}

/// The password and `<uid>/<resourceVersion>` of its Secret, or why it
/// cannot be had (the user's to fix: a condition, not an error).
async fn password(
    ctx: &Context,
    ns: &str,
    u: &User,
) -> Result<Option<Result<(Password, String), String>>> {
    let Some(auth) = &u.spec.authentication else {
        return Ok(None);
    };
    let r = &auth.password.secret_key_ref;
    let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&r.name)
        .await?
    else {
        return Ok(Some(Err(format!("Secret {} does not exist", r.name))));
    };
    let source = format!(
        "{}/{}",
        secret.metadata.uid.clone().unwrap_or_default(),
        secret.metadata.resource_version.clone().unwrap_or_default()
    );
    Ok(Some(
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| (Password(b.0.clone()), source))
            .ok_or_else(|| format!("Secret {} has no key {}", r.name, r.key)),
    ))
}

async fn reconcile_inner(u: &User, ctx: &Context) -> Result<Requeue> {
    let ns = u.namespace().unwrap_or_default();
    let api = Api::<User>::namespaced(ctx.client.clone(), &ns);
    let now = context::now();
    let cluster = live_cluster(ctx, &ns, &u.spec.cluster.name).await?;
    let user = user_plan::user_name(u);
    let principal = user_plan::principal(u);
    let all = api.list(&ListParams::default()).await?.items;
    let older_claimant = crate::crd::older_claimant(u, &all, |o| {
        o.spec.cluster == u.spec.cluster && user_plan::user_name(o) == user
    });
    let authorization = cluster
        .as_ref()
        .is_some_and(|c| c.spec.authorization.is_some());
    let (mut admin, mut credentials, mut acls) = (None, Vec::new(), Vec::new());
    if let Some(c) = cluster.as_ref().filter(|_| older_claimant.is_none()) {
        let mut a = connect(ctx, c).await?;
        credentials = a.scram_credentials(&user).await.map_err(Error::Broker)?;
        if authorization {
            acls = a.acls_of(&principal).await.map_err(Error::Broker)?;
        }
        admin = Some(a);
    }
    let observed = Observed {
        user: u,
        cluster_exists: cluster.is_some(),
        authorization,
        older_claimant,
        password: password(ctx, &ns, u).await?,
        credentials,
        acls,
        now: &now,
    };
    for action in user_plan::plan(&observed) {
        let broker = match &action {
            Action::AddFinalizer => {
                kube_writes::add_finalizer(&api, u, FINALIZER).await?;
                continue;
            }
            Action::RemoveFinalizer => {
                kube_writes::remove_finalizer(&api, u, FINALIZER).await?;
                return Ok(Requeue::await_change());
            }
            Action::UpdateStatus(status) => {
                kube_writes::apply_status(&api, u, status).await?;
                continue;
            }
            Action::Event {
                warning,
                reason,
                message,
            } => {
                kube_writes::event(ctx, u, *warning, reason, message).await;
                continue;
            }
            _ => admin.as_mut().ok_or_else(|| {
                Error::Invalid("planned a broker write without a broker connection".into())
            })?,
        };
        let done = match &action {
            Action::UpsertCredential {
                user,
                mechanism,
                iterations,
                password,
            } => {
                broker
                    .upsert_scram_credential(user, *mechanism, *iterations, password)
                    .await
            }
            Action::DeleteCredential { user, mechanism } => {
                broker.delete_scram_credential(user, *mechanism).await
            }
            Action::CreateAcls { principal, acls } => broker.create_acls(principal, acls).await,
            Action::DeleteAcls { principal, acls } => broker.delete_acls(principal, acls).await,
            _ => Ok(()),
        };
        if let Err(e) = done {
            kube_writes::event(ctx, u, true, "BrokerError", &format!("{e:#}")).await;
            return Err(Error::Broker(e));
        }
    }
    Ok(Requeue::requeue(ctx.resync))
}
