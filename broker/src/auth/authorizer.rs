//! Deciding whether a principal may do an operation on a resource, Kafka's
//! way (its StandardAuthorizer): super users may do anything; a matching
//! DENY (same operation or ALL) wins; then a matching ALLOW (or one that
//! implies the operation: READ/WRITE/DELETE/ALTER imply DESCRIBE,
//! ALTER_CONFIGS implies DESCRIBE_CONFIGS); a resource no ACL covers is
//! allowed only with `allow.everyone.if.no.acl.found`. ACLs come from the
//! metadata image. Off (everything allowed) unless `authorizer.class.name`
//! is set. Connections on the inter-broker listener are trusted: brokers,
//! and tools that hold the cluster's certificate there.

use std::collections::BTreeSet;

use prometheus::{IntCounterVec, Opts};
use sluice_metadata::acl::{CLUSTER_NAME, Operation, Permission, ResourceType};
use sluice_metadata::image::MetadataImage;

/// Class names (Kafka's) that turn the authorizer on.
pub const AUTHORIZER_CLASS_NAMES: [&str; 3] = [
    "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "kafka.security.authorizer.AclAuthorizer",
    "StandardAuthorizer",
];

pub struct Authorizer {
    pub enabled: bool,
    super_users: BTreeSet<String>,
    allow_if_no_acl: bool,
    /// Denials by resource type and operation.
    pub denied: IntCounterVec,
}

impl Authorizer {
    pub fn new(
        enabled: bool,
        super_users: &str,
        allow_if_no_acl: bool,
    ) -> anyhow::Result<Authorizer> {
        Ok(Authorizer {
            enabled,
            super_users: parse_super_users(super_users)?,
            allow_if_no_acl,
            denied: IntCounterVec::new(
                Opts::new(
                    "sluice_authorization_denied_total",
                    "Operations the authorizer denied, by resource type and operation.",
                ),
                &["resource_type", "operation"],
            )?,
        })
    }

    pub fn is_super_user(&self, principal: &str) -> bool {
        self.super_users.contains(principal)
    }

    /// May `caller` do `op` on resource `name` of type `rt`? Denials
    /// are counted.
    pub fn allows(
        &self,
        image: &MetadataImage,
        caller: &Caller,
        op: Operation,
        rt: ResourceType,
        name: &str,
    ) -> bool {
        let ok = self.decide(image, caller, op, rt, name);
        if !ok {
            self.count_denied(rt, op);
        }
        ok
    }

    /// The decision, not counted (see `allows`).
    pub fn decide(
        &self,
        image: &MetadataImage,
        caller: &Caller,
        op: Operation,
        rt: ResourceType,
        name: &str,
    ) -> bool {
        if !self.enabled || caller.trusted || self.is_super_user(&caller.principal) {
            return true;
        }
        let mut covered = false;
        let mut allowed = false;
        for acl in image.acls.iter().filter(|a| a.covers(rt, name)) {
            covered = true;
            let principal = acl.principal == caller.principal || acl.principal == "User:*";
            let host = acl.host == "*" || acl.host == caller.host;
            if !(principal && host) {
                continue;
            }
            match acl.permission {
                Permission::Deny if acl.operation.denies(op) => return false,
                Permission::Allow if acl.operation.allows(op) => allowed = true,
                _ => {}
            }
        }
        allowed || (!covered && self.allow_if_no_acl)
    }

    fn count_denied(&self, rt: ResourceType, op: Operation) {
        self.denied
            .with_label_values(&[&format!("{rt:?}"), &format!("{op:?}")])
            .inc();
    }

    /// Kafka's authorized-operations bit set for a resource: bit `code`
    /// of each operation allowed (Metadata, DescribeCluster, DescribeGroups).
    pub fn authorized_operations(
        &self,
        image: &MetadataImage,
        caller: &Caller,
        rt: ResourceType,
        name: &str,
    ) -> i32 {
        let ops: &[Operation] = match rt {
            ResourceType::Topic => &[
                Operation::Read,
                Operation::Write,
                Operation::Create,
                Operation::Delete,
                Operation::Alter,
                Operation::Describe,
                Operation::DescribeConfigs,
                Operation::AlterConfigs,
            ],
            ResourceType::Group => &[Operation::Read, Operation::Describe, Operation::Delete],
            ResourceType::Cluster => &[
                Operation::Create,
                Operation::ClusterAction,
                Operation::DescribeConfigs,
                Operation::AlterConfigs,
                Operation::IdempotentWrite,
                Operation::Alter,
                Operation::Describe,
            ],
            ResourceType::TransactionalId => &[Operation::Describe, Operation::Write],
        };
        ops.iter()
            .filter(|op| self.decide(image, caller, **op, rt, name))
            .fold(0i32, |bits, op| bits | (1 << op.code()))
    }
}

