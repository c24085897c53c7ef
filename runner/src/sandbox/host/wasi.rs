//! WASI preview 2 with nothing behind it: no preopened directories, environment variables or
//! arguments (the builder's defaults), and no network: TCP, UDP and name lookup are denied
//! explicitly, so that a change of defaults cannot open them. Clocks and random numbers are
//! real. stdout and stderr are captured, the last `max_output` bytes of each, and logged with
//! the job when the attempt ends.

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::log::emit_output;
use super::output::CapturedOutput;
use super::{Capability, GuestState, JobLabel, Services};
use crate::sandbox::Limits;

/// The WASI capability.
pub(crate) struct Wasi;

/// One attempt's WASI context and its captured output.
pub(crate) struct WasiState {
    ctx: WasiCtx,
    job: Arc<JobLabel>,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
}

impl WasiState {
    /// What the guest wrote to stdout and stderr: the tail of each, if anything, with
    /// secrets redacted.
    pub fn output(&self) -> (Option<String>, Option<String>) {
        let redactor = self.job.redactor();
        (self.stdout.text(redactor), self.stderr.text(redactor))
    }
}

impl Capability for Wasi {
    type State = WasiState;

    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)
    }

    fn start(job: &Arc<JobLabel>, limits: &Limits, _services: &Services) -> WasiState {
        let stdout = CapturedOutput::new(limits.max_output);
        let stderr = CapturedOutput::new(limits.max_output);
        let ctx = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        WasiState {
            ctx,
            job: Arc::clone(job),
            stdout,
            stderr,
        }
    }

    fn finish(state: &mut WasiState) {
        let (stdout, stderr) = state.output();
        for (stream, text) in [("stdout", stdout), ("stderr", stderr)] {
            if let Some(text) = text {
                emit_output(&state.job, stream, &text);
            }
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.table,
        }
    }
}
