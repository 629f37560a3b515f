//! This broker's side of the cluster metadata: the topics the applied image
//! names, materialized with the logs of the partitions placed here, and the
//! admin changes to them (proposed through the quorum, `sluice-metadata`).

pub mod topics;
