//! A results checker for fault tests: the history of acknowledged writes
//! against what consumers read back.
//!
//! Every payload is unique (`<partition>-<sequence>`), so a read can be
//! traced to its write. The checker reports:
//!
//! - **lost**: acknowledged, never read;
//! - **duplicated**: read more than once (at different offsets);
//! - **reordered**: within a partition, two acknowledged payloads read in
//!   the opposite order of their sequence numbers (one producer writes
//!   each partition in sequence order, so the log must keep it).
//!
//! Unacknowledged writes may or may not be in the log (their fate is
//! unknown to the producer); they count only towards duplicates.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One record as a consumer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub payload: String,
}

/// A payload for `partition` with sequence `seq`.
pub fn payload(partition: i32, seq: u64) -> String {
    format!("{partition}-{seq:010}")
}

fn parse(payload: &str) -> Option<(i32, u64)> {
    let (p, s) = payload.split_once('-')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

#[derive(Debug, Default)]
pub struct History {
    /// Acknowledged payloads, with the offset the broker reported.
    acked: HashMap<String, (i32, i64)>,
    /// Writes that failed or whose outcome is unknown.
    unacked: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub acked: usize,
    pub unacked: usize,
    pub read: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub reordered: Vec<(String, String)>,
    /// Acknowledged at one offset, read at another.
    pub moved: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.moved.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>();
        write!(
            f,
            "acked {} (unacked {}), read {}: lost {} {:?}, duplicated {} {:?}, reordered {} {:?}, moved {} {:?}",
            self.acked,
            self.unacked,
            self.read,
            self.lost.len(),
            head(&self.lost),
            self.duplicated.len(),
            head(&self.duplicated),
            self.reordered.len(),
            self.reordered.iter().take(5).collect::<Vec<_>>(),
            self.moved.len(),
            head(&self.moved)
        )
    }
}

impl History {
    pub fn acked(&mut self, payload: String, partition: i32, offset: i64) {
        self.acked.insert(payload, (partition, offset));
    }

    pub fn failed(&mut self) {
        self.unacked += 1;
    }

    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    pub fn check(&self, reads: &[Read]) -> Report {
        let mut report = Report {
            acked: self.acked.len(),
            unacked: self.unacked,
            read: reads.len(),
            ..Report::default()
        };
        let mut seen: HashMap<&str, i64> = HashMap::new();
        let mut by_partition: BTreeMap<i32, Vec<&Read>> = BTreeMap::new();
        for r in reads {
            if let Some(first) = seen.insert(&r.payload, r.offset)
                && first != r.offset
            {
                report.duplicated.push(r.payload.clone());
            }
            by_partition.entry(r.partition).or_default().push(r);
        }
        for (payload, (partition, offset)) in &self.acked {
            match seen.get(payload.as_str()) {
                None => report.lost.push(payload.clone()),
                Some(o) if *o != *offset || parse(payload).map(|x| x.0) != Some(*partition) => {
                    report.moved.push(payload.clone())
                }
                Some(_) => {}
            }
        }
        for reads in by_partition.values_mut() {
            reads.sort_by_key(|r| r.offset);
            let mut last: Option<(&str, u64)> = None;
            for r in reads.iter().filter(|r| self.acked.contains_key(&r.payload)) {
                let Some((_, seq)) = parse(&r.payload) else {
                    continue;
                };
                if let Some((prev, prev_seq)) = last
                    && seq < prev_seq
                {
                    report.reordered.push((prev.to_string(), r.payload.clone()));
                }
                last = Some((&r.payload, seq));
            }
        }
        report.lost.sort();
        report.duplicated.sort();
        report
    }
}

