//! One request as the host log tells it: a line per request (target `jobrunner::http`) with
//! the job's id, type, tenant and attempt, the method and `scheme://host:port/path` — never
//! the query string, user info or headers, where tokens live — the status, bytes each way,
//! the duration, and the error or refusal with the limit that tripped, if one did. The line
//! is written when the response body ends, fails or is dropped (the guest let go of it, or
//! the attempt ended), so every request gets exactly one.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::Method;

use super::grant::Destination;
use crate::sandbox::host::JobLabel;

/// The log target of request lines.
pub const TARGET: &str = "jobrunner::http";

/// One request, until its line is written.
#[derive(Debug)]
pub(crate) struct Exchange {
    job: Arc<JobLabel>,
    method: Method,
    url: String,
    /// The destination's host, for the request counter.
    host: String,
    started: Instant,
    /// Request body bytes sent, counted by the body as hyper pulls it.
    pub bytes_out: Arc<AtomicU64>,
    bytes_in: u64,
    status: Option<u16>,
    written: bool,
}

impl Exchange {
    /// A request of `job` to `destination` and `path` (without its query).
    pub fn new(
        job: &Arc<JobLabel>,
        method: &Method,
        destination: &Destination,
        path: &str,
    ) -> Self {
        Self {
            job: Arc::clone(job),
            method: method.clone(),
            // A secret URL's path (a Slack webhook's) is redacted here, once.
            url: job
                .redactor()
                .redact(&format!("{destination}{path}"))
                .into_owned(),
            host: destination.host.clone(),
            started: Instant::now(),
            bytes_out: Arc::default(),
            bytes_in: 0,
            status: None,
            written: false,
        }
    }

    /// The response's head arrived.
    pub fn responded(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// Response body bytes arrived.
    pub fn received(&mut self, bytes: usize) {
        self.bytes_in += bytes as u64;
    }

    /// Response body bytes so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// The response ended.
    pub fn finish(&mut self) {
        self.write(None, None);
    }

    /// The request failed or was refused; `limit` names the limit that tripped, if one did.
    pub fn fail(&mut self, error: &dyn Display, limit: Option<&'static str>) {
        self.write(Some(error), limit);
    }

    fn write(&mut self, error: Option<&dyn Display>, limit: Option<&'static str>) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let job = &self.job;
        crate::metrics::http_request(&self.host, self.status);
        job.journal.http(jobrunner_client::HttpCall {
            method: self.method.to_string(),
            url: self.url.clone(),
            status: self.status,
            duration_ms: self.started.elapsed().as_millis() as u64,
            error: error.map(|e| job.redactor().redact(&e.to_string()).into_owned()),
        });
        if limit.is_some() {
            crate::metrics::limit_tripped(&job.job_type, &job.tenant, "http");
        }
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let bytes_out = self.bytes_out.load(Ordering::Relaxed);
        let (method, url, status, bytes_in) =
            (self.method.as_str(), &self.url, self.status, self.bytes_in);
        match error {
            None => tracing::info!(
                target: TARGET,
                job_id = job.id, job_type = %job.job_type, tenant = %job.tenant, attempt = job.attempt,
                method, url, status, bytes_out, bytes_in, duration_ms,
                "http request"
            ),
            Some(error) => tracing::warn!(
                target: TARGET,
                job_id = job.id, job_type = %job.job_type, tenant = %job.tenant, attempt = job.attempt,
                method, url, status, bytes_out, bytes_in, duration_ms, limit,
                error = %job.redactor().redact(&error.to_string()),
                "http request failed"
            ),
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.written {
            let reason = match self.status {
                Some(_) => {
                    "the response body was not read to its end (the guest dropped it, or the attempt ended)"
                }
                None => {
                    "abandoned before the response arrived (the guest dropped it, or the attempt ended)"
                }
            };
            self.fail(&reason, None);
        }
    }
}
