//! Whether this process's disk writes are failing, and why: a full disk
//! (ENOSPC, EDQUOT) or another I/O error. Every write path that can fail
//! reports here (partition appends, the controller quorum's log); the broker
//! turns it into its readiness, a metric and log lines. Process-wide, since
//! a broker process has one data directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The current trouble with the disk.
#[derive(Debug, Clone)]
pub struct DiskProblem {
    pub since: Instant,
    pub path: PathBuf,
    pub error: String,
    pub no_space: bool,
    /// The largest write that failed: smaller ones may fit in what is
    /// left, and do not prove the problem over.
    pub wanted: usize,
}

impl std::fmt::Display for DiskProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.no_space {
            "no space left on device"
        } else {
            "disk I/O error"
        };
        write!(
            f,
            "{what} writing {} for {} s: {}",
            self.path.display(),
            self.since.elapsed().as_secs(),
            self.error
        )
    }
}

#[derive(Default)]
pub struct DiskHealth {
    troubled: AtomicBool,
    problem: Mutex<Option<DiskProblem>>,
    last_logged: Mutex<Option<Instant>>,
    no_space_errors: AtomicU64,
    io_errors: AtomicU64,
}

/// Repeat the warning about an unresolved problem this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// This process's disk health.
pub fn disk() -> &'static DiskHealth {
    static HEALTH: OnceLock<DiskHealth> = OnceLock::new();
    HEALTH.get_or_init(DiskHealth::default)
}

/// ENOSPC or EDQUOT: the write fails for want of space, and may succeed
/// once space is freed.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122))
}

impl DiskHealth {
    /// A write of `wanted` bytes to `path` failed with `e`: recorded,
    /// counted, and logged (the first time, then every 30 s while it lasts).
    pub fn failed(&self, path: &Path, wanted: usize, e: &io::Error) {
        let no_space = is_no_space(e);
        let counter = if no_space {
            &self.no_space_errors
        } else {
            &self.io_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = self.problem.lock().unwrap_or_else(|e| e.into_inner());
            let (since, largest) = p
                .as_ref()
                .map_or_else(|| (Instant::now(), 0), |p| (p.since, p.wanted));
            *p = Some(DiskProblem {
                since,
                path: path.to_path_buf(),
                error: e.to_string(),
                no_space,
                wanted: wanted.max(largest),
            });
        }
        self.troubled.store(true, Ordering::Release);
        let mut logged = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *logged = Some(Instant::now());
            if no_space {
                tracing::error!(path = %path.display(), error = %e, "no space left on device: writes fail until space is freed (the broker reports not ready meanwhile)");
            } else {
                tracing::error!(path = %path.display(), error = %e, "disk write failed");
            }
        }
    }

    /// A write of `written` bytes succeeded: the problem is over, unless
    /// a larger write failed for want of space (a small one may still fit).
    pub fn succeeded(&self, written: usize) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let was = {
            let mut p = self.problem.lock().unwrap_or_else(|e| e.into_inner());
            if p.as_ref().is_some_and(|p| p.no_space && written < p.wanted) {
                return;
            }
            p.take()
        };
        self.troubled.store(false, Ordering::Release);
        *self.last_logged.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(p) = was {
            tracing::info!(
                path = %p.path.display(),
                after_s = p.since.elapsed().as_secs(),
                "disk writes succeed again"
            );
        }
    }

    /// The problem writes have now, if any.
    pub fn problem(&self) -> Option<DiskProblem> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Failed writes since start: (for want of space, other I/O errors).
    pub fn error_counts(&self) -> (u64, u64) {
        (
            self.no_space_errors.load(Ordering::Relaxed),
            self.io_errors.load(Ordering::Relaxed),
        )
    }

    /// Writes, fsyncs and removes a file in `dir` as large as the largest
    /// write that failed (at least 64 KiB, at most 16 MiB): whether such
    /// writes work there now. Clears the problem when they do.
    pub fn probe(&self, dir: &Path) -> bool {
        use std::io::Write;
        let size = self
            .problem()
            .map_or(0, |p| p.wanted)
            .clamp(64 << 10, 16 << 20);
        let path = dir.join(".sluice-write-probe");
        let result = std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&vec![0u8; size]).and_then(|()| f.sync_all()));
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(()) => {
                self.succeeded(size);
                true
            }
            // Still failing: the problem stands as reported by the write
            // that found it.
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_lasts_until_a_write_succeeds() {
        let h = DiskHealth::default();
        assert!(h.problem().is_none());
        let full = io::Error::from_raw_os_error(28);
        h.failed(Path::new("/data/t-0"), 1000, &full);
        h.failed(Path::new("/data/t-1"), 10, &full);
        let p = h.problem().expect("a problem");
        assert!(p.no_space);
        assert!(
            p.to_string()
                .contains("no space left on device writing /data/t-1")
        );
        assert_eq!(h.error_counts(), (2, 0));
        h.succeeded(100);
        assert!(
            h.problem().is_some(),
            "a smaller write fits, the larger may not"
        );
        h.succeeded(1000);
        assert!(h.problem().is_none());
        h.failed(Path::new("/x"), 10, &io::Error::other("EIO"));
        assert!(!h.problem().expect("a problem").no_space);
        assert_eq!(h.error_counts(), (2, 1));
    }
}
