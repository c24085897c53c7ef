//! What became of one attempt in the sandbox, in the failure model's terms.
//!
//! Every way a run can end maps to one [`RunError`] variant, and every variant to one
//! [`Disposition`]: retry with backoff, fail at once, or requeue without counting the
//! attempt (see the failure model in `DESIGN.md`).

use std::fmt::Write as _;
use std::time::Duration;

use wasmtime::{PoolConcurrencyLimitError, Trap, WasmBacktrace};

use super::budget::{NoRoom, OverBudget};
use super::limits::{Limits, MemoryLimitExceeded};
use super::meter::{CpuBudgetExceeded, TimedOut};

/// Frames the engine collects for a backtrace, innermost first.
pub(super) const BACKTRACE_FRAMES: usize = 32;

/// Why an attempt did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The guest returned `retry`.
    #[error("{0}")]
    GuestRetry(String),
    /// The guest returned `fail`.
    #[error("{0}")]
    GuestFail(String),
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access, a stack overflow...
    #[error("trap ({kind}): {message}")]
    Trap {
        /// The trap's kind in snake case, e.g. `unreachable_code_reached`, `stack_overflow`.
        kind: String,
        /// The trap's description.
        message: String,
    },
    /// The guest executed Wasm for longer than its CPU budget.
    #[error("{0}")]
    CpuBudget(CpuBudgetExceeded),
    /// The attempt exceeded its wall-clock timeout.
    #[error("{0}")]
    Timeout(TimedOut),
    /// The guest asked for more memory than its cap.
    #[error("{0}")]
    MemoryLimit(MemoryLimitExceeded),
    /// Every sandbox slot of the runner is in use.
    #[error("no free sandbox slot: {0}")]
    Capacity(String),
    /// The guest handed the host more than [`Limits::max_transfer`] in one call.
    #[error(
        "the guest handed the host more than {limit} bytes in one call (a result, error message \
         or log line); results are limited to {max_result} bytes (max_result)"
    )]
    TransferTooLarge {
        /// The limit of one transfer.
        limit: usize,
        /// The attempt's `max_result`.
        max_result: usize,
    },
    /// The attempt's memory cap is more than the runner's whole memory budget.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    /// The runner's memory budget has no room for the attempt now: back to the queue,
    /// uncounted.
    #[error("{0}")]
    NoRoom(String),
    /// The payload is larger than the job may receive.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The guest returned a result larger than allowed.
    #[error("result of {size} bytes exceeds the limit of {limit} bytes")]
    ResultTooLarge {
        /// The result's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The guest returned a result that is not JSON.
    #[error("result is not valid JSON: {0}")]
    InvalidResult(String),
    /// The host failed to run the guest for another reason (a WASI host error, say).
    #[error("the sandbox failed: {0}")]
    Host(String),
}

/// What the queue should do with the job after a [`RunError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retry with backoff while attempts remain.
    Retry,
    /// Fail the job now.
    Fail,
    /// Put it back without counting the attempt: it never really ran.
    Requeue,
}

impl RunError {
    /// What the failure model says to do.
    pub fn disposition(&self) -> Disposition {
        match self {
            RunError::GuestFail(_)
            | RunError::PayloadTooLarge { .. }
            | RunError::OverBudget(_)
            | RunError::TransferTooLarge { .. }
            | RunError::ResultTooLarge { .. }
            | RunError::InvalidResult(_) => Disposition::Fail,
            RunError::Capacity(_) | RunError::NoRoom(_) => Disposition::Requeue,
            RunError::GuestRetry(_)
            | RunError::Trap { .. }
            | RunError::CpuBudget(_)
            | RunError::Timeout(_)
            | RunError::MemoryLimit(_)
            | RunError::Host(_) => Disposition::Retry,
        }
    }

    /// A wall-clock timeout noticed outside the guest (it was waiting on the host).
    pub(crate) fn timeout(limit: Duration) -> Self {
        RunError::Timeout(TimedOut { limit })
    }
}

impl From<NoRoom> for RunError {
    fn from(no_room: NoRoom) -> Self {
        match no_room {
            NoRoom::Over(over) => RunError::OverBudget(over),
            busy @ NoRoom::Busy { .. } => RunError::NoRoom(busy.to_string()),
        }
    }
}

/// What wasmtime says when a guest hands the host more than its store's hostcall fuel allows
/// (its error type is private, so the message is what can be recognized).
const TRANSFER_REFUSED: &str = "fuel allocated for hostcalls has been exhausted";

/// Classifies an error from instantiating or calling a guest held to `limits`, and extracts a
/// short Wasm backtrace if the error carries one.
pub fn classify_trap(error: &wasmtime::Error, limits: &Limits) -> (RunError, Option<String>) {
    let text = format!("{error:#}");
    if text.contains(TRANSFER_REFUSED) {
        let (limit, max_result) = (limits.max_transfer(), limits.max_result);
        return (RunError::TransferTooLarge { limit, max_result }, None);
    }
    let backtrace = error.downcast_ref::<WasmBacktrace>().map(short_backtrace);
    let run_error = if let Some(limit) = error.downcast_ref::<MemoryLimitExceeded>() {
        RunError::MemoryLimit(*limit)
    } else if let Some(budget) = error.downcast_ref::<CpuBudgetExceeded>() {
        RunError::CpuBudget(*budget)
    } else if let Some(timeout) = error.downcast_ref::<TimedOut>() {
        RunError::Timeout(*timeout)
    } else if let Some(pool) = error.downcast_ref::<PoolConcurrencyLimitError>() {
        RunError::Capacity(pool.to_string())
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        RunError::Trap {
            kind: snake_case(&format!("{trap:?}")),
            message: trap.to_string(),
        }
    } else {
        RunError::Host(text)
    };
    (run_error, backtrace)
}

/// The innermost frames, demangled, with runs of one frame (deep recursion) folded into one
/// line.
fn short_backtrace(backtrace: &WasmBacktrace) -> String {
    let mut lines: Vec<(String, usize)> = Vec::new();
    for frame in backtrace.frames() {
        let module = frame.module().name().unwrap_or("<module>");
        let name = match frame.func_name() {
            Some(name) => format!("{module}!{:#}", rustc_demangle::demangle(name)),
            None => format!("{module}!<function {}>", frame.func_index()),
        };
        match lines.last_mut() {
            Some((last, count)) if *last == name => *count += 1,
            _ => lines.push((name, 1)),
        }
    }
    let mut text = String::new();
    for (i, (name, count)) in lines.iter().enumerate() {
        let _ = match count {
            1 => writeln!(text, "  {i}: {name}"),
            n => writeln!(text, "  {i}: {name} (x{n})"),
        };
    }
    if backtrace.frames().len() >= BACKTRACE_FRAMES {
        let _ = writeln!(text, "  ... outer frames not collected");
    }
    text.truncate(text.trim_end().len());
    text
}

fn snake_case(camel: &str) -> String {
    let mut snake = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_kinds_read_as_snake_case() {
        assert_eq!(
            snake_case("UnreachableCodeReached"),
            "unreachable_code_reached"
        );
        assert_eq!(snake_case("StackOverflow"), "stack_overflow");
    }

    #[test]
    fn typed_causes_win_over_the_trap() {
        let cap = MemoryLimitExceeded {
            requested: 2,
            cap: 1,
        };
        let error = wasmtime::Error::new(cap).context("while growing memory");
        let limits = Limits::default();
        assert_eq!(classify_trap(&error, &limits).0, RunError::MemoryLimit(cap));
        assert_eq!(
            classify_trap(&error, &limits).0.disposition(),
            Disposition::Retry
        );
    }
}