impl History {
    /// Like `check`, for records a partitioner plugin moved: each
    /// acknowledged id must be read exactly once, in the partition
    /// `route(id)` names (offsets are not checked: the client was told the
    /// partition it addressed), and within each partition the records from
    /// one addressed partition must keep their sequence order (records
    /// from different addressed partitions may interleave). A negative
    /// `route(id)` means a filter drops the record: it must not be read.
    pub fn check_routed(&self, reads: &[Read], route: impl Fn(&str) -> i32) -> Report {
        let mut report = Report {
            acked: self.acked.len(),
            unacked: self.unacked,
            read: reads.len(),
            ..Report::default()
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for r in reads {
            *seen.entry(&r.payload).or_default() += 1;
            if seen[r.payload.as_str()] == 2 {
                report.duplicated.push(r.payload.clone());
            }
            if self.acked.contains_key(&r.payload) && route(&r.payload) != r.partition {
                report.moved.push(r.payload.clone());
            }
        }
        for payload in self.acked.keys() {
            if !seen.contains_key(payload.as_str()) && route(payload) >= 0 {
                report.lost.push(payload.clone());
            }
        }
        let mut flows: BTreeMap<(i32, i32), Vec<&Read>> = BTreeMap::new();
        for r in reads.iter().filter(|r| self.acked.contains_key(&r.payload)) {
            if let Some((source, _)) = parse(&r.payload) {
                flows.entry((r.partition, source)).or_default().push(r);
            }
        }
        for flow in flows.values_mut() {
            flow.sort_by_key(|r| r.offset);
            for w in flow.windows(2) {
                let (a, b) = (parse(&w[0].payload), parse(&w[1].payload));
                if let (Some((_, x)), Some((_, y))) = (a, b)
                    && y < x
                {
                    report
                        .reordered
                        .push((w[0].payload.clone(), w[1].payload.clone()));
                }
            }
        }
        report.lost.sort();
        report.duplicated.sort();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(partition: i32, offset: i64, seq: u64) -> Read {
        Read {
            partition,
            offset,
            payload: payload(partition, seq),
        }
    }

    #[test]
    fn a_clean_history_is_clean_and_each_fault_is_named() {
        let mut h = History::default();
        for seq in 0..3 {
            h.acked(payload(0, seq), 0, seq as i64);
        }
        h.failed();
        // An unacknowledged write that did land is fine.
        let clean = [read(0, 0, 0), read(0, 1, 1), read(0, 2, 2), read(0, 3, 3)];
        let r = h.check(&clean);
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.acked, r.unacked, r.read), (3, 1, 4));

        let r = h.check(&[read(0, 0, 0), read(0, 2, 2)]);
        assert_eq!(r.lost, vec![payload(0, 1)]);
        assert_eq!(r.moved, Vec::<String>::new());

        let r = h.check(&[read(0, 0, 0), read(0, 1, 1), read(0, 2, 2), read(0, 3, 1)]);
        assert_eq!(r.duplicated, vec![payload(0, 1)]);

        let r = h.check(&[read(0, 0, 0), read(0, 1, 2), read(0, 2, 1)]);
        assert!(!r.reordered.is_empty());
        assert!(
            !r.moved.is_empty(),
            "offsets differ from the acknowledged ones"
        );
        assert!(!r.is_clean());
    }

    #[test]
    fn routed_records_are_checked_against_the_partition_the_router_chose() {
        let mut h = History::default();
        // Addressed partitions 0 and 1; the router sends even seqs to 2.
        let route = |p: &str| {
            if parse(p).is_some_and(|(_, s)| s % 2 == 0) {
                2
            } else {
                3
            }
        };
        for (p, seq) in [(0, 0), (0, 1), (1, 0), (1, 2)] {
            h.acked(payload(p, seq), p, -1);
        }
        let at = |partition, offset, p, seq| Read {
            partition,
            offset,
            payload: payload(p, seq),
        };
        let good = [
            at(2, 0, 1, 0),
            at(2, 1, 0, 0),
            at(2, 2, 1, 2),
            at(3, 0, 0, 1),
        ];
        assert!(h.check_routed(&good, route).is_clean());
        let r = h.check_routed(
            &[
                at(2, 0, 1, 2),
                at(2, 1, 0, 0),
                at(2, 2, 1, 0),
                at(2, 3, 0, 1),
            ],
            route,
        );
        assert_eq!(r.moved, vec![payload(0, 1)]);
        assert_eq!(r.reordered.len(), 1, "1-2 before 1-0 in partition 2");
        let r = h.check_routed(
            &[
                at(2, 0, 1, 0),
                at(2, 1, 1, 0),
                at(2, 2, 0, 0),
                at(2, 3, 1, 2),
            ],
            route,
        );
        assert_eq!(r.duplicated, vec![payload(1, 0)]);
        assert_eq!(r.lost, vec![payload(0, 1)]);
        // A record a filter drops (route -1) must be absent, not lost.
        let dropping = |p: &str| if p == payload(0, 1) { -1 } else { route(p) };
        assert!(h.check_routed(&good[..3], dropping).is_clean());
        assert_eq!(h.check_routed(&good, dropping).moved, vec![payload(0, 1)]);
    }
}
