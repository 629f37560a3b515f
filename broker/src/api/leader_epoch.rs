//! OffsetForLeaderEpoch: where a leader epoch ended in this leader's log.
//! Followers ask it after a leader change to find their divergent tail;
//! clients (KIP-320) ask it to detect that a leader change truncated
//! records they had already read.

use kafka_protocol::messages::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};

use super::error_code;
use super::services::Reads;
use crate::replication::check_leader_epoch;

pub fn offset_for_leader_epoch(
    b: &Reads<'_>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let view = b.views.current();
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let name = t.topic.0.to_string();
        let mut tr = OffsetForLeaderTopicResult::default();
        tr.topic = t.topic.clone();
        for p in t.partitions {
            let mut r = EpochEndOffset::default();
            r.partition = p.partition;
            r.leader_epoch = -1;
            r.end_offset = -1;
            let answer = view.lead(&name, p.partition).and_then(|ls| {
                check_leader_epoch(p.current_leader_epoch, ls.leader_epoch)
                    .map(|()| ls.log.end_offset_for_epoch(p.leader_epoch))
            });
            match answer {
                Ok((epoch, end)) => {
                    r.leader_epoch = epoch;
                    r.end_offset = end;
                }
                Err(e) => r.error_code = error_code(b.metrics, e),
            }
            tr.partitions.push(r);
        }
        resp.topics.push(tr);
    }
    resp
}
