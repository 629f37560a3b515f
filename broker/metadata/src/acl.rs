//! Access control lists as the cluster keeps them (Kafka's model): a
//! binding says that a principal, from a host, is allowed or denied an
//! operation on resources named literally or by prefix. Replicated in the
//! metadata image; changed by CreateAcls and DeleteAcls. Deciding a
//! request (`sluice_broker::auth::authorizer`) reads them from the image.

use serde::{Deserialize, Serialize};

/// Kafka's resource types (wire codes in `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::TransactionalId,
    ];

    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    pub fn from_code(code: i8) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }
}

/// The one cluster resource's name, as Kafka names it.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name matching every resource of its type.
pub const WILDCARD: &str = "*";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    Literal,
    Prefixed,
}

impl PatternType {
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }

    pub fn from_code(code: i8) -> Option<PatternType> {
        match code {
            3 => Some(PatternType::Literal),
            4 => Some(PatternType::Prefixed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl Operation {
    const TABLE: [(Operation, i8); 11] = [
        (Operation::All, 2),
        (Operation::Read, 3),
        (Operation::Write, 4),
        (Operation::Create, 5),
        (Operation::Delete, 6),
        (Operation::Alter, 7),
        (Operation::Describe, 8),
        (Operation::ClusterAction, 9),
        (Operation::DescribeConfigs, 10),
        (Operation::AlterConfigs, 11),
        (Operation::IdempotentWrite, 12),
    ];

    pub fn code(self) -> i8 {
        Self::TABLE
            .iter()
            .find(|(o, _)| *o == self)
            .map_or(0, |(_, c)| *c)
    }

    pub fn from_code(code: i8) -> Option<Operation> {
        Self::TABLE
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(o, _)| *o)
    }

    /// Does an ALLOW for `self` also allow `wanted`? (Kafka: ALL allows
    /// everything; READ, WRITE, DELETE and ALTER allow DESCRIBE;
    /// ALTER_CONFIGS allows DESCRIBE_CONFIGS.)
    pub fn allows(self, wanted: Operation) -> bool {
        self == wanted
            || self == Operation::All
            || (wanted == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
            || (wanted == Operation::DescribeConfigs && self == Operation::AlterConfigs)
    }

    /// Does a DENY for `self` deny `wanted`? (Only the same operation, or ALL.)
    pub fn denies(self, wanted: Operation) -> bool {
        self == wanted || self == Operation::All
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Deny,
    Allow,
}

impl Permission {
    pub fn code(self) -> i8 {
        match self {
            Permission::Deny => 2,
            Permission::Allow => 3,
        }
    }

    pub fn from_code(code: i8) -> Option<Permission> {
        match code {
            2 => Some(Permission::Deny),
            3 => Some(Permission::Allow),
            _ => None,
        }
    }
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    /// `User:alice`, or `User:*` for every user.
    pub principal: String,
    /// A client address, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclBinding {
    /// Does this binding's resource pattern cover the resource `name` of
    /// type `rt`?
    pub fn covers(&self, rt: ResourceType, name: &str) -> bool {
        self.resource_type == rt
            && match self.pattern_type {
                PatternType::Literal => {
                    self.resource_name == name || self.resource_name == WILDCARD
                }
                PatternType::Prefixed => name.starts_with(&self.resource_name),
            }
    }
}

/// How a filter's resource pattern matches (DescribeAcls, DeleteAcls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternFilter {
    /// Any pattern type, the exact name.
    Any,
    /// Bindings that would apply to the named resource (literal, wildcard,
    /// prefixes of it).
    Match,
    Exactly(PatternType),
}

/// A filter over bindings; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub resource_name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    pub fn matches(&self, b: &AclBinding) -> bool {
        let resource = match (&self.resource_name, self.pattern) {
            (None, PatternFilter::Exactly(p)) => b.pattern_type == p,
            (None, _) => true,
            (Some(name), PatternFilter::Any) => b.resource_name == *name,
            (Some(name), PatternFilter::Exactly(p)) => {
                b.pattern_type == p && b.resource_name == *name
            }
            (Some(name), PatternFilter::Match) => match b.pattern_type {
                PatternType::Literal => b.resource_name == *name || b.resource_name == WILDCARD,
                PatternType::Prefixed => name.starts_with(&b.resource_name),
            },
        };
        resource
            && self.resource_type.is_none_or(|t| t == b.resource_type)
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && self.operation.is_none_or(|o| o == b.operation)
            && self.permission.is_none_or(|p| p == b.permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: &str, pattern: PatternType, op: Operation) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: op,
            permission: Permission::Allow,
        }
    }

    #[test]
    fn patterns_cover_literal_wildcard_and_prefixed_names() {
        assert!(
            binding("orders", PatternType::Literal, Operation::Read)
                .covers(ResourceType::Topic, "orders")
        );
        assert!(
            !binding("orders", PatternType::Literal, Operation::Read)
                .covers(ResourceType::Topic, "orders2")
        );
        assert!(
            binding("*", PatternType::Literal, Operation::Read).covers(ResourceType::Topic, "x")
        );
        assert!(
            binding("ord", PatternType::Prefixed, Operation::Read)
                .covers(ResourceType::Topic, "orders")
        );
        assert!(
            !binding("ord", PatternType::Prefixed, Operation::Read)
                .covers(ResourceType::Group, "orders")
        );
        assert!(
            !binding("*", PatternType::Prefixed, Operation::Read).covers(ResourceType::Topic, "x")
        );
    }

    #[test]
    fn implications_follow_kafka() {
        assert!(Operation::Read.allows(Operation::Describe));
        assert!(Operation::AlterConfigs.allows(Operation::DescribeConfigs));
        assert!(Operation::All.allows(Operation::Write));
        assert!(!Operation::Describe.allows(Operation::Read));
        assert!(!Operation::Read.denies(Operation::Describe));
        assert!(Operation::All.denies(Operation::Describe));
    }

    #[test]
    fn filters() {
        let b = binding("ord", PatternType::Prefixed, Operation::Read);
        let mut f = AclFilter {
            resource_type: None,
            resource_name: Some("orders".into()),
            pattern: PatternFilter::Match,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        };
        assert!(f.matches(&b));
        f.pattern = PatternFilter::Any;
        assert!(!f.matches(&b));
        f.resource_name = Some("ord".into());
        assert!(f.matches(&b));
        f.pattern = PatternFilter::Exactly(PatternType::Literal);
        assert!(!f.matches(&b));
        f.pattern = PatternFilter::Exactly(PatternType::Prefixed);
        f.permission = Some(Permission::Deny);
        assert!(!f.matches(&b));
    }
}
