//! The request log: one line per request, written when its response body ends (or is abandoned),
//! with the client's address, method, path, status, body bytes sent, duration, and how the body
//! ended. In text form (the default) a person reads it as it is:
//!
//! ```text
//! … INFO 127.0.0.1 "GET /nar/0f5b….nar" 206 1048576 bytes 12.3 ms
//! … INFO 127.0.0.1 "GET /nar/1avr….nar.zst" 200 65536 bytes 3.1 ms, aborted (client went away)
//! ```
//! In JSON (`--log-format json`) each field is its own key. The counters of `/metrics` are taken
//! at the same moment, so the log and the metrics always agree.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::{metrics, Server};

/// How requests are logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestLog {
    /// Not at all.
    Off,
    /// One line of text per request, for people.
    Text,
    /// One event per request with every field separate, for log processors.
    Fields,
}

/// The client of a request: set by the connection layer as a request extension.
#[derive(Clone, Copy, Debug)]
pub struct Client(pub SocketAddr);

/// Logs one line per request when its response body ends (or is abandoned).
pub(crate) async fn log_request(
    State(server): State<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let client = request.extensions().get::<Client>().map(|c| c.0);
    let kind = metrics::Kind::of_path(&path);
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let logged = LoggedBody {
        inner: body,
        mode: server.config.request_log,
        client,
        method,
        path,
        status,
        start,
        bytes: 0,
        outcome: None,
        metrics: kind.map(|kind| (server, kind)),
    };
    Response::from_parts(parts, Body::new(logged))
}

struct LoggedBody {
    inner: Body,
    mode: RequestLog,
    client: Option<SocketAddr>,
    method: Method,
    path: String,
    status: u16,
    start: Instant,
    bytes: u64,
    outcome: Option<&'static str>,
    /// Where to count the response when it ends (none for `/metrics` itself).
    metrics: Option<(Arc<Server>, metrics::Kind)>,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.outcome = Some("aborted (error)"),
            Poll::Ready(None) => self.outcome = self.outcome.or(Some("complete")),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let outcome = match self.outcome {
            Some(o) => o,
            // Hyper stops polling once a body with an exact length has delivered all of it.
            None if self.method == Method::HEAD
                || http_body::Body::is_end_stream(&self.inner)
                || http_body::Body::size_hint(&self.inner).exact() == Some(self.bytes) =>
            {
                "complete"
            }
            None => "aborted (client went away)",
        };
        if let Some((server, kind)) = &self.metrics {
            server.metrics.response_done(
                *kind,
                self.status,
                self.bytes,
                outcome == "aborted (error)",
            );
        }
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let client = match self.client {
            Some(addr) => addr.ip().to_canonical().to_string(),
            None => "-".to_string(),
        };
        match self.mode {
            RequestLog::Off => {}
            RequestLog::Text => {
                let ending = match outcome {
                    "complete" => String::new(),
                    other => format!(", {other}"),
                };
                tracing::info!(
                    target: "refstrip_serve::access",
                    "{client} \"{} {}\" {} {} bytes {ms:.1} ms{ending}",
                    self.method,
                    self.path,
                    self.status,
                    self.bytes,
                );
            }
            RequestLog::Fields => tracing::info!(
                target: "refstrip_serve::access",
                client,
                method = %self.method,
                path = %self.path,
                status = self.status,
                bytes = self.bytes,
                ms = format_args!("{ms:.1}"),
                outcome,
                "request",
            ),
        }
    }
}
