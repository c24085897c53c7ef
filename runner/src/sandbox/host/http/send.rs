//! Sending one granted request: a runner-wide slot, DNS, a connection to a vetted address,
//! TLS with the name the guest asked for, then HTTP/1.1 over it, every step within its limit,
//! the request body counted as it is sent and the response body as it is received.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;
use wasmtime_wasi_http::{Error, WasiBody};

use super::body::{CappedBody, ResponseBody};
use super::dial::{DialError, dial, resolve};
use super::exchange::Exchange;
use super::grant::Destination;
use super::network::Network;

/// The limits one request is held to: the attempt's, lowered by the guest's request options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
    pub max_request_body: u64,
    pub max_response_body: u64,
}

/// What the host's `send_request` hook hands back: the response, and the connection's I/O to
/// drive while its body is read.
pub(crate) type Sent = (
    Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Why a request failed: the code the guest gets, the limit that tripped if one did, and
/// what the log line says if it knows more than the code.
struct Failure {
    code: Error,
    limit: Option<&'static str>,
    detail: Option<String>,
}

impl Failure {
    fn limit(code: Error, limit: &'static str) -> Self {
        Self {
            code,
            limit: Some(limit),
            detail: None,
        }
    }

    fn detail(code: Error, detail: impl std::fmt::Display) -> Self {
        Self {
            code,
            limit: None,
            detail: Some(detail.to_string()),
        }
    }
}

impl From<Error> for Failure {
    fn from(code: Error) -> Self {
        Self {
            code,
            limit: None,
            detail: None,
        }
    }
}

/// Sends `request` to `destination`, writing its log line through `exchange`.
pub(crate) async fn send(
    network: Arc<Network>,
    request: Request<WasiBody>,
    destination: Destination,
    limits: RequestLimits,
    mut exchange: Exchange,
) -> Result<Sent, Error> {
    let bytes_out = Arc::clone(&exchange.bytes_out);
    match round_trip(network, request, destination, limits, bytes_out).await {
        Ok((response, permit, connection)) => {
            exchange.responded(response.status().as_u16());
            let response = response.map(|incoming| {
                let limit = limits.max_response_body;
                ResponseBody::new(
                    incoming,
                    limit,
                    limits.between_bytes_timeout,
                    exchange,
                    permit,
                )
                .boxed_unsync()
            });
            // A connection that fails later fails the response body, which the guest sees
            // and the request's log line records; wasmtime would log it again, unattributed.
            let connection = async move {
                let _ = connection.await;
                Ok(())
            };
            Ok((response, Box::new(connection)))
        }
        Err(failure) => {
            match &failure.detail {
                Some(detail) => {
                    exchange.fail(&format_args!("{}: {detail}", failure.code), failure.limit)
                }
                None => exchange.fail(&failure.code, failure.limit),
            }
            Err(failure.code)
        }
    }
}

type Connection = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Connects and sends the request; the response's head, the slot it holds, and the
/// connection to drive while its body is read.
async fn round_trip(
    network: Arc<Network>,
    mut request: Request<WasiBody>,
    destination: Destination,
    limits: RequestLimits,
    bytes_out: Arc<AtomicU64>,
) -> Result<(Response<Incoming>, OwnedSemaphorePermit, Connection), Failure> {
    if let Some(length) = content_length(request.headers())
        && length > limits.max_request_body
    {
        return Err(Failure::limit(
            Error::HttpRequestBodySize(Some(length)),
            "max_request_body",
        ));
    }
    let permit = timeout(
        limits.connect_timeout,
        Arc::clone(&network.slots).acquire_owned(),
    )
    .await
    .map_err(|_| Failure::limit(Error::ConnectionLimitReached, "max_concurrent"))?
    .map_err(|_| Error::InternalError(Some("the runner is shutting down".into())))?;
    let stream = timeout(limits.connect_timeout, connect(&network, &destination))
        .await
        .map_err(|_| Failure::limit(Error::ConnectionTimeout, "connect_timeout"))??;
    // No I/O: the handshake only sets up the connection's state.
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, CappedBody>(TokioIo::new(stream))
            .await
            .map_err(Error::from)?;
    let mut connection: Connection = Box::pin(async move { connection.await.map_err(Error::from) });

    // hyper sends the URI as given: the origin form, without scheme and host, for a server.
    *request.uri_mut() = origin_form(request.uri());
    let tripped = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| CappedBody {
        inner: body,
        sent: bytes_out,
        limit: limits.max_request_body,
        tripped: Arc::clone(&tripped),
    });
    let mut response = std::pin::pin!(timeout(
        limits.first_byte_timeout,
        sender.send_request(request)
    ));
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        ended = &mut connection => match ended {
            // The server answered and closed: the response is there to take.
            Ok(()) => {
                connection = Box::pin(std::future::ready(Ok(())));
                response.await
            }
            Err(error) => return Err(request_failure(error, &tripped)),
        },
    };
    let response = response
        .map_err(|_| Failure::limit(Error::HttpResponseTimeout, "first_byte_timeout"))?
        .map_err(|e| request_failure(Error::from(e), &tripped))?;
    if let Some(length) = content_length(response.headers())
        && length > limits.max_response_body
    {
        return Err(Failure::limit(
            Error::HttpResponseBodySize(Some(length)),
            "max_response_body",
        ));
    }
    Ok((response, permit, connection))
}

/// A failure while sending: the request body's cap, if that is what stopped it.
fn request_failure(error: Error, body_tripped: &AtomicBool) -> Failure {
    if body_tripped.load(Ordering::Relaxed) {
        Failure::limit(Error::HttpRequestBodySize(None), "max_request_body")
    } else {
        Failure::from(error)
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn origin_form(uri: &Uri) -> Uri {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    path.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// A stream to the destination: resolved, vetted by the guard, connected, and wrapped in
/// TLS for `https` with the host name the guest asked for.
async fn connect(network: &Network, destination: &Destination) -> Result<Box<dyn Stream>, Failure> {
    let addrs = resolve(&destination.host, destination.port)
        .await
        .map_err(dial_failure)?;
    let (tcp, _addr) = dial(
        &destination.host,
        &addrs,
        &network.guard,
        TcpStream::connect,
    )
    .await
    .map_err(dial_failure)?;
    let _ = tcp.set_nodelay(true);
    if !destination.https {
        return Ok(Box::new(tcp));
    }
    let name =
        ServerName::try_from(destination.host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?;
    let tls = network.tls.connect(name, tcp).await.map_err(|e| {
        let certificate = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
        let code = if certificate {
            Error::TlsCertificateError
        } else {
            Error::TlsProtocolError
        };
        Failure::detail(code, e)
    })?;
    Ok(Box::new(tls))
}

/// The guest gets the wasi:http code; the log line says which address or range refused.
fn dial_failure(error: DialError) -> Failure {
    let code = match &error {
        DialError::Resolve { .. } => Error::DnsError {
            rcode: None,
            info_code: None,
        },
        DialError::Blocked { .. } => Error::DestinationIpProhibited,
        DialError::Connect { .. } => Error::ConnectionRefused,
    };
    Failure::detail(code, error)
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}
