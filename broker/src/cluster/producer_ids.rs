//! Producer id allocation for InitProducerId. Ids are handed out from
//! blocks whose end is persisted before the first id of the block is used,
//! so a restart never reissues an id (it may skip the rest of a block).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const BLOCK: i64 = 1000;

pub struct ProducerIdAllocator {
    path: PathBuf,
    /// (next id, first id of the next unpersisted block)
    state: Mutex<(i64, i64)>,
}

impl ProducerIdAllocator {
    pub fn open(meta_dir: &Path) -> io::Result<ProducerIdAllocator> {
        let path = meta_dir.join("producer_id_block");
        let next = match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<i64>().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(ProducerIdAllocator {
            path,
            state: Mutex::new((next, next)),
        })
    }

    pub fn allocate(&self) -> io::Result<i64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 >= st.1 {
            let end = st.0 + BLOCK;
            let tmp = self.path.with_extension("tmp");
            fs::write(&tmp, end.to_string())?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            st.1 = end;
        }
        let id = st.0;
        st.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reissued_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ProducerIdAllocator::open(dir.path()).expect("open");
        let first: Vec<i64> = (0..3).map(|_| a.allocate().expect("alloc")).collect();
        assert_eq!(first, vec![0, 1, 2]);
        drop(a);
        let b = ProducerIdAllocator::open(dir.path()).expect("reopen");
        assert!(b.allocate().expect("alloc") >= 3);
    }
}
