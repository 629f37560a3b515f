//! Producer id allocation for InitProducerId. Each broker takes blocks of
//! ids from the controller quorum (one committed `AllocateProducerIds` per
//! block), so ids are unique across the cluster and never reissued after a
//! restart (the rest of a block in use at a crash is skipped).

use std::sync::Arc;
use std::time::Duration;

use crate::image::{Applied, Command};
use crate::quorum::Quorum;

const BLOCK: i64 = 1000;
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct ProducerIdAllocator {
    quorum: Arc<Quorum>,
    /// (next id, end of the current block)
    state: tokio::sync::Mutex<(i64, i64)>,
}

impl ProducerIdAllocator {
    pub fn new(quorum: Arc<Quorum>) -> ProducerIdAllocator {
        ProducerIdAllocator {
            quorum,
            state: tokio::sync::Mutex::new((0, 0)),
        }
    }

    pub async fn allocate(&self) -> Result<i64, String> {
        let mut st = self.state.lock().await;
        if st.0 >= st.1 {
            let applied = self
                .quorum
                .propose(Command::AllocateProducerIds { count: BLOCK }, TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            match applied {
                Ok(Applied::ProducerIds { first }) => *st = (first, first + BLOCK),
                other => {
                    return Err(format!(
                        "unexpected producer id allocation result {other:?}"
                    ));
                }
            }
        }
        let id = st.0;
        st.0 += 1;
        Ok(id)
    }
}
