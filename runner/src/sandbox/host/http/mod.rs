//! Outgoing HTTP (`wasi:http/outgoing-handler`, served by wasmtime-wasi-http), deny by
//! default: a request leaves only to a host the plugin's manifest grants ([`grant`]), and the
//! tenant's policy allows, at an address the SSRF guard lets through ([`guard`], checked on
//! the address connected to), within the attempt's limits ([`HttpLimits`]: count, timeouts,
//! body sizes) and the runner's cap on requests in flight. Redirects are handed to the guest,
//! never followed. Every request, sent or refused, writes one log line ([`exchange`]).
//!
//! wasmtime-wasi-http parses the guest's request and hands it to [`Hooks::send_request`];
//! from there this module resolves, vets, connects and speaks HTTP/1.1 itself ([`send`]), so
//! that no address is connected to without being checked.

mod body;
mod dial;
pub(crate) mod exchange;
pub mod grant;
pub mod guard;
mod network;
mod send;
pub mod settings;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::{Capability, GuestState, JobLabel, Services};
use crate::sandbox::Limits;
use exchange::Exchange;
use grant::Destination;
pub(crate) use network::Network;
use send::{RequestLimits, Sent};
use settings::HttpLimits;

/// The outgoing HTTP capability.
pub(crate) struct Http;

/// One attempt's HTTP: wasmtime-wasi-http's context and the hooks that apply the policy.
pub(crate) struct HttpState {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

/// The policy of one attempt: its grant and limits, and the requests it has made.
struct Hooks {
    job: Arc<JobLabel>,
    limits: HttpLimits,
    network: Arc<Network>,
    requests: u32,
    /// Requests refused over `max_requests` after the first (logged once, counted here).
    over_cap: u64,
}

impl Capability for Http {
    type State = HttpState;

    fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
    }

    fn start(job: &Arc<JobLabel>, limits: &Limits, services: &Services) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                job: Arc::clone(job),
                limits: limits.http.clone(),
                network: Arc::clone(&services.network),
                requests: 0,
                over_cap: 0,
            },
        }
    }

    fn finish(state: &mut HttpState) {
        let hooks = &state.hooks;
        if hooks.over_cap > 0 {
            let job = &hooks.job;
            tracing::warn!(
                target: exchange::TARGET,
                job_id = job.id, job_type = %job.job_type, tenant = %job.tenant, attempt = job.attempt,
                limit = "max_requests", refused = hooks.over_cap,
                "more http requests refused over the attempt's cap"
            );
        }
    }
}

type SendFuture = Box<dyn Future<Output = Result<Sent, Error>> + Send>;

impl Hooks {
    /// Counts the request and checks its grant; the request's log line and limits if it
    /// may go.
    fn admit(
        &mut self,
        request: &Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(Destination, RequestLimits, Exchange), Error> {
        let uri = request.uri();
        let destination = Destination::of(uri).ok_or(Error::HttpRequestUriInvalid)?;
        let exchange = || Exchange::new(&self.job, request.method(), &destination, uri.path());
        self.requests = self.requests.saturating_add(1);
        if self.requests > self.limits.max_requests {
            let error = format!(
                "request limit reached: {} per attempt",
                self.limits.max_requests
            );
            if self.requests == self.limits.max_requests + 1 {
                exchange().fail(&error, Some("max_requests"));
            } else {
                self.over_cap += 1;
            }
            return Err(Error::InternalError(Some(error)));
        }
        let mut exchange = exchange();
        if let Err(denied) = self.limits.hosts.check(&destination) {
            exchange.fail(&format_args!("refused {destination}: {denied}"), None);
            return Err(Error::HttpRequestDenied);
        }
        Ok((destination, self.request_limits(options), exchange))
    }

    /// The attempt's limits, lowered (never raised) by the guest's request options.
    fn request_limits(&self, options: Option<RequestOptions>) -> RequestLimits {
        let options = options.unwrap_or_default();
        let lower = |asked: Option<Duration>, own: Duration| {
            asked.map_or(own, |asked| asked.clamp(Duration::from_millis(1), own))
        };
        let limits = &self.limits;
        RequestLimits {
            connect_timeout: lower(options.connect_timeout, limits.connect_timeout),
            first_byte_timeout: lower(options.first_byte_timeout, limits.first_byte_timeout),
            between_bytes_timeout: lower(
                options.between_bytes_timeout,
                limits.between_bytes_timeout,
            ),
            max_request_body: limits.max_request_body,
            max_response_body: limits.max_response_body,
        }
    }
}

impl WasiHttpHooks for Hooks {
    /// Without the default's unattributed log line: the request's own line has the error.
    fn p2_error_from_hyper(&mut self, _error: &hyper::Error) -> ErrorCode {
        ErrorCode::HttpProtocolError
    }

    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_error: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        match self.admit(&request, options) {
            Ok((destination, limits, exchange)) => Box::new(send::send(
                Arc::clone(&self.network),
                request,
                destination,
                limits,
                exchange,
            )),
            Err(error) => Box::new(std::future::ready(Err(error))),
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}
