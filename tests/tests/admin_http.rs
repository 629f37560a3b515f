//! The admin HTTP listener: health, readiness and Prometheus metrics.

use sluice_tests::{Broker, create_topic, http_get, roundtrip_once, unique_name};

#[tokio::test]
async fn healthz_and_readyz_return_200() {
    let broker = Broker::start().expect("broker should start");
    for path in ["/healthz", "/readyz"] {
        let resp = http_get(broker.admin_addr(), path).expect("GET");
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
    }
}

#[tokio::test]
async fn unknown_admin_path_returns_404() {
    let broker = Broker::start().expect("broker should start");
    let resp = http_get(broker.admin_addr(), "/no-such-endpoint").expect("GET");
    assert_eq!(resp.status, 404, "{resp:?}");
}

#[tokio::test]
async fn metrics_expose_sluice_series_after_produce() {
    let broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("metrics");
    create_topic(&bs, &topic, 1, &[])
        .await
        .expect("create topic");
    roundtrip_once(&bs, &topic, b"count me")
        .await
        .expect("round trip");
    let resp = http_get(broker.admin_addr(), "/metrics").expect("GET /metrics");
    assert_eq!(resp.status, 200, "{}", resp.head);
    let sluice_lines: Vec<&str> = resp
        .body
        .lines()
        .filter(|l| l.starts_with("sluice_"))
        .collect();
    assert!(
        !sluice_lines.is_empty(),
        "no sluice_ samples in /metrics:\n{}",
        resp.body
    );
    // Every sample line is `name{labels} value` with a numeric value.
    for line in &sluice_lines {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok(),
            "malformed Prometheus sample: {line:?}"
        );
    }
    assert!(
        resp.body.contains("# TYPE sluice_"),
        "no TYPE metadata for sluice_ metrics"
    );
}
