"""Security with the clients users keep, on 3-broker clusters whose clients
and brokers use separate listeners (CLIENT, and INTERNAL for the brokers'
own traffic): confluent-kafka over SASL_SSL with SCRAM-SHA-512 and over
mutual TLS, kafka-python over SASL_PLAINTEXT with PLAIN. Each produces,
consumes in a group and makes admin calls; wrong credentials are refused.
Users are created with confluent-kafka's AdminClient
(AlterUserScramCredentials) on the inter-broker listener."""

import datetime
import ipaddress

import pytest

from sluice_testlib import Cluster, unique_topic, wait_until

RECORDS = 50


def _pki(directory):
    """A CA, a broker certificate (localhost, 127.0.0.1; server and client
    use) as a PEM keystore, and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key):
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Sluice test CA"))
        .issuer_name(name("Sluice test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn, sans):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return pem_key(key), cert.public_bytes(serialization.Encoding.PEM)

    broker_key, broker_cert = leaf(
        "broker", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    client_key, client_cert = leaf("client", [])
    files = {
        "ca": ("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        "keystore": ("broker.pem", broker_key + broker_cert),
        "client_cert": ("client.crt", client_cert),
        "client_key": ("client.key", client_key),
    }
    out = {}
    for k, (file, data) in files.items():
        path = directory / file
        path.write_bytes(data)
        out[k] = str(path)
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return _pki(tmp_path_factory.mktemp("pki"))


def _cluster(broker_bin, tmp_path_factory, split, extra_args):
    base = tmp_path_factory.mktemp("secure")
    return Cluster(broker_bin, base, n=3, split=split, extra_args=extra_args).start()


def _with_client_cert(pki):
    """librdkafka settings for TLS with the test client's certificate."""
    return {
        "security.protocol": "ssl",
        "ssl.ca.location": pki["ca"],
        "ssl.certificate.location": pki["client_cert"],
        "ssl.key.location": pki["client_key"],
    }


def _create_users(bootstrap, users, **security):
    """users: (name, password, mechanism) with mechanism SCRAM-SHA-256/512."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap, **security})
    upserts = [
        UserScramCredentialUpsertion(
            name,
            ScramCredentialInfo(getattr(ScramMechanism, mechanism.replace("-", "_")), 4096),
            password.encode(),
        )
        for name, password, mechanism in users
    ]
    for fut in admin.alter_user_scram_credentials(upserts).values():
        fut.result(timeout=20)
    return admin


def _wait_users_everywhere(cluster, users, **security):
    """Every broker knows the users (metadata reaches them in turn)."""
    from confluent_kafka.admin import AdminClient

    for addr in cluster.internal_addr.split(","):
        admin = AdminClient({"bootstrap.servers": addr, **security})

        def known():
            desc = admin.describe_user_scram_credentials(users)
            try:
                return all(f.result(timeout=10).scram_credential_infos for f in desc.values())
            except Exception:  # noqa: BLE001 - not there yet
                return False

        wait_until(known, timeout=20, what=f"users on {addr}")


def _confluent_round_trip(bootstrap, **security):
    """Create a topic (RF 3), produce, consume in a group and commit."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = unique_topic("secure")
    admin = AdminClient({"bootstrap.servers": bootstrap, **security})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)])[topic].result(timeout=20)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, **security})
    for i in range(RECORDS):
        producer.produce(topic, key=f"k{i}", value=f"v{i}")
    assert producer.flush(30) == 0
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique_topic("secure-group"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        **security,
    })
    consumer.subscribe([topic])
    seen = set()

    def all_seen():
        for m in consumer.consume(num_messages=RECORDS, timeout=0.5):
            assert m.error() is None, m.error()
            seen.add(m.value())
        return len(seen) == RECORDS

    wait_until(all_seen, timeout=30, what="every record consumed")
    consumer.commit(asynchronous=False)
    committed = consumer.committed(consumer.assignment(), timeout=10)
    assert sum(tp.offset for tp in committed) == RECORDS
    consumer.close()
    assert topic in admin.list_topics(timeout=10).topics


