"""kcat (librdkafka CLI) smoke tests against sluice-broker."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sluice_testlib import ck_create_topic

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (scripts/install-test-deps.sh)")

KCAT_TIMEOUT = 30


def kcat(*args, input_bytes=None, check=True):
    proc = subprocess.run(
        ["kcat", *args],
        input=input_bytes,
        stdin=None if input_bytes is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=KCAT_TIMEOUT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kcat {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\nstderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def test_kcat_metadata_lists_broker_and_topic(bootstrap, topic):
    ck_create_topic(bootstrap, topic, partitions=3)
    out = kcat("-b", bootstrap, "-L", "-J", "-m", "10").stdout
    md = json.loads(out)
    host, port = bootstrap.rsplit(":", 1)
    assert len(md["brokers"]) == 1
    assert md["brokers"][0]["name"] == f"{host}:{port}"
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics, sorted(topics)
    assert sorted(p["partition"] for p in topics[topic]["partitions"]) == [0, 1, 2]
    broker_id = md["brokers"][0]["id"]
    assert all(p["leader"] == broker_id for p in topics[topic]["partitions"])

    # Plain-text listing mentions both too.
    text = kcat("-b", bootstrap, "-L", "-m", "10").stdout.decode()
    assert "1 brokers:" in text
    assert f'topic "{topic}" with 3 partitions' in text


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produce_and_consume_with_codec(bootstrap, topic, codec):
    ck_create_topic(bootstrap, topic)
    lines = [f"key{i}:value {i} {codec} " + "x" * i for i in range(25)]
    data = ("\n".join(lines) + "\n").encode()
    kcat("-b", bootstrap, "-P", "-t", topic, "-p", "0", "-K", ":", "-z", codec, "-X", "linger.ms=20",
         input_bytes=data)

    out = kcat(
        "-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q",
        "-f", "%o|%k|%s\n", "-m", "10",
    ).stdout.decode()
    got = out.splitlines()
    expected = [f"{i}|key{i}|value {i} {codec} " + "x" * i for i in range(25)]
    assert got == expected


def test_kcat_consume_with_headers_and_count(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    kcat("-b", bootstrap, "-P", "-t", topic, "-H", "trace=abc", "-H", "trace=def", input_bytes=b"hello\nworld\n")
    out = kcat(
        "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-c", "2", "-q", "-f", "%h|%s\n", "-m", "10",
    ).stdout.decode()
    assert out.splitlines() == ["trace=abc,trace=def|hello", "trace=abc,trace=def|world"]


def test_kcat_consume_from_offset_and_end(bootstrap, topic):
    ck_create_topic(bootstrap, topic)
    kcat("-b", bootstrap, "-P", "-t", topic, input_bytes=b"".join(b"m%d\n" % i for i in range(10)))
    out = kcat("-b", bootstrap, "-C", "-t", topic, "-o", "7", "-e", "-q", "-f", "%o:%s\n").stdout.decode()
    assert out.splitlines() == ["7:m7", "8:m8", "9:m9"]
    out = kcat("-b", bootstrap, "-C", "-t", topic, "-o", "-2", "-e", "-q", "-f", "%o:%s\n").stdout.decode()
    assert out.splitlines() == ["8:m8", "9:m9"]
