//! What the User controller should do, as a pure function of what it
//! observed: the resource, its password (from a Secret), and the SCRAM
//! credentials and ACLs the brokers hold for the user. The resource owns
//! every ACL of its principal and its credentials; a converged user gets
//! no writes (the password is sent again only when its Secret, the
//! mechanism or the iterations change, or the brokers lost it).

use std::collections::BTreeSet;

use crate::crd::{
    AclOperation, AclPatternType, AclPermission, AclResourceType, Condition, ScramType, User,
    UserStatus, has_finalizer,
};

/// Finalizer the operator puts on every User whose cluster exists.
pub const FINALIZER: &str = "sluice.dev/user";

/// One ACL of the user's principal, in Kafka's wire codes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acl {
    pub resource_type: i8,
    pub name: String,
    pub pattern_type: i8,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// A SCRAM credential the brokers hold: mechanism (wire code) and
/// iterations.
pub type Credential = (i8, i32);

/// A password, kept out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub Vec<u8>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub user: &'a User,
    pub cluster_exists: bool,
    /// The Cluster has `authorization` (ACLs exist there).
    pub authorization: bool,
    /// Name of an older User resource that manages the same Kafka user of
    /// the same Cluster: this one then touches nothing.
    pub older_claimant: Option<String>,
    /// With `authentication`: the password and `<uid>/<resourceVersion>`
    /// of its Secret, or why it cannot be read.
    pub password: Option<Result<(Password, String), String>>,
    /// What the brokers hold (empty when the cluster is gone).
    pub credentials: Vec<Credential>,
    pub acls: Vec<Acl>,
    pub now: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddFinalizer,
    RemoveFinalizer,
    UpsertCredential {
        user: String,
        mechanism: i8,
        iterations: i32,
        password: Password,
    },
    DeleteCredential {
        user: String,
        mechanism: i8,
    },
    CreateAcls {
        principal: String,
        acls: Vec<Acl>,
    },
    DeleteAcls {
        principal: String,
        acls: Vec<Acl>,
    },
    UpdateStatus(UserStatus),
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// The Kafka user name of a resource.
pub fn user_name(u: &User) -> String {
    u.spec
        .user_name
        .clone()
        .unwrap_or_else(|| u.metadata.name.clone().unwrap_or_default())
}

pub fn principal(u: &User) -> String {
    format!("User:{}", user_name(u))
}

/// Kafka's ScramMechanism codes.
pub fn mechanism_code(t: ScramType) -> i8 {
    match t {
        ScramType::ScramSha256 => 1,
        ScramType::ScramSha512 => 2,
    }
}

fn operation_code(o: AclOperation) -> i8 {
    match o {
        AclOperation::All => 2,
        AclOperation::Read => 3,
        AclOperation::Write => 4,
        AclOperation::Create => 5,
        AclOperation::Delete => 6,
        AclOperation::Alter => 7,
        AclOperation::Describe => 8,
        AclOperation::ClusterAction => 9,
        AclOperation::DescribeConfigs => 10,
        AclOperation::AlterConfigs => 11,
        AclOperation::IdempotentWrite => 12,
    }
}

/// The ACLs the spec asks for, one per operation, sorted, without repeats.
pub fn desired_acls(u: &User) -> Vec<Acl> {
    let set: BTreeSet<Acl> = u
        .spec
        .acls
        .iter()
        .flat_map(|rule| {
            rule.operations.iter().map(move |op| Acl {
                resource_type: match rule.resource.type_ {
                    AclResourceType::Topic => 2,
                    AclResourceType::Group => 3,
                    AclResourceType::Cluster => 4,
                    AclResourceType::TransactionalId => 5,
                },
                name: match rule.resource.type_ {
                    // The cluster resource has one name.
                    AclResourceType::Cluster => "kafka-cluster".into(),
                    _ => rule.resource.name.clone(),
                },
                pattern_type: match rule.resource.pattern_type {
                    AclPatternType::Literal => 3,
                    AclPatternType::Prefixed => 4,
                },
                host: rule.host.clone(),
                operation: operation_code(*op),
                permission: match rule.type_ {
                    AclPermission::Deny => 2,
                    AclPermission::Allow => 3,
                },
            })
        })
        .collect();
    set.into_iter().collect()
}

