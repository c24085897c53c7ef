//! The fault-injection suite: real runner processes on a real database, broken on purpose.
//! Each test checks the queue's promises through the database's own audit of job endings
//! (`support::fleet`): every job ends exactly once, nothing is lost, and every runner that was
//! not killed survives.
//!
//! Each test prints what it measured (recovery times, throughput) on stderr; `cargo nextest
//! run -E 'test(reliability::)' --no-capture` shows them.

mod bad_input;
mod crashes;
mod database;
mod hostile;
