//! End-to-end tests: a real PostgreSQL (one database per test, so they run in parallel) and,
//! where only a process can show it, the real `runner` binary.

mod support;

mod batches;
mod bench;
mod claim;
mod cli;
mod conformance;
mod embed;
mod enqueue;
mod follow_ups;
mod hot_reload;
mod http;
mod leases;
mod operator;
mod plugin_cli;
mod plugin_dir;
mod reliability;
mod reminders;
mod retries;
mod sandbox;
mod schedules;
mod schema;
mod secrets;
mod tenants;
mod web;
mod worker;
