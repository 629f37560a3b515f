//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), and the
//! first offset whose timestamp is >= a given time. As in Kafka, what a
//! consumer of the request's isolation level could fetch bounds the
//! answers: the high watermark (read_uncommitted) or the last stable
//! offset (read_committed).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};

use super::error_code;
use super::services::Reads;
use crate::replication::check_leader_epoch;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub fn list_offsets(b: &Reads<'_>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let view = b.views.current();
    let mut resp = ListOffsetsResponse::default();
    for t in req.topics {
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for p in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            let log = match view
                .lead(t.name.0.as_str(), p.partition_index)
                .and_then(|ls| {
                    check_leader_epoch(p.current_leader_epoch, ls.leader_epoch).map(|()| &ls.log)
                }) {
                Ok(log) => log,
                Err(e) => {
                    pr.error_code = error_code(b.metrics, e);
                    tr.partitions.push(pr);
                    continue;
                }
            };
            let fetchable = if req.isolation_level == 1 {
                log.last_stable_offset()
            } else {
                log.high_watermark()
            };
            let below_fetchable =
                |found: Option<(i64, i64)>| found.filter(|(offset, _)| *offset < fetchable);
            let found = match p.timestamp {
                LATEST => Ok(Some((fetchable, -1))),
                EARLIEST => Ok(Some((log.log_start_offset(), -1))),
                MAX_TIMESTAMP => log.max_timestamp_offset().map(below_fetchable),
                ts if ts >= 0 => log.offset_for_timestamp(ts).map(below_fetchable),
                other => {
                    tracing::debug!(timestamp = other, "unsupported ListOffsets timestamp");
                    pr.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
                    tr.partitions.push(pr);
                    continue;
                }
            };
            match found {
                Ok(Some((offset, ts))) => {
                    pr.offset = offset;
                    pr.timestamp = ts;
                    // The field exists from v4; the codec refuses it earlier.
                    if version >= 4 {
                        pr.leader_epoch = 0;
                    }
                }
                // No record at or after the timestamp: Kafka answers -1/-1.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(partition = %log.name(), error = %e, "offset lookup failed");
                    pr.error_code = error_code(b.metrics, ResponseError::KafkaStorageError);
                }
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}
