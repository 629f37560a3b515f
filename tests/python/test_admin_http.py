"""The broker's admin HTTP listener: health, readiness and Prometheus metrics."""

from __future__ import annotations

import re

from sluice_testlib import ck_create_topic, ck_produce_all, ck_producer, parse_prometheus


def test_healthz_returns_200(broker, bootstrap):
    status, _, _ = broker.http_get("/healthz")
    assert status == 200


def test_readyz_returns_200_when_ready(broker, bootstrap):
    status, _, _ = broker.http_get("/readyz")
    assert status == 200


def test_unknown_admin_path_is_404(broker, bootstrap):
    status, _, _ = broker.http_get("/definitely-not-a-route")
    assert status == 404


def test_metrics_is_prometheus_text(broker, bootstrap):
    status, headers, body = broker.http_get("/metrics")
    assert status == 200
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype.startswith("text/plain"), ctype
    samples = parse_prometheus(body)  # raises on a malformed line
    assert any(name.startswith("sluice_") for name, _, _ in samples), "no sluice_* metrics exposed"
    assert re.search(r"^# TYPE sluice_\w+ (counter|gauge|histogram|summary|untyped)$", body, re.M)


def test_metrics_count_produced_data(broker, bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    payload = b"m" * 1000
    ck_produce_all(ck_producer(bootstrap), topic, [{"value": payload} for _ in range(20)])

    _, _, body = broker.http_get("/metrics")
    samples = parse_prometheus(body)
    # Loose on purpose: any sluice_ series about produce / bytes or records in
    # (by name or label) that has counted something.
    wanted = re.compile(r"(?i)produce|bytes_in|in_bytes|records_in|messages_in|appended")
    hits = [(n, l, v) for n, l, v in samples if n.startswith("sluice_") and wanted.search(n + l) and v > 0]
    assert hits, "no non-zero sluice_* produce/bytes-in metric after producing; sluice_ series:\n" + "\n".join(
        f"{n}{l} {v}" for n, l, v in samples if n.startswith("sluice_")
    )
