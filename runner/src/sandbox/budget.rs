//! The runner-wide memory budget: every attempt reserves its memory cap before its instance
//! is created and gives it back when the instance is gone, so that the guests' linear memories
//! together never exceed the budget, whatever each of them does. An attempt that finds no room
//! waits for it, but not in line: when memory is given back, whoever fits goes first, so a
//! small job never queues behind a large one, whatever its tenant. One that waited [`PATIENCE`]
//! in vain goes back to the queue, uncounted, for another runner or a later turn.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// How long an attempt waits for room before it goes back to the queue.
pub const PATIENCE: Duration = Duration::from_secs(1);

/// Share of the memory available to the runner (the machine's, or its cgroup's limit if lower)
/// that guests get by default; the rest is the runner's own, the database's and the system's.
const DEFAULT_SHARE: u64 = 2;

/// The memory all attempts of a runner may reserve together.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bytes: u64,
    free: Mutex<u64>,
    /// Some memory was given back.
    released: Notify,
}

/// Memory reserved for one attempt, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        *self.inner.free.lock().expect("budget lock") += self.bytes;
        self.inner.released.notify_waiters();
    }
}

/// Why an attempt could not reserve its memory cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    /// Other attempts held the budget for as long as the attempt would wait.
    #[error("the memory budget of {} stayed in use: {} of it free, the attempt needs {}",
            bytesize::ByteSize(*.budget), bytesize::ByteSize(*.free), bytesize::ByteSize(*.cap))]
    Busy {
        /// The attempt's memory cap, in bytes.
        cap: u64,
        /// What was free at the end, in bytes.
        free: u64,
        /// The budget, in bytes.
        budget: u64,
    },
    /// The cap is more than the whole budget: the attempt could never run here.
    #[error(transparent)]
    Over(#[from] OverBudget),
}

/// An attempt's memory cap is more than the whole budget: it could never run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a memory cap of {} is more than the runner's memory budget of {}",
        bytesize::ByteSize(*.cap), bytesize::ByteSize(*.budget))]
pub struct OverBudget {
    /// The attempt's memory cap, in bytes.
    pub cap: u64,
    /// The budget, in bytes.
    pub budget: u64,
}

impl MemoryBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                bytes,
                free: Mutex::new(bytes),
                released: Notify::new(),
            }),
        }
    }

    /// Reserves `cap` bytes, waiting up to `patience` for other attempts to give back enough.
    /// Whoever fits when memory is given back goes first, not whoever came first: a small
    /// cap never queues behind a large one.
    pub async fn reserve(&self, cap: u64, patience: Duration) -> Result<Reservation, NoRoom> {
        let budget = self.inner.bytes;
        if cap > budget {
            return Err(OverBudget { cap, budget }.into());
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before looking, so that a release in between is not missed.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let free = {
                let mut free = self.inner.free.lock().expect("budget lock");
                if *free >= cap {
                    *free -= cap;
                    return Ok(Reservation {
                        inner: Arc::clone(&self.inner),
                        bytes: cap,
                    });
                }
                *free
            };
            tokio::select! {
                () = released => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(NoRoom::Busy { cap, free, budget });
                }
            }
        }
    }
}

/// The default budget: half the memory available to this process, the machine's or, if
/// lower, its cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
pub fn default_memory_budget() -> u64 {
    let machine = read_meminfo_total().unwrap_or(8 << 30);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    .min();
    cgroup.map_or(machine, |limit| limit.min(machine)) / DEFAULT_SHARE
}

fn read_meminfo_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_reservation_waits_for_room_a_small_one_goes_first_and_patience_ends() {
        let budget = MemoryBudget::new(256 << 20);
        let first = budget.reserve(128 << 20, PATIENCE).await.unwrap();
        let _second = budget.reserve(100 << 20, PATIENCE).await.unwrap();
        let short = Duration::from_millis(50);
        assert_eq!(
            budget
                .reserve(64 << 20, short)
                .await
                .unwrap_err()
                .to_string(),
            "the memory budget of 256.0 MiB stayed in use: 28.0 MiB of it free, the attempt \
             needs 64.0 MiB"
        );
        // A large cap waiting does not hold up a small one that fits.
        let large = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(200 << 20, Duration::from_secs(10)).await }
        });
        let _small = budget
            .reserve(16 << 20, short)
            .await
            .expect("fits beside them");
        drop(first);
        let waiting = budget.reserve(64 << 20, Duration::from_secs(10)).await;
        assert!(waiting.is_ok(), "room once the first is given back");
        assert!(!large.is_finished(), "200 MiB never fit: it still waits");
        large.abort();
        assert_eq!(
            budget.reserve(257 << 20, short).await.unwrap_err(),
            NoRoom::Over(OverBudget {
                cap: 257 << 20,
                budget: 256 << 20
            })
        );
    }

    #[test]
    fn the_default_is_a_share_of_this_machine() {
        let budget = default_memory_budget();
        let machine = read_meminfo_total().unwrap();
        assert!(
            budget > 0 && budget <= machine / DEFAULT_SHARE,
            "{budget} of {machine}"
        );
    }
}