def _refused(bootstrap, **security):
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **security})
    with pytest.raises(Exception):  # noqa: B017 - any failure to get metadata
        admin.list_topics(timeout=5)


def test_confluent_kafka_over_sasl_ssl_with_scram_sha_512(broker_bin, tmp_path_factory, pki):
    cluster = _cluster(
        broker_bin,
        tmp_path_factory,
        ("SASL_SSL", "SSL"),
        ("--ssl-keystore-location", pki["keystore"], "--ssl-truststore-location", pki["ca"]),
    )
    try:
        internal = _with_client_cert(pki)
        _create_users(cluster.internal_addr, [("alice", "alice-secret", "SCRAM-SHA-512")], **internal)
        _wait_users_everywhere(cluster, ["alice"], **internal)
        alice = {
            "security.protocol": "sasl_ssl",
            "ssl.ca.location": pki["ca"],
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "alice",
            "sasl.password": "alice-secret",
        }
        _confluent_round_trip(cluster.kafka_addr, **alice)
        _refused(cluster.kafka_addr, **{**alice, "sasl.password": "wrong"})
        _refused(cluster.kafka_addr, **{**alice, "sasl.username": "mallory"})
    finally:
        cluster.stop()


def test_confluent_kafka_over_mutual_tls(broker_bin, tmp_path_factory, pki):
    cluster = _cluster(
        broker_bin,
        tmp_path_factory,
        ("SSL", "SSL"),
        (
            "--ssl-keystore-location", pki["keystore"],
            "--ssl-truststore-location", pki["ca"],
            "--ssl-client-auth", "required",
        ),
    )
    try:
        _confluent_round_trip(cluster.kafka_addr, **_with_client_cert(pki))
        _refused(cluster.kafka_addr, **{"security.protocol": "ssl", "ssl.ca.location": pki["ca"]})
    finally:
        cluster.stop()


def test_kafka_python_over_sasl_plaintext_with_plain(broker_bin, tmp_path_factory):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    cluster = _cluster(broker_bin, tmp_path_factory, ("SASL_PLAINTEXT", "PLAINTEXT"), ())
    try:
        _create_users(cluster.internal_addr, [("bob", "bob-secret", "SCRAM-SHA-256")])
        _wait_users_everywhere(cluster, ["bob"])
        bob = dict(
            bootstrap_servers=cluster.kafka_addr,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username="bob",
            sasl_plain_password="bob-secret",
            request_timeout_ms=20000,
        )
        topic = unique_topic("kp-secure")
        admin = KafkaAdminClient(**bob)
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)])
        producer = KafkaProducer(acks="all", **bob)
        for i in range(RECORDS):
            producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        producer.flush(30)
        group = unique_topic("kp-secure-group")
        consumer = KafkaConsumer(
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **bob,
        )
        seen = set()

        def all_seen():
            for records in consumer.poll(timeout_ms=500).values():
                seen.update(r.value for r in records)
            return len(seen) == RECORDS

        wait_until(all_seen, timeout=30, what="every record consumed")
        consumer.commit()
        consumer.close()
        assert topic in admin.list_topics()
        groups = {g["group_id"] for g in admin.list_groups()}
        assert group in groups, groups
        admin.close()
        with pytest.raises(Exception):  # noqa: B017 - kafka-python raises on bootstrap
            KafkaAdminClient(**{**bob, "sasl_plain_password": "wrong"})
    finally:
        cluster.stop()


