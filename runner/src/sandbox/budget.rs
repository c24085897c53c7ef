//! The runner-wide memory budget: every attempt reserves its memory cap before its instance
//! is created and gives it back when the instance is gone, so that the guests' linear memories
//! together never exceed the budget, whatever each of them does. An attempt that finds no room
//! waits for it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's unit: a Wasm page.
const PAGE: u64 = 64 << 10;

/// Share of the memory available to the runner (the machine's, or its cgroup's limit if lower)
/// that guests get by default; the rest is the runner's own, the database's and the system's.
const DEFAULT_SHARE: u64 = 2;

/// The memory all attempts of a runner may reserve together.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    pages: Arc<Semaphore>,
    bytes: u64,
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
    /// A budget of `bytes`, rounded down to whole Wasm pages.
    pub fn new(bytes: u64) -> Self {
        let pages = usize::try_from(bytes / PAGE)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            pages: Arc::new(Semaphore::new(pages)),
            bytes,
        }
    }

    /// The budget, in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reserves `cap` bytes, waiting until other attempts give back enough; the reservation
    /// lasts as long as the permit.
    pub async fn reserve(&self, cap: u64) -> Result<OwnedSemaphorePermit, OverBudget> {
        let over = OverBudget {
            cap,
            budget: self.bytes,
        };
        if cap > self.bytes {
            return Err(over);
        }
        let pages = u32::try_from(cap.div_ceil(PAGE)).map_err(|_| over)?;
        let pages = pages.min(u32::try_from(self.bytes / PAGE).unwrap_or(u32::MAX));
        // The semaphore is never closed.
        Ok(Arc::clone(&self.pages)
            .acquire_many_owned(pages)
            .await
            .expect("the budget's semaphore is never closed"))
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
    async fn reservations_wait_for_room_and_a_cap_over_the_budget_is_refused() {
        let budget = MemoryBudget::new(256 << 20);
        let first = budget.reserve(128 << 20).await.unwrap();
        let _second = budget.reserve(128 << 20).await.unwrap();
        let third = budget.reserve(1);
        tokio::pin!(third);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut third).await;
        assert!(waited.is_err(), "no room left: the third waits");
        drop(first);
        let _third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("room once the first is done")
            .unwrap();
        assert_eq!(
            budget.reserve(257 << 20).await.unwrap_err(),
            OverBudget {
                cap: 257 << 20,
                budget: 256 << 20
            }
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
