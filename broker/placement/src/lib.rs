//! Where the replicas of a topic's partitions live. One pure function, used
//! by the broker (CreateTopics and CreatePartitions without an explicit
//! assignment) and by the Kubernetes operator (which always sends an
//! explicit assignment and records it in the Topic's status), so both sides
//! give the same answer.
//!
//! Rule: over the broker ids sorted ascending, replica `j` of partition `i`
//! sits on broker `(i + j) mod n`. The first replica is the preferred
//! leader, so leaders rotate over the brokers partition by partition, and
//! the replicas of one partition are distinct whenever the replication
//! factor is at most the broker count.

use std::fmt;

/// A request placement cannot satisfy, with a message fit for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementError(pub String);

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlacementError {}

fn sorted_unique(brokers: &[i32]) -> Vec<i32> {
    let mut b = brokers.to_vec();
    b.sort_unstable();
    b.dedup();
    b
}

/// Replicas of partitions `first .. first + count` (partition indexes, so a
/// topic growing from `first` partitions places its new ones the same way
/// it would have placed them at creation).
pub fn assign(
    brokers: &[i32],
    first: usize,
    count: usize,
    replication_factor: usize,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    let sorted = sorted_unique(brokers);
    let n = sorted.len();
    if n == 0 {
        return Err(PlacementError("no brokers to place replicas on".into()));
    }
    if replication_factor == 0 || replication_factor > n {
        return Err(PlacementError(format!(
            "replication factor {replication_factor} must be between 1 and the {n} available brokers"
        )));
    }
    Ok((first..first.saturating_add(count))
        .map(|i| {
            (0..replication_factor)
                .map(|j| sorted[(i + j) % n])
                .collect()
        })
        .collect())
}

/// Checks an explicit assignment: every partition has the same, non-zero
/// number of replicas, no broker twice in one partition, and only brokers
/// of the cluster.
pub fn validate(assignment: &[Vec<i32>], brokers: &[i32]) -> Result<(), PlacementError> {
    let rf = assignment.first().map_or(0, Vec::len);
    for (p, replicas) in assignment.iter().enumerate() {
        if replicas.is_empty() || replicas.len() != rf {
            return Err(PlacementError(format!(
                "partition {p} has {} replicas; every partition needs the same non-zero count ({rf})",
                replicas.len()
            )));
        }
        if sorted_unique(replicas).len() != replicas.len() {
            return Err(PlacementError(format!(
                "partition {p} lists a broker twice: {replicas:?}"
            )));
        }
        if let Some(b) = replicas.iter().find(|b| !brokers.contains(b)) {
            return Err(PlacementError(format!(
                "partition {p} names broker {b}, which is not in the cluster {brokers:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Broker id sets of every size up to 7, in scrambled order and with
    /// gaps, as a cluster's ids may be after scale-downs.
    fn clusters() -> Vec<Vec<i32>> {
        (1..=7)
            .map(|n| (0..n).rev().map(|k| k * 3 + 1).collect())
            .collect()
    }

    #[test]
    fn the_rule() {
        let a = assign(&[2, 0, 1], 0, 4, 3).expect("valid");
        assert_eq!(
            a,
            vec![vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2]]
        );
        assert_eq!(
            assign(&[0, 1, 2], 4, 1, 2).expect("valid"),
            vec![vec![1, 2]]
        );
    }

    /// Exhaustive over small clusters: replicas distinct, only cluster
    /// brokers, every assignment passes `validate`, growing a topic places
    /// new partitions exactly as creating it larger would have.
    #[test]
    fn replicas_are_distinct_and_growth_is_consistent() {
        for brokers in clusters() {
            for rf in 1..=brokers.len() {
                for partitions in 0..40 {
                    let a = assign(&brokers, 0, partitions, rf).expect("valid");
                    assert_eq!(a.len(), partitions);
                    for r in &a {
                        assert_eq!(sorted_unique(r).len(), rf, "{brokers:?} rf {rf}: {r:?}");
                    }
                    validate(&a, &brokers).expect("own assignment validates");
                    for split in 0..=partitions {
                        let mut grown = assign(&brokers, 0, split, rf).expect("valid");
                        grown.extend(
                            assign(&brokers, split, partitions - split, rf).expect("valid"),
                        );
                        assert_eq!(grown, a);
                    }
                }
            }
        }
    }

    /// Leaders (first replicas) and all replicas are spread evenly: no
    /// broker leads or holds more than one partition more than another.
    #[test]
    fn leaders_and_replicas_are_balanced() {
        for brokers in clusters() {
            for rf in 1..=brokers.len() {
                for partitions in 1..40 {
                    let a = assign(&brokers, 0, partitions, rf).expect("valid");
                    let spread = |count: &dyn Fn(i32) -> usize| {
                        let c: Vec<usize> = brokers.iter().map(|b| count(*b)).collect();
                        c.iter().max().copied().unwrap_or(0) - c.iter().min().copied().unwrap_or(0)
                    };
                    let leaders = spread(&|b| a.iter().filter(|r| r[0] == b).count());
                    let replicas = spread(&|b| a.iter().flatten().filter(|x| **x == b).count());
                    assert!(
                        leaders <= 1,
                        "{brokers:?} p {partitions} rf {rf}: leader spread {leaders}"
                    );
                    assert!(
                        replicas <= rf,
                        "{brokers:?} p {partitions} rf {rf}: replica spread {replicas}"
                    );
                }
            }
        }
    }

    #[test]
    fn impossible_requests_are_errors() {
        assert!(assign(&[], 0, 1, 1).is_err());
        assert!(assign(&[0, 1], 0, 1, 3).is_err());
        assert!(assign(&[0, 1], 0, 1, 0).is_err());
        assert!(
            assign(&[1, 1, 1], 0, 1, 2).is_err(),
            "duplicate ids are one broker"
        );
        assert!(validate(&[vec![0, 0]], &[0, 1]).is_err());
        assert!(validate(&[vec![0, 1], vec![0]], &[0, 1]).is_err());
        assert!(validate(&[vec![5]], &[0, 1]).is_err());
        assert!(validate(&[vec![]], &[0, 1]).is_err());
    }
}
