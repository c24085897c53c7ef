//! Guest stdout and stderr, captured in memory with a size cap.
//!
//! A guest may print as much as it likes; the host keeps only the last `cap` bytes of each
//! stream (a Rust panic message, written last, survives any amount of earlier output) and
//! counts what it dropped. Writes never fail, so a chatty guest is not broken by the cap.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::secrets::Redactor;

/// How much a guest may write in one go before the stream asks it to check again.
const WRITE_PERMIT: usize = 64 * 1024;

/// One captured stream. Clones share the buffer: the store holds one, the host reads another.
#[derive(Clone, Debug)]
pub(crate) struct CapturedOutput(Arc<Mutex<Tail>>);

#[derive(Debug)]
struct Tail {
    bytes: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl CapturedOutput {
    /// An empty stream that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Tail {
            bytes: VecDeque::new(),
            cap,
            dropped: 0,
        })))
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        // A panic while holding this lock cannot leave the buffer inconsistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, data: &[u8]) {
        let mut tail = self.tail();
        let keep = data.len().min(tail.cap);
        tail.dropped += (data.len() - keep) as u64;
        tail.bytes.extend(&data[data.len() - keep..]);
        let excess = tail.bytes.len().saturating_sub(tail.cap);
        tail.bytes.drain(..excess);
        tail.dropped += excess as u64;
    }

    /// What the guest wrote (its tail, if it wrote more than the cap), or `None` if nothing,
    /// with secrets redacted: a tail that starts inside one loses that part too.
    pub fn text(&self, redactor: &Redactor) -> Option<String> {
        let tail = self.tail();
        if tail.bytes.is_empty() {
            return None;
        }
        let (front, back) = tail.bytes.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat()).into_owned();
        Some(match tail.dropped {
            0 => redactor.redact(&text).into_owned(),
            dropped => format!(
                "[{dropped} earlier bytes dropped]\n{}",
                redactor.redact_tail(&text)
            ),
        })
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_counts_what_it_dropped() {
        let out = CapturedOutput::new(8);
        let none = Redactor::default();
        assert_eq!(out.text(&none), None);
        out.push(b"hello");
        assert_eq!(out.text(&none).as_deref(), Some("hello"));
        out.push(b" world");
        assert_eq!(
            out.text(&none).as_deref(),
            Some("[3 earlier bytes dropped]\nlo world")
        );
        out.push(&[b'x'; 100]);
        assert_eq!(
            out.text(&none).as_deref(),
            Some("[103 earlier bytes dropped]\nxxxxxxxx")
        );
    }
}
