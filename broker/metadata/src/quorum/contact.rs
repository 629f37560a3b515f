//! When this voter last exchanged a message with each of the others (quorum
//! RPC, heartbeats, and replication traffic the broker reports): the
//! evidence that it is still part of the quorum. A broker that has not
//! heard from a majority of the voters (itself included) for a session
//! timeout is cut off: the others have fenced it, or will, and moved its
//! leaderships (see the broker's `liveness`). A heartbeat the controller
//! answered also counts as a majority: the controller answers only while a
//! majority of the voters acknowledges it (in a five-voter quorum a broker
//! with no replicas hears from the controller alone).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct PeerContact {
    node_id: i32,
    started: Instant,
    /// Last heartbeat the controller answered (it had a majority then).
    controller_confirmed: Mutex<Option<Instant>>,
    last: Mutex<HashMap<i32, Instant>>,
    /// Peers whose port refused a connection since last heard from.
    refused: Mutex<HashMap<i32, Instant>>,
}

impl PeerContact {
    pub fn new(node_id: i32) -> PeerContact {
        PeerContact {
            node_id,
            started: Instant::now(),
            controller_confirmed: Mutex::new(None),
            last: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// A message from `peer` arrived, or one to it was answered.
    pub fn heard_from(&self, peer: i32) {
        if peer == self.node_id {
            return;
        }
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, Instant::now());
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
    }

    /// `peer`'s port refused a connection: its process is probably gone
    /// (the controller checks before fencing it).
    pub fn refused_by(&self, peer: i32) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer)
            .or_insert_with(Instant::now);
    }

    /// Whether `peer` refused a connection since it was last heard from.
    pub fn refused(&self, peer: i32) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&peer)
    }

    /// The controller answered this broker's heartbeat.
    pub fn confirmed_by_controller(&self) {
        *self
            .controller_confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// How long since this broker last had a majority of `voters` within
    /// reach: the age of the latest contact with the least recently heard
    /// of the voters a majority needs besides this one (itself counts if
    /// it is a voter), or of the controller's last answer if that is more
    /// recent. Zero for a single voter; since start for one that has not
    /// heard from enough of them yet.
    pub fn silence(&self, voters: &[i32]) -> Duration {
        let majority = voters.len() / 2 + 1;
        let needed = majority - usize::from(voters.contains(&self.node_id));
        if needed == 0 {
            return Duration::ZERO;
        }
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut ages: Vec<Duration> = voters
            .iter()
            .filter_map(|v| last.get(v))
            .map(Instant::elapsed)
            .collect();
        ages.sort_unstable();
        let by_peers = ages
            .get(needed - 1)
            .copied()
            .unwrap_or_else(|| self.started.elapsed());
        let by_controller = self
            .controller_confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(by_peers, |at| at.elapsed());
        by_peers.min(by_controller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_needs_enough_peers() {
        let single = PeerContact::new(0);
        assert_eq!(single.silence(&[0]), Duration::ZERO);

        let three = PeerContact::new(0);
        let voters = [0, 1, 2];
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            three.silence(&voters) >= Duration::from_millis(20),
            "nobody heard yet"
        );
        three.heard_from(0);
        assert!(
            three.silence(&voters) >= Duration::from_millis(20),
            "itself does not count"
        );
        three.heard_from(7);
        assert!(
            three.silence(&voters) >= Duration::from_millis(20),
            "a broker that is no voter does not count"
        );
        three.heard_from(2);
        assert!(
            three.silence(&voters) < Duration::from_millis(20),
            "one peer + itself is a majority of 3"
        );

        let five = PeerContact::new(0);
        let voters = [0, 1, 2, 3, 4];
        five.heard_from(1);
        std::thread::sleep(Duration::from_millis(20));
        five.heard_from(2);
        let s = five.silence(&voters);
        assert!(
            s >= Duration::from_millis(20),
            "a majority of 5 needs two peers: the older counts ({s:?})"
        );

        // A learner (not a voter) needs a majority of the voters besides itself.
        let learner = PeerContact::new(5);
        learner.heard_from(0);
        learner.heard_from(1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(learner.silence(&voters) >= Duration::from_millis(20));
        // The controller's answer is a majority.
        learner.confirmed_by_controller();
        assert!(learner.silence(&voters) < Duration::from_millis(20));
    }
}
