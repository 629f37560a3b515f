"""Client-compatibility tests for sluice-broker with real Kafka clients.

Clients exercised: kafka-python, confluent-kafka (librdkafka) and the `kcat`
CLI. Every test module starts its own broker process (`sluice-broker serve`
on 127.0.0.1:0 with a temporary data dir), and tests that restart or
reconfigure a broker start a private one, so modules are independent and
can run in parallel (e.g. with pytest-xdist, if installed).

How to run, from the repo root:

    bash scripts/install-test-deps.sh        # kcat, kafka-python, confluent-kafka, pytest
    cargo build -p sluice-broker             # builds target/debug/sluice-broker
    python3 -m pytest tests/python -q        # whole suite
    python3 -m pytest tests/python/test_kcat.py -q -k gzip   # a subset

Environment:
    SLUICE_BROKER_BIN       broker binary to use (default: target/debug/sluice-broker)
    SLUICE_TEST_TIMEOUT     per-test watchdog in seconds (default 90)
    SLUICE_STARTUP_TIMEOUT  seconds to wait for the broker's ready line (default 30)

The original client modules use manual assignment with explicit offsets;
consumer groups, committed offsets and idempotent producers are covered by
test_groups_confluent.py and test_groups_kafka_python.py (their module broker
gets extra `serve` flags through a module-level SLUICE_BROKER_ARGS, and
consumers that must be SIGKILLed run as consumer_proc.py subprocesses).
When a test fails, the broker's stderr log is attached to the report.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sluice_testlib import Broker, BrokerError, Cluster, broker_binary, unique_topic  # noqa: E402

TEST_TIMEOUT_S = int(os.environ.get("SLUICE_TEST_TIMEOUT", "90"))


@pytest.fixture(scope="session")
def broker_bin():
    try:
        return broker_binary()
    except BrokerError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def broker_factory(broker_bin, tmp_path_factory, request):
    """Start brokers private to one test (restarts, special flags):
    broker_factory(extra_args=(...), data_dir=None). Stopped at teardown."""
    started: list[Broker] = []
    request.node._sluice_brokers = started

    def make(extra_args=(), data_dir=None, name="broker"):
        base = tmp_path_factory.mktemp(name)
        b = Broker(
            broker_bin,
            data_dir=data_dir or (base / "data"),
            log_path=base / "broker.log",
            extra_args=extra_args,
        )
        started.append(b)
        b.start()
        return b

    yield make
    gc.collect()  # destroy this test's client handles before their broker goes away
    for b in started:
        try:
            b.stop()
        except BrokerError:
            pass


def pytest_generate_tests(metafunc):
    """A module that sets SLUICE_TOPOLOGIES = ("one", "three") runs every
    test that uses the module broker twice: against one broker and against
    a three-broker cluster."""
    topologies = getattr(metafunc.module, "SLUICE_TOPOLOGIES", None)
    if topologies and "topology" in metafunc.fixturenames:
        metafunc.parametrize("topology", topologies, indirect=True, scope="module")


@pytest.fixture(scope="module")
def topology(request):
    return getattr(request, "param", "one")


@pytest.fixture(scope="module")
def broker(broker_bin, tmp_path_factory, request, topology):
    """A broker shared by the tests of one module (tests use unique topics),
    or a three-broker cluster standing in for it (see SLUICE_TOPOLOGIES)."""
    base = tmp_path_factory.mktemp(f"module-{topology}")
    # A module may set SLUICE_BROKER_ARGS = (...) for extra `serve` flags.
    extra = tuple(getattr(request.module, "SLUICE_BROKER_ARGS", ()))
    if topology == "three":
        b = Cluster(broker_bin, base, 3, extra_args=extra)
    else:
        b = Broker(broker_bin, data_dir=base / "data", log_path=base / "broker.log", extra_args=extra)
    try:
        b.start()
    except BrokerError as e:
        pytest.fail(str(e), pytrace=False)
    yield b
    gc.collect()
    try:
        b.stop()
    except BrokerError:
        pass


@pytest.fixture
def bootstrap(broker):
    if not broker.running:
        # A previous test in this module crashed the broker: fail loudly
        # rather than letting every client time out.
        pytest.fail(f"module broker is not running (rc={broker.proc and broker.proc.poll()})\n"
                    f"{broker.log_tail()}", pytrace=False)
    return broker.kafka_addr


@pytest.fixture
def topic(request):
    return unique_topic(request.node.name[:60])


# -- watchdog: no test may hang the suite ------------------------------------
@pytest.fixture(autouse=True)
def _watchdog(request):
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    # A test that must run longer says so: @pytest.mark.timeout_s(N).
    marker = request.node.get_closest_marker("timeout_s")
    limit = int(marker.args[0]) if marker else TEST_TIMEOUT_S

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded its {limit}s limit (SLUICE_TEST_TIMEOUT or timeout_s)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- attach broker logs to failing tests ----------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        brokers = list(getattr(item, "_sluice_brokers", []))
        # The module broker is usually reached through `bootstrap`, not as a
        # direct argument; find it in the fixture cache.
        fixtureinfo = getattr(item, "_fixtureinfo", None)
        if fixtureinfo is not None:
            for fd in fixtureinfo.name2fixturedefs.get("broker", ()):
                cached = getattr(fd, "cached_result", None)
                if cached and isinstance(cached[0], (Broker, Cluster)) and cached[0] not in brokers:
                    brokers.append(cached[0])
        for b in brokers:
            rep.sections.append((f"broker stderr ({b.log_path})", b.log_tail()))
