//! The meter: what a guest is charged for the time it executes, and where it is stopped (its
//! CPU budget and its wall-clock timeout). wasmtime calls it at every epoch tick while Wasm
//! runs.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use wasmtime::UpdateDeadline;

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

/// Charges a guest for the time it spends executing and stops it when it runs out of budget or
/// time. The epoch callback runs once per tick while Wasm executes; each call yields to the
/// async runtime, so a spinning guest shares its thread with everything else.
///
/// Each call charges what the guest ran since its turn began, at most a tick. A turn starts
/// when the yield returns: on a busy runner that is any moment within a tick, so charging a
/// whole tick per call would spend a guest's budget about twice as fast as it runs. What it ran
/// is read from the thread's CPU clock, so neither waiting for a turn nor time the OS keeps the
/// thread off a core is charged: an overloaded machine does not shorten a guest's budget.
#[derive(Debug)]
pub(crate) struct Meter {
    used: Duration,
    budget: Duration,
    tick: Duration,
    started: Instant,
    /// Written by the yield future, which cannot borrow the store.
    turn: Arc<Mutex<Option<Turn>>>,
    deadline: Instant,
    timeout: Duration,
}

/// Where and when a guest's turn began.
#[derive(Debug, Clone, Copy)]
struct Turn {
    at: Instant,
    thread: ThreadId,
    /// The thread's CPU clock then.
    cpu: Option<Duration>,
}

impl Turn {
    fn begin() -> Self {
        Self {
            at: Instant::now(),
            thread: thread::current().id(),
            cpu: thread_cpu_time(),
        }
    }
}

impl Meter {
    pub fn new(budget: Duration, tick: Duration, timeout: Duration) -> Self {
        let started = Instant::now();
        Self {
            used: Duration::ZERO,
            budget,
            tick,
            started,
            turn: Arc::default(),
            deadline: started + timeout,
            timeout,
        }
    }

    /// The epoch callback: the guest has executed since its turn began.
    pub fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(TimedOut {
                limit: self.timeout,
            }
            .into());
        }
        self.used += self.ran_this_turn(now);
        if self.used >= self.budget {
            return Err(CpuBudgetExceeded {
                budget: self.budget,
            }
            .into());
        }
        let turn = self.turn.clone();
        // tokio's own yield: unlike a plain self-wake, it lets the runtime poll its I/O driver
        // before the guest runs again, so a spinning guest cannot starve database traffic.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::task::yield_now().await;
                *turn.lock().unwrap_or_else(PoisonError::into_inner) = Some(Turn::begin());
            }),
        ))
    }

    /// What the guest ran since its turn began, at most a tick. The CPU clock is only
    /// comparable on the thread the turn began on: the first turn has no reading, and a guest
    /// whose async host call was pending may come back on another thread. Then the wall time
    /// since is the charge, as it is an upper bound of the CPU time.
    fn ran_this_turn(&self, now: Instant) -> Duration {
        let turn = *self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let wall = now.saturating_duration_since(turn.map_or(self.started, |turn| turn.at));
        let cpu = turn
            .filter(|turn| turn.thread == thread::current().id())
            .and_then(|turn| Some(thread_cpu_time()?.saturating_sub(turn.cpu?)));
        cpu.unwrap_or(wall).min(wall).min(self.tick)
    }
}

/// The CPU time the calling thread has used, if the OS says: the clock a guest's CPU budget is
/// charged on.
pub fn thread_cpu_time() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    /// One epoch callback, then the guest's next turn after `wait` in the runtime's queue,
    /// doing `run`. Returns whether the meter stopped the guest.
    async fn turn(
        meter: &mut Meter,
        wait: Duration,
        run: impl FnOnce(),
    ) -> Option<wasmtime::Error> {
        let yielded = match meter.tick() {
            Ok(UpdateDeadline::YieldCustom(_, yielded)) => yielded,
            Ok(_) => unreachable!("the meter always yields"),
            Err(stopped) => return Some(stopped),
        };
        thread::sleep(wait);
        yielded.await;
        run();
        None
    }

    /// Executes for `cpu` of the thread's CPU time, however long the OS takes to grant it.
    fn spin(cpu: Duration) -> impl FnOnce() {
        move || {
            let start = thread_cpu_time().expect("a thread CPU clock");
            while thread_cpu_time().unwrap() - start < cpu {
                std::hint::spin_loop();
            }
        }
    }

    /// Off a core for `wall`, as when the OS runs other threads.
    fn off_core(wall: Duration) -> impl FnOnce() {
        move || thread::sleep(wall)
    }

    /// Runs turns doing `run` until the meter stops the guest; returns how many it took and why.
    async fn turns_until_stopped(meter: &mut Meter, run: Duration) -> (usize, wasmtime::Error) {
        let mut turns = 0;
        loop {
            turns += 1;
            if let Some(stopped) = turn(meter, Duration::ZERO, spin(run)).await {
                return (turns, stopped);
            }
        }
    }

    #[tokio::test]
    async fn waiting_for_a_turn_is_not_charged_and_running_is() {
        let mut meter = Meter::new(5 * TICK, TICK, Duration::from_secs(60));
        for _ in 0..20 {
            let stopped = turn(&mut meter, 3 * TICK, || {}).await;
            assert!(stopped.is_none(), "charged for waiting: {stopped:?}");
        }
        let (turns, stopped) = turns_until_stopped(&mut meter, TICK).await;
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
    async fn time_off_a_core_is_not_charged() {
        let mut meter = Meter::new(5 * TICK, TICK, Duration::from_secs(60));
        for _ in 0..20 {
            let stopped = turn(&mut meter, Duration::ZERO, off_core(TICK)).await;
            assert!(
                stopped.is_none(),
                "charged for time off a core: {stopped:?}"
            );
        }
        let (turns, _) = turns_until_stopped(&mut meter, TICK).await;
        assert!(turns <= 6, "took {turns} turns of running");
    }

    #[tokio::test]
    async fn a_turn_is_charged_at_most_a_tick() {
        let mut meter = Meter::new(3 * TICK, TICK, Duration::from_secs(60));
        // A turn the epoch callback comes to late (say, after a busy host call) costs a tick.
        for ticks in [10, 12] {
            let stopped = turn(&mut meter, Duration::ZERO, spin(ticks * TICK)).await;
            assert!(stopped.is_none(), "charged more than a tick: {stopped:?}");
        }
    }

    #[tokio::test]
    async fn past_its_deadline_the_timeout_wins_over_the_budget() {
        // The turn spends the budget, and runs past the deadline whatever the machine does:
        // ten ticks of CPU time take at least ten ticks on the wall clock.
        let mut meter = Meter::new(TICK, TICK, 2 * TICK);
        let stopped = match turn(&mut meter, Duration::ZERO, spin(10 * TICK)).await {
            // The first callback came past the deadline already.
            Some(stopped) => stopped,
            None => meter.tick().err().expect("past the deadline"),
        };
        assert!(stopped.downcast_ref::<TimedOut>().is_some(), "{stopped}");
    }
}
