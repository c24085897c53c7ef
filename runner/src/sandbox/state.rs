//! What a store holds for one attempt: the WASI context, the limiter, the guest log and the
//! meter that the epoch callback consults.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{
    Level,
    jobrunner::plugin::{host, types},
};
use super::guest_log::GuestLog;
use super::limits::MemoryLimiter;

/// The guest ran Wasm for longer than its CPU budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cpu budget of {budget:?} exceeded: the guest was stopped")]
pub struct CpuBudgetExceeded {
    /// The budget.
    pub budget: Duration,
}

/// The attempt ran longer than its wall-clock timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("wall-clock timeout of {limit:?} exceeded: the guest was stopped")]
pub struct TimedOut {
    /// The timeout.
    pub limit: Duration,
}

/// The per-store state.
pub(crate) struct GuestState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub log: GuestLog,
    pub meter: Meter,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for GuestState {}

impl host::Host for GuestState {
    async fn log(&mut self, level: Level, message: String) {
        self.log.write(level, &message);
    }
}

/// Charges a guest for the time it spends executing and stops it when it runs out of budget or
/// time. The epoch callback runs once per tick while Wasm executes; each call yields to the
/// async runtime, so a spinning guest shares its thread with everything else.
///
/// Each call charges the time since the guest last got its turn back, at most a tick. A turn
/// lasts until the next tick of the shared epoch: a whole tick for a guest running alone, but
/// on a busy runner, where a guest's turn comes back at any moment within a tick, half of one
/// on average. Charging a whole tick per call would spend such a guest's budget about twice as
/// fast as it runs. Time the OS has the thread off a core is still charged, so on an
/// overloaded machine the budget is spent a little faster than CPU time.
#[derive(Debug)]
pub(crate) struct Meter {
    used: Duration,
    budget: Duration,
    tick: Duration,
    started: Instant,
    /// When the guest last got its turn back, in nanoseconds since `started`: written by the
    /// yield future, which cannot borrow the store.
    resumed: Arc<AtomicU64>,
    deadline: Instant,
    timeout: Duration,
}

impl Meter {
    pub fn new(budget: Duration, tick: Duration, timeout: Duration) -> Self {
        let started = Instant::now();
        Self {
            used: Duration::ZERO,
            budget,
            tick,
            started,
            resumed: Arc::default(),
            deadline: started + timeout,
            timeout,
        }
    }

    /// The epoch callback: the guest has executed since its last turn began.
    pub fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(TimedOut {
                limit: self.timeout,
            }
            .into());
        }
        let resumed = Duration::from_nanos(self.resumed.load(Ordering::Relaxed));
        let ran = now.duration_since(self.started).saturating_sub(resumed);
        self.used += ran.min(self.tick);
        if self.used >= self.budget {
            return Err(CpuBudgetExceeded {
                budget: self.budget,
            }
            .into());
        }
        let (started, resumed) = (self.started, self.resumed.clone());
        // tokio's own yield: unlike a plain self-wake, it lets the runtime poll its I/O driver
        // before the guest runs again, so a spinning guest cannot starve database traffic.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::task::yield_now().await;
                let at = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                resumed.store(at, Ordering::Relaxed);
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    /// One epoch callback, then the guest's next turn after `wait` in the runtime's queue and
    /// `run` executing. Returns whether the meter stopped the guest.
    async fn turn(meter: &mut Meter, wait: Duration, run: Duration) -> Option<wasmtime::Error> {
        let yielded = match meter.tick() {
            Ok(UpdateDeadline::YieldCustom(_, yielded)) => yielded,
            Ok(_) => unreachable!("the meter always yields"),
            Err(stopped) => return Some(stopped),
        };
        std::thread::sleep(wait);
        yielded.await;
        std::thread::sleep(run);
        None
    }

    #[tokio::test]
    async fn waiting_for_a_turn_is_not_charged_and_running_is() {
        let mut meter = Meter::new(5 * TICK, TICK, Duration::from_secs(60));
        for _ in 0..20 {
            let stopped = turn(&mut meter, 3 * TICK, Duration::ZERO).await;
            assert!(stopped.is_none(), "charged for waiting: {stopped:?}");
        }
        let mut turns = 0;
        let stopped = loop {
            turns += 1;
            if let Some(stopped) = turn(&mut meter, Duration::ZERO, TICK).await {
                break stopped;
            }
        };
        assert!(
            stopped.downcast_ref::<CpuBudgetExceeded>().is_some(),
            "{stopped}"
        );
        assert!(
            turns <= 6,
            "five ticks of running spend the budget, took {turns} turns"
        );
    }

    #[tokio::test]
    async fn a_turn_is_charged_at_most_a_tick_and_the_timeout_wins_past_its_deadline() {
        let mut meter = Meter::new(3 * TICK, TICK, 20 * TICK);
        // A long host call (say, a sleep) between two callbacks costs one tick, not its length.
        assert!(turn(&mut meter, Duration::ZERO, 10 * TICK).await.is_none());
        assert!(turn(&mut meter, Duration::ZERO, 12 * TICK).await.is_none());
        let stopped = meter.tick().err().expect("past the deadline");
        assert!(stopped.downcast_ref::<TimedOut>().is_some(), "{stopped}");
    }
}
