//! The two bodies of a request, counted and capped while they stream: the guest's request
//! body as hyper sends it, and the server's response body as the guest reads it, cut at
//! `max_response_body` and stopped after `between_bytes_timeout` of silence. Nothing is
//! buffered here: memory stays flat whatever the server sends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error, WasiBody};

use super::exchange::Exchange;

/// The guest's request body, counted into the exchange and refused past its cap.
pub(crate) struct CappedBody {
    pub inner: WasiBody,
    pub sent: Arc<AtomicU64>,
    pub limit: u64,
    /// Set when the cap stopped the body, for the error to name it.
    pub tripped: Arc<AtomicBool>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let sent =
                self.sent.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
            if sent > self.limit {
                self.tripped.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(sent)))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The server's response body as the guest reads it. It holds the request's runner-wide
/// slot and its log line until it ends.
pub(crate) struct ResponseBody {
    inner: Incoming,
    limit: u64,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    exchange: Exchange,
    done: bool,
    _slot: OwnedSemaphorePermit,
}

impl ResponseBody {
    pub fn new(
        inner: Incoming,
        limit: u64,
        idle_timeout: Duration,
        exchange: Exchange,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            inner,
            limit,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            exchange,
            done: false,
            _slot: slot,
        }
    }

    fn fail(
        &mut self,
        error: Error,
        limit: Option<&'static str>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.done = true;
        self.exchange.fail(&error, limit);
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange.received(data.len());
                    if this.exchange.bytes_in() > this.limit {
                        return this.fail(
                            Error::HttpResponseBodySize(Some(this.limit)),
                            Some("max_response_body"),
                        );
                    }
                }
                let deadline = Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => this.fail(Error::from(error), None),
            Poll::Ready(None) => {
                this.done = true;
                this.exchange.finish();
                Poll::Ready(None)
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.fail(Error::ConnectionReadTimeout, Some("between_bytes_timeout"))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Only once the end was seen: a reader stopping at the inner body's end would never let
    /// this one write the request's log line.
    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
