//! The fault-injection suite: real runner processes on a real database, broken on purpose.
//! Each test checks the queue's promises through the database's own audit of job endings
//! (`support::fleet`): every job ends exactly once, nothing is lost, and every runner that was
//! not killed survives.
//!
//! Each test forces the fault it checks rather than leaving it to timing: it waits for the
//! condition that makes the fault real (a runner holding jobs, a lease lapsed by the clock, an
//! outcome that failed to be written), freezes runners (SIGSTOP) where what they hold must not
//! change meanwhile, and asserts on what was committed. A machine busy with other work slows
//! such a test down; it does not change what it checks.
//!
//! Each test prints what it measured (recovery times, throughput) on stderr; `cargo nextest
//! run -E 'test(reliability::)' --no-capture` shows them.

mod bad_input;
mod crashes;
mod database;
mod hostile;
mod memory;