/// Who is asking, for the authorizer.
pub struct Caller {
    /// `User:alice`, `User:ANONYMOUS`.
    pub principal: String,
    /// The client's IP address.
    pub host: String,
    /// On the inter-broker listener.
    pub trusted: bool,
}

/// The authorizer the settings describe.
pub fn from_args(args: &crate::config::ServeArgs) -> anyhow::Result<Authorizer> {
    let class = args.authorizer_class_name.trim();
    if !class.is_empty() && !AUTHORIZER_CLASS_NAMES.contains(&class) {
        anyhow::bail!(
            "authorizer-class-name '{class}' is not one of {}",
            AUTHORIZER_CLASS_NAMES.join(", ")
        );
    }
    Authorizer::new(
        !class.is_empty(),
        &args.super_users,
        args.allow_everyone_if_no_acl_found,
    )
}

/// Kafka's `super.users`: `User:a;User:b`.
pub(crate) fn parse_super_users(s: &str) -> anyhow::Result<BTreeSet<String>> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => Ok(p.to_string()),
            _ => anyhow::bail!("super-users: '{p}' is not a principal like User:alice"),
        })
        .collect()
}

/// The cluster resource's name, for callers checking cluster operations.
pub const CLUSTER: &str = CLUSTER_NAME;

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_metadata::acl::{AclBinding, PatternType};

    fn acl(
        rt: ResourceType,
        name: &str,
        pattern: PatternType,
        principal: &str,
        op: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission,
        }
    }

    fn caller(p: &str) -> Caller {
        Caller {
            principal: p.into(),
            host: "10.0.0.1".into(),
            trusted: false,
        }
    }

    #[test]
    fn kafka_semantics() {
        let az = Authorizer::new(true, "User:admin", false).expect("authorizer");
        let mut image = MetadataImage::default();
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        image
            .acls
            .insert(acl(Topic, "orders", Literal, "User:alice", Write, Allow));
        image
            .acls
            .insert(acl(Topic, "ord", Prefixed, "User:alice", Read, Allow));
        image.acls.insert(acl(
            Topic,
            "orders-secret",
            Literal,
            "User:alice",
            Read,
            Deny,
        ));
        image
            .acls
            .insert(acl(Group, "g1", Literal, "User:*", Read, Allow));
        let alice = caller("User:alice");
        let bob = caller("User:bob");
        assert!(az.allows(&image, &alice, Write, Topic, "orders"));
        assert!(
            az.allows(&image, &alice, Describe, Topic, "orders"),
            "WRITE implies DESCRIBE"
        );
        assert!(
            !az.allows(&image, &alice, Write, Topic, "payments"),
            "no ACL: denied by default"
        );
        assert!(
            az.allows(&image, &alice, Read, Topic, "orders-2"),
            "prefixed"
        );
        assert!(
            !az.allows(&image, &alice, Read, Topic, "orders-secret"),
            "deny wins"
        );
        assert!(!az.allows(&image, &bob, Read, Topic, "orders"));
        assert!(az.allows(&image, &bob, Read, Group, "g1"), "User:*");
        assert!(
            az.allows(&image, &caller("User:admin"), Delete, Topic, "orders"),
            "super user"
        );
        assert!(
            az.allows(
                &image,
                &Caller {
                    trusted: true,
                    ..caller("User:ANONYMOUS")
                },
                ClusterAction,
                Cluster,
                CLUSTER
            ),
            "inter-broker"
        );
        let open = Authorizer::new(true, "", true).expect("authorizer");
        assert!(
            open.allows(&image, &bob, Write, Topic, "payments"),
            "no ACL, allow everyone"
        );
        assert!(
            !open.allows(&image, &bob, Write, Topic, "orders"),
            "covered: ACLs decide"
        );
        let off = Authorizer::new(false, "", false).expect("authorizer");
        assert!(off.allows(&image, &bob, Write, Topic, "orders"));
        let bits = az.authorized_operations(&image, &alice, Topic, "orders");
        assert_eq!(
            bits,
            (1 << Write.code()) | (1 << Read.code()) | (1 << Describe.code())
        );
        assert!(Authorizer::new(true, "alice", false).is_err());
    }
}