def test_acls_with_confluent_kafka_and_kafka_python(broker_bin, tmp_path_factory):
    """alice may write and read `allowed` and read group `g-allowed`;
    everything else is refused, whichever client she uses; admin is a
    super user."""
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        NewTopic,
        ResourcePatternType,
        ResourceType,
    )

    cluster = _cluster(
        broker_bin,
        tmp_path_factory,
        ("SASL_PLAINTEXT", "PLAINTEXT"),
        ("--authorizer-class-name", "StandardAuthorizer", "--super-users", "User:admin"),
    )
    try:
        setup = _create_users(
            cluster.internal_addr,
            [("alice", "alice-pw", "SCRAM-SHA-512"), ("admin", "admin-pw", "SCRAM-SHA-512")],
        )
        futs = setup.create_topics([NewTopic(t, 1, 3) for t in ("allowed", "other")])
        for f in futs.values():
            f.result(timeout=20)

        def acl(rt, name, op):
            return AclBinding(rt, name, ResourcePatternType.LITERAL, "User:alice", "*", op, AclPermissionType.ALLOW)

        for f in setup.create_acls([
            acl(ResourceType.TOPIC, "allowed", AclOperation.WRITE),
            acl(ResourceType.TOPIC, "allowed", AclOperation.READ),
            acl(ResourceType.GROUP, "g-allowed", AclOperation.READ),
        ]).values():
            f.result(timeout=20)
        _wait_users_everywhere(cluster, ["alice", "admin"])

        def acls_everywhere():
            from confluent_kafka.admin import AclBindingFilter

            flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                   AclOperation.ANY, AclPermissionType.ANY)
            for addr in cluster.internal_addr.split(","):
                a = AdminClient({"bootstrap.servers": addr})
                if len(a.describe_acls(flt).result(timeout=10)) != 3:
                    return False
            return True

        wait_until(acls_everywhere, timeout=20, what="ACLs on every broker")
        alice = {
            "bootstrap.servers": cluster.kafka_addr,
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "alice",
            "sasl.password": "alice-pw",
        }
        results = {}

        def report(err, msg):
            results[msg.topic()] = err

        producer = Producer({**alice, "message.timeout.ms": 10000})
        producer.produce("allowed", value=b"v", on_delivery=report)
        producer.produce("other", value=b"v", on_delivery=report)
        producer.flush(20)
        assert results["allowed"] is None, results
        assert results["other"] is not None and results["other"].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, results

        ok = Consumer({**alice, "group.id": "g-allowed", "auto.offset.reset": "earliest"})
        ok.subscribe(["allowed"])
        got = []
        wait_until(lambda: got.extend(m for m in ok.consume(1, 0.5) if not m.error()) or got,
                   timeout=20, what="alice reads the allowed topic")
        ok.close()
        refused = Consumer({**alice, "group.id": "g-other", "auto.offset.reset": "earliest"})
        refused.subscribe(["allowed"])
        errors = []

        def group_refused():
            for m in refused.consume(1, 0.5):
                if m.error():
                    errors.append(m.error().code())
            return KafkaError.GROUP_AUTHORIZATION_FAILED in errors

        wait_until(group_refused, timeout=20, what="GROUP_AUTHORIZATION_FAILED for another group")
        refused.close()
        listed = AdminClient(alice).list_topics(timeout=10).topics
        assert "allowed" in listed and "other" not in listed, sorted(listed)

        # kafka-python, same user: the other topic is refused too.
        from kafka import KafkaProducer
        from kafka.errors import TopicAuthorizationFailedError

        kp = KafkaProducer(
            bootstrap_servers=cluster.kafka_addr,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username="alice",
            sasl_plain_password="alice-pw",
            max_block_ms=10000,
        )
        kp.send("allowed", b"v").get(timeout=20)
        with pytest.raises(TopicAuthorizationFailedError):
            kp.send("other", b"v").get(timeout=20)
        kp.close()

        # The super user is not limited.
        admin = {**alice, "sasl.username": "admin", "sasl.password": "admin-pw"}
        assert "other" in AdminClient(admin).list_topics(timeout=10).topics
    finally:
        cluster.stop()
