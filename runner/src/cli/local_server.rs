//! A small HTTP/1.1 server for the demo and the benchmark to send their jobs' requests to:
//! each connection served by hyper on its own task, each request answered by `answer`.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A response with its whole body.
pub type Answer = hyper::Response<Full<Bytes>>;

/// Serves every connection `listener` accepts until it fails (or the task is dropped).
pub async fn serve<F, Fut>(listener: TcpListener, answer: F)
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answered = answer(request);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
