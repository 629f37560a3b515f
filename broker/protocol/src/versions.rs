//! The API versions this broker implements. ApiVersions advertises exactly
//! this table (intersected with what the codec crate can decode), and the
//! frame decoder refuses anything outside it.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

/// (api, min, max) that the handlers in `api/` implement.
const IMPLEMENTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 10),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeQuorum, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::WriteTxnMarkers, 1, 1),
    // v4: batched, verify_only (KIP-890 part 1), between brokers; v5 would
    // promise part 2's transaction protocol, which is not offered.
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::DescribeProducers, 0, 0),
    // v0's raw tokens after the handshake are not served: clients that
    // see v1 use SaslAuthenticate (librdkafka, the Java client,
    // kafka-python, KafkaJS all do).
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

/// Our version range for `key`, if we implement it at all.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    let &(_, min, max) = IMPLEMENTED.iter().find(|(k, _, _)| *k == key)?;
    let codec = key.valid_versions();
    let (min, max) = (min.max(codec.min), max.min(codec.max));
    (min <= max).then_some((min, max))
}

pub fn api_versions_response() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = IMPLEMENTED
        .iter()
        .filter_map(|(k, _, _)| {
            let (min, max) = supported(*k)?;
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = min;
            v.max_version = max;
            Some(v)
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_range_is_decodable_by_the_codec() {
        for (k, min, max) in IMPLEMENTED {
            assert_eq!(supported(*k), Some((*min, *max)), "{k:?}");
        }
    }
}
