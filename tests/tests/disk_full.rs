//! A full disk: the broker says so (log, metric, `/readyz`), loses no
//! acknowledged record, starts on a disk that is still full (waiting, and
//! saying why, instead of failing), and recovers by itself once space is
//! freed. The data dir is a small tmpfs the test mounts; where mounting is
//! not permitted (not root, no tmpfs) the test is skipped with the reason.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::Offset;
use sluice_tests::{
    Broker, assign, consume_n, create_topic, enqueue, future_producer, http_get,
    pseudo_random_bytes, stream_consumer, unique_name,
};

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mb: u32) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn readyz(admin: &str) -> Option<(u16, String)> {
    let addr = admin.parse().expect("admin address");
    http_get(addr, "/readyz").ok().map(|r| (r.status, r.body))
}

/// Polls `/readyz` until `want` holds, for up to `wait`.
fn await_readyz(admin: &str, wait: Duration, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + wait;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = readyz(admin) {
            if want(status, &body) {
                return (status, body);
            }
            last = Some((status, body));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/readyz never reached the expected state within {wait:?}; last answer: {last:?}");
}

fn filler(dir: &Path, mb: usize) -> PathBuf {
    let path = dir.join("filler");
    std::fs::write(&path, vec![7u8; mb << 20]).expect("write the filler file");
    path
}

/// Fills what is left of the file system with one file, to the last byte.
fn top_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("top-up");
    let mut f = std::fs::File::create(&path).expect("create the top-up file");
    let chunk = vec![7u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    while f.write(&[7u8]).is_ok_and(|n| n == 1) {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_the_broker_recovers_when_space_returns() {
    let mount = match Tmpfs::mount(48) {
        Ok(m) => m,
        Err(reason) => {
            eprintln!("skipped: cannot mount a tmpfs for the data dir ({reason})");
            return;
        }
    };
    let admin = format!("127.0.0.1:{}", free_port());
    let data = mount.path().join("data");
    let mut broker =
        Broker::start_in_with_args(&data, &["--admin-listen", &admin]).expect("broker starts");
    let topic = unique_name("diskfull");
    create_topic(
        &broker.bootstrap(),
        &topic,
        1,
        &[("segment.bytes", "1048576")],
    )
    .await
    .expect("create topic");
    // Leave the broker ~8 MB; it fills them.
    let filler = filler(mount.path(), 36);

    let producer = future_producer(
        &broker.bootstrap(),
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "0"),
            ("message.timeout.ms", "3000"),
        ],
    )
    .expect("producer");
    let mut acked: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut refused = None;
    for i in 0..400u64 {
        let value = pseudo_random_bytes(i, 64 * 1024);
        let fut = enqueue(
            &producer,
            FutureRecord::to(&topic).payload(value.as_slice()),
        )
        .await
        .expect("enqueue");
        match fut.await {
            Ok(Ok(d)) => acked.push((d.offset, value)),
            Ok(Err((e, _))) => {
                refused = Some(e.to_string());
                break;
            }
            Err(e) => panic!("delivery future dropped: {e}"),
        }
    }
    let refused = refused.expect("the disk filled up before 400 × 64 KiB records");
    eprintln!("{} records acknowledged, then: {refused}", acked.len());
    assert!(
        acked.len() > 10,
        "the broker stored records before the disk filled"
    );
    let (_, body) = await_readyz(&admin, Duration::from_secs(10), |s, b| {
        s == 503 && b.contains("no space left on device")
    });
    eprintln!("/readyz while full: {}", body.trim());
    let metrics = http_get(admin.parse().expect("addr"), "/metrics").expect("metrics");
    assert!(
        metrics.body.contains("sluice_storage_disk_problem 1")
            && metrics.body.lines().any(|l| l
                .starts_with("sluice_storage_write_errors_total{kind=\"no_space\"}")
                && !l.ends_with(" 0")),
        "the full disk shows in the metrics"
    );
    assert!(
        broker.stderr_log().contains("no space left on device"),
        "the log says why"
    );

    // Restarted while the disk is still full (to the last byte: what the
    // broker left, its records did not fit in, a small write still might):
    // it waits, and says why.
    broker.kill();
    let top_up = top_up(mount.path());
    let launch = broker.launch().expect("launch");
    let (_, body) = await_readyz(&admin, Duration::from_secs(30), |s, b| {
        s == 503 && b.contains("no space left on device")
    });
    eprintln!("/readyz after a restart on a full disk: {}", body.trim());

    // Space comes back: ready again without anyone's help.
    std::fs::remove_file(&filler).expect("free space");
    std::fs::remove_file(&top_up).expect("free space");
    broker
        .await_ready(launch)
        .expect("the broker finishes starting");
    await_readyz(&admin, Duration::from_secs(10), |s, _| s == 200);

    // Every acknowledged record is there, and writes work again.
    let consumer = stream_consumer(&broker.bootstrap(), &[]).expect("consumer");
    assign(&consumer, &[(&topic, 0, Offset::Beginning)]).expect("assign");
    let got = consume_n(&consumer, acked.len(), Duration::from_secs(30))
        .await
        .expect("read back");
    for (m, (offset, value)) in got.iter().zip(&acked) {
        assert_eq!(m.offset(), *offset);
        assert!(
            m.payload() == Some(value.as_slice()),
            "offset {offset} differs"
        );
    }
    let producer = future_producer(&broker.bootstrap(), &[("acks", "all")]).expect("producer");
    let fut = enqueue(
        &producer,
        FutureRecord::to(&topic).payload(b"after".as_slice()),
    )
    .await
    .expect("enqueue");
    assert!(
        matches!(fut.await, Ok(Ok(_))),
        "writes succeed once space is back"
    );
    drop(broker);
    drop(mount);
}
