//! What a store holds for one attempt: the WASI context, the limiter, the guest log and the
//! meter that the epoch callback consults.

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

/// Counts the epoch ticks a guest spends executing and stops it when it runs out of budget or
/// time. The callback runs once per tick while Wasm executes; each call yields to the async
/// runtime, so a spinning guest shares its thread with everything else.
///
/// Ticks are counted while the guest's code runs, whether or not the OS has it on a core at
/// that moment: on an overloaded machine the budget is spent a little faster than CPU time.
#[derive(Debug)]
pub(crate) struct Meter {
    ticks_left: u64,
    budget: Duration,
    deadline: Instant,
    timeout: Duration,
}

impl Meter {
    pub fn new(budget: Duration, tick: Duration, timeout: Duration) -> Self {
        Self {
            ticks_left: budget.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64,
            budget,
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    /// The epoch callback: one more tick of guest execution has passed.
    pub fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        if Instant::now() >= self.deadline {
            return Err(TimedOut {
                limit: self.timeout,
            }
            .into());
        }
        if self.ticks_left == 0 {
            return Err(CpuBudgetExceeded {
                budget: self.budget,
            }
            .into());
        }
        self.ticks_left -= 1;
        // tokio's own yield: unlike a plain self-wake, it lets the runtime poll its I/O driver
        // before the guest runs again, so a spinning guest cannot starve database traffic.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    }
}
