//! When this voter last exchanged a message with each of the others (quorum
//! RPC, heartbeats, and replication traffic the broker reports): the
//! evidence that it is still part of the quorum. A broker that has not
//! heard from a majority of the voters (itself included) for a session
//! timeout is cut off: the others have fenced it, or will, and moved its
//! leaderships (see the broker's `liveness`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct PeerContact {
    node_id: i32,
    /// Voters, this one included.
    voters: usize,
    started: Instant,
    last: Mutex<HashMap<i32, Instant>>,
    /// Peers whose port refused a connection since last heard from.
    refused: Mutex<HashMap<i32, Instant>>,
}

impl PeerContact {
    pub fn new(node_id: i32, voters: usize) -> PeerContact {
        PeerContact {
            node_id,
            voters,
            started: Instant::now(),
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

    /// How long since this voter last had a majority of the quorum within
    /// reach: the age of the latest contact with the least recently heard
    /// of the peers a majority needs besides this voter. Zero for a single
    /// voter; since start for one that has not heard from enough peers yet.
    pub fn silence(&self) -> Duration {
        let needed = self.voters / 2;
        if needed == 0 {
            return Duration::ZERO;
        }
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut ages: Vec<Duration> = last.values().map(Instant::elapsed).collect();
        ages.sort_unstable();
        ages.get(needed - 1)
            .copied()
            .unwrap_or_else(|| self.started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_needs_enough_peers() {
        let single = PeerContact::new(0, 1);
        assert_eq!(single.silence(), Duration::ZERO);

        let three = PeerContact::new(0, 3);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            three.silence() >= Duration::from_millis(20),
            "nobody heard yet"
        );
        three.heard_from(0);
        assert!(
            three.silence() >= Duration::from_millis(20),
            "itself does not count"
        );
        three.heard_from(2);
        assert!(
            three.silence() < Duration::from_millis(20),
            "one peer + itself is a majority of 3"
        );

        let five = PeerContact::new(0, 5);
        five.heard_from(1);
        std::thread::sleep(Duration::from_millis(20));
        five.heard_from(2);
        let s = five.silence();
        assert!(
            s >= Duration::from_millis(20),
            "a majority of 5 needs two peers: the older counts ({s:?})"
        );
    }
}
