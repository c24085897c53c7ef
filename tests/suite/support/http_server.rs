//! A real HTTP/1.1 server on a loopback address, for the guests' outgoing requests: it records
//! what it receives and answers by path.
//!
//! | path | answer |
//! | --- | --- |
//! | `/status/N` | status N |
//! | `/redirect` | 302 to `/status/200` |
//! | `/stream/N` | N bytes, chunked, counted as the server hands them over |
//! | `/sized/N` | N bytes with a `Content-Length` |
//! | `/never` | nothing, ever |
//! | `/trickle` | the head, then a byte every 2 s |
//! | anything else | 200 `ok` |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    streamed: AtomicU64,
}

/// A server running until dropped.
pub struct TestServer {
    addr: SocketAddr,
    scheme: &'static str,
    host: String,
    state: Arc<State>,
    _tasks: JoinSet<()>,
}

impl TestServer {
    /// Plain HTTP on `ip` (a loopback address), on a free port.
    pub async fn start(ip: &str) -> Self {
        Self::serve(ip, None).await
    }

    /// HTTPS on `ip`, with `acceptor`'s certificate.
    pub async fn start_tls(ip: &str, acceptor: TlsAcceptor) -> Self {
        Self::serve(ip, Some(acceptor)).await
    }

    async fn serve(ip: &str, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let mut tasks = JoinSet::new();
        let shared = Arc::clone(&state);
        let scheme = if tls.is_some() { "https" } else { "http" };
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (state, tls) = (Arc::clone(&shared), tls.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(tcp), service).await,
                    };
                });
            }
        });
        Self {
            addr,
            scheme,
            host: addr.ip().to_string(),
            state,
            _tasks: tasks,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://ip:port` (for a grant).
    pub fn origin(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.addr.port())
    }

    /// The same origin, named `host` instead of by its IP address.
    pub fn origin_as(&self, host: &str) -> String {
        format!("{}://{host}:{}", self.scheme, self.addr.port())
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// What the server received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Bytes of `/stream` bodies handed to the connection so far.
    pub fn streamed(&self) -> u64 {
        self.state.streamed.load(Ordering::Relaxed)
    }
}

type Answer = Response<BoxBody<Bytes, Infallible>>;

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Result<Answer, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers,
        body,
    });
    let path = parts.uri.path();
    let number = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
    };
    let full = |status: u16, text: &'static str| {
        Response::builder()
            .status(status)
            .body(http_body_util::Full::new(Bytes::from_static(text.as_bytes())).boxed())
            .unwrap()
    };
    Ok(if let Some(status) = number("/status/") {
        full(status as u16, "status")
    } else if path == "/redirect" {
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/status/200")
            .body(http_body_util::Empty::new().boxed())
            .unwrap()
    } else if let Some(bytes) = number("/stream/") {
        Response::new(Generated::new(bytes, Some(Arc::clone(&state))).boxed())
    } else if let Some(bytes) = number("/sized/") {
        Response::builder()
            .header("content-length", bytes)
            .body(Generated::new(bytes, None).boxed())
            .unwrap()
    } else if path == "/never" {
        std::future::pending().await
    } else if path == "/trickle" {
        Response::new(Trickle::default().boxed())
    } else {
        full(200, "ok")
    })
}

/// `left` bytes of `x`, produced as the connection asks for them.
struct Generated {
    left: u64,
    counter: Option<Arc<State>>,
}

impl Generated {
    fn new(left: u64, counter: Option<Arc<State>>) -> Self {
        Self { left, counter }
    }
}

const CHUNK: u64 = 64 << 10;

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK);
        self.left -= n;
        if let Some(state) = &self.counter {
            state.streamed.fetch_add(n, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
    }
}

/// A byte every two seconds, ten times.
struct Trickle {
    sent: u32,
    next: Pin<Box<tokio::time::Sleep>>,
}

impl Default for Trickle {
    fn default() -> Self {
        Self {
            sent: 0,
            next: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == 10 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.next.as_mut().poll(cx));
        self.sent += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        self.next.as_mut().reset(deadline);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b".")))))
    }
}
