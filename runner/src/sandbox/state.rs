//! What a store holds for one attempt: the WASI context, the limiter, the guest log and the
//! meter that the epoch callback consults, and the host functions that reach them.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{
    Level,
    jobrunner::plugin::{host, types},
};
use super::guest_log::GuestLog;
use super::limits::MemoryLimiter;
use super::meter::Meter;

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
