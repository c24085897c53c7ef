//! `poison`: misbehaves on request, so the tests can prove the sandbox holds. Each payload
//! `{"do": "<what>", ...}` picks one misbehaviour:
//!
//! | `do` | what the guest does | what the runner should make of it |
//! | --- | --- | --- |
//! | `trap` | panics (message on stderr, then `unreachable`) | retry, trap kind + backtrace |
//! | `loop` | spins forever | stopped by the CPU budget, retry |
//! | `memory` | allocates 1 MiB blocks until it cannot, or `mib` of them and succeeds | "memory limit", retry |
//! | `stack` | recurses without end | stack overflow trap, retry |
//! | `huge-output` | returns a result of `bytes` bytes (default 8 MiB) | refused, failed |
//! | `print` | writes `bytes` bytes to stdout and stderr, then succeeds | output captured, capped |
//! | `log-flood` | calls `log` `lines` times (default 100,000), then succeeds | lines capped |
//! | `huge-log` | logs one line of `bytes` bytes (default 8 MiB), then succeeds | the line cut, never copied whole |
//! | `sleep` | sleeps `ms` milliseconds (default 60 s) | the wall-clock timeout, retry |
//! | `read-file` | reads `path` (default `/etc/passwd`) and lists `/` | finds nothing |
//! | `read-env` | reads every environment variable and the arguments | finds nothing |
//! | `socket` | connects to `addr` (default `127.0.0.1:5432`) | cannot connect |
//! | `remember` | counts the bytes an earlier job left in a 4 MiB static buffer, then dirties every page of it | finds none: each job gets fresh memory |
//!
//! The probes succeed and report what they found, so a test can assert on it.

use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use jobrunner_plugin_sdk::{Job, JobError, Level, handler, log};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
enum Misbehaviour {
    Trap,
    Loop,
    Memory {
        mib: Option<usize>,
    },
    Stack,
    HugeOutput {
        #[serde(default = "eight_mib")]
        bytes: usize,
    },
    Print {
        #[serde(default = "eight_mib")]
        bytes: usize,
    },
    LogFlood {
        #[serde(default = "many_lines")]
        lines: u32,
    },
    HugeLog {
        #[serde(default = "eight_mib")]
        bytes: usize,
    },
    Sleep {
        #[serde(default = "a_minute")]
        ms: u64,
    },
    ReadFile {
        #[serde(default = "passwd")]
        path: String,
    },
    ReadEnv,
    Socket {
        #[serde(default = "postgres")]
        addr: String,
    },
    Remember,
}

/// Zero in a fresh instance (it lives in the zero-initialized data of linear memory); larger
/// than the part of a pool slot the runner keeps resident between jobs, so both ways of
/// resetting a slot are covered.
static MEMORY: [AtomicU8; 4 << 20] = [const { AtomicU8::new(0) }; 4 << 20];

fn eight_mib() -> usize {
    8 << 20
}
fn many_lines() -> u32 {
    100_000
}
fn a_minute() -> u64 {
    60_000
}
fn passwd() -> String {
    "/etc/passwd".into()
}
fn postgres() -> String {
    "127.0.0.1:5432".into()
}

handler!(misbehave);

fn misbehave(job: Job<Misbehaviour>) -> Result<Value, JobError> {
    Ok(match job.payload {
        Misbehaviour::Trap => panic!("poison: trap requested by job {}", job.id),
        Misbehaviour::Loop => {
            let mut n = 0u64;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Misbehaviour::Memory { mib } => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            while mib.is_none_or(|mib| hoard.len() < mib) {
                hoard.push(black_box(vec![1u8; 1 << 20]));
            }
            json!({ "allocated_mib": hoard.len() })
        }
        Misbehaviour::Stack => json!({ "depth": recurse(black_box(0)) }),
        Misbehaviour::HugeOutput { bytes } => json!({ "data": "x".repeat(bytes) }),
        Misbehaviour::Print { bytes } => {
            let line = "y".repeat(1023) + "\n";
            for _ in 0..bytes.div_ceil(1024) {
                print!("{line}");
                eprint!("{line}");
            }
            json!({ "printed": bytes })
        }
        Misbehaviour::LogFlood { lines } => {
            for i in 0..lines {
                log(Level::Info, &format!("flood line {i}"));
            }
            json!({ "logged": lines })
        }
        Misbehaviour::HugeLog { bytes } => {
            log(Level::Info, &"z".repeat(bytes));
            json!({ "logged_bytes": bytes })
        }
        Misbehaviour::Sleep { ms } => {
            std::thread::sleep(Duration::from_millis(ms));
            json!({ "slept_ms": ms })
        }
        Misbehaviour::ReadFile { path } => {
            let file = std::fs::read_to_string(&path);
            let root = std::fs::read_dir("/");
            json!({
                "found": file.is_ok() || root.is_ok(),
                "file_error": file.err().map(|e| e.to_string()),
                "dir_error": root.err().map(|e| e.to_string()),
            })
        }
        Misbehaviour::ReadEnv => {
            let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            let args: Vec<String> = std::env::args().collect();
            json!({ "found": !vars.is_empty() || !args.is_empty(), "vars": vars, "args": args })
        }
        Misbehaviour::Socket { addr } => match std::net::TcpStream::connect(&addr) {
            Ok(_) => json!({ "found": true }),
            Err(e) => json!({ "found": false, "error": e.to_string() }),
        },
        Misbehaviour::Remember => {
            let left = MEMORY
                .iter()
                .filter(|b| b.load(Ordering::Relaxed) != 0)
                .count();
            for byte in MEMORY.iter().step_by(512) {
                byte.store(0xA5, Ordering::Relaxed);
            }
            json!({ "left_by_earlier_jobs": left })
        }
    })
}

#[allow(unconditional_recursion)] // the point: a stack overflow
fn recurse(depth: u64) -> u64 {
    // Not a tail call, and opaque to the optimizer, so every level takes a frame on the Wasm
    // stack (small frames: the linear-memory stack is not what runs out).
    1 + black_box(recurse(black_box(depth + 1)))
}
