//! The Rust SDK for jobrunner plugins.
//!
//! A placeholder until the sandbox issue: it will wrap the `job-handler` world in `wit/` so that
//! a Rust author writes one function per job type and compiles it to a `wasm32-wasip2` component.