pub fn plan(o: &Observed<'_>) -> Vec<Action> {
    let u = o.user;
    let user = user_name(u);
    let principal = principal(u);
    let mut actions = Vec::new();
    let deleting = u.metadata.deletion_timestamp.is_some();
    let finalized = has_finalizer(&u.metadata, FINALIZER);
    if deleting {
        if finalized {
            // A resource in conflict never owned the user: nothing to undo.
            if o.cluster_exists && o.older_claimant.is_none() {
                actions.extend(o.credentials.iter().map(|(mechanism, _)| {
                    Action::DeleteCredential {
                        user: user.clone(),
                        mechanism: *mechanism,
                    }
                }));
                if !o.acls.is_empty() {
                    actions.push(Action::DeleteAcls {
                        principal,
                        acls: o.acls.clone(),
                    });
                }
            }
            actions.push(Action::RemoveFinalizer);
        }
        return actions;
    }

    let generation = u.metadata.generation.unwrap_or(0);
    let prev = u.status.as_ref();
    let mut ready = (true, "Applied", String::new());
    let mut credential_source = prev
        .map(|s| s.credential_source.clone())
        .unwrap_or_default();
    if !o.cluster_exists {
        ready = (
            false,
            "ClusterNotFound",
            format!("Cluster {} does not exist", u.spec.cluster.name),
        );
    } else if let Some(older) = &o.older_claimant {
        ready = (
            false,
            "ResourceConflict",
            format!("User {older} already manages {principal}; this one changes nothing"),
        );
    } else {
        if !finalized {
            actions.push(Action::AddFinalizer);
        }
        // Without authorization the brokers keep no ACLs (and refuse the
        // ACL APIs): the spec's rules wait, said in the status.
        let wanted = if o.authorization {
            desired_acls(u)
        } else {
            Vec::new()
        };
        if !o.authorization && !u.spec.acls.is_empty() {
            ready = (
                false,
                "AuthorizationOff",
                format!(
                    "Cluster {} has no authorization: the ACLs are not applied",
                    u.spec.cluster.name
                ),
            );
        }
        let create: Vec<Acl> = wanted
            .iter()
            .filter(|a| !o.acls.contains(a))
            .cloned()
            .collect();
        let delete: Vec<Acl> = o
            .acls
            .iter()
            .filter(|a| !wanted.contains(a))
            .cloned()
            .collect();
        if !delete.is_empty() {
            actions.push(Action::DeleteAcls {
                principal: principal.clone(),
                acls: delete,
            });
        }
        if !create.is_empty() {
            actions.push(Action::CreateAcls {
                principal: principal.clone(),
                acls: create,
            });
        }
        let keep = match (&u.spec.authentication, &o.password) {
            (None, _) => None,
            (Some(auth), Some(Ok((password, source)))) if !password.0.is_empty() => {
                let mechanism = mechanism_code(auth.type_);
                let tag = format!("{source}/{mechanism}/{}", auth.iterations);
                let held = o.credentials.contains(&(mechanism, auth.iterations));
                if !held || credential_source != tag {
                    actions.push(Action::UpsertCredential {
                        user: user.clone(),
                        mechanism,
                        iterations: auth.iterations,
                        password: password.clone(),
                    });
                }
                credential_source = tag;
                Some(mechanism)
            }
            (Some(auth), password) => {
                let why = match password {
                    Some(Err(why)) => why.clone(),
                    _ => format!(
                        "Secret {} key {} holds an empty password",
                        auth.password.secret_key_ref.name, auth.password.secret_key_ref.key
                    ),
                };
                ready = (false, "PasswordUnavailable", why);
                // Whatever the brokers hold stays until a password is had.
                o.credentials.first().map(|c| c.0)
            }
        };
        for (mechanism, _) in &o.credentials {
            if Some(*mechanism) != keep {
                actions.push(Action::DeleteCredential {
                    user: user.clone(),
                    mechanism: *mechanism,
                });
            }
        }
        if u.spec.authentication.is_none() {
            credential_source.clear();
        }
    }
    let (ok, reason, message) = ready;
    let status = UserStatus {
        conditions: vec![Condition::new(
            prev, o.now, generation, "Ready", ok, reason, message,
        )],
        observed_generation: generation,
        principal,
        credential_source,
    };
    if prev != Some(&status) {
        if !ok {
            actions.push(Action::Event {
                warning: true,
                reason: reason.into(),
                message: status.conditions[0].message.clone(),
            });
        }
        actions.push(Action::UpdateStatus(status));
    }
    actions
}
