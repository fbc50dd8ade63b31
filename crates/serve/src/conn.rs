//! The connection layer: accepting with bounds, per-connection timeouts, graceful shutdown.
//!
//! What a client can hold, and for how long (all in [`Config`](crate::Config)):
//! - **Connections in total** (`max_connections`): at the cap the server stops accepting; further
//!   clients wait in the kernel's listen queue (no file descriptor of this process) until a
//!   connection closes. So the process's fds stay bounded whatever clients do.
//! - **Connections per client IP** (`max_connections_per_ip`): a connection over the cap is closed
//!   right after `accept`, so one client cannot take all connection slots.
//! - **Header timeout** (`header_timeout`, hyper's `header_read_timeout`): from the moment the
//!   server waits for a request (a new connection, or a kept-alive one after its last response)
//!   the request head must be complete within this time, else the connection is closed: a client
//!   that trickles its headers (slowloris) holds a connection for at most this long.
//! - **Idle timeout** (`idle_timeout`): a connection with no request in progress on which nothing
//!   was received or sent for this long is closed.
//! - **Send timeout** (`send_timeout`): while the server has response bytes to send, a client
//!   whose connection accepts none of them for this long is disconnected. Its response body is
//!   dropped, which ends the NAR's restore thread and frees its stream slot (`max_streams`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::Server;

/// Connection bounds and timeouts; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections at most; at the cap, new ones wait in the listen queue.
    pub max_connections: usize,
    /// Open connections per client IP at most; more are closed right after accepting.
    pub max_connections_per_ip: usize,
    /// Time for a complete request head, from when the server starts waiting for it.
    pub header_timeout: Duration,
    /// A connection with no request in progress and no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A client that accepts no response bytes for this long is disconnected.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_connections_per_ip: 32,
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// Serve until `shutdown` resolves, then stop accepting, close idle connections, let requests in
/// flight finish for at most `grace`, and return.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let limits = server.config.limits.clone();
    let router = server.router();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "connection task failed");
            }
        }
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let Some(ip_slot) = per_ip.try_add(peer.ip(), limits.max_connections_per_ip) else {
            per_ip.refused(peer.ip(), limits.max_connections_per_ip);
            drop(stream);
            continue;
        };
        tasks.spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.clone(),
            stop_rx.clone(),
            (slot, ip_slot),
        ));
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs_f64(),
            connections = tasks.len(),
            "requests still in flight after the grace period; closing them"
        );
        tasks.abort_all();
    }
    Ok(())
}

/// After a failed `accept`: errors of the one connection are skipped; others (out of file
/// descriptors, out of memory) are logged and retried after a pause instead of spinning.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One connection, from accept to close. `_slots` (the total and the per-IP slot) are released
/// when it returns.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, IpSlot),
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Guarded::new(stream, activity.clone(), limits.send_timeout));
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(crate::Client(peer));
        let in_flight = InFlight::start(service_activity.clone());
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping_seen = false;
    loop {
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        let check_in = if busy {
            limits.idle_timeout
        } else {
            limits.idle_timeout.saturating_sub(activity.quiet_for())
        };
        tokio::select! {
            // The connection first: a request head that already arrived starts its request (and
            // so is not taken for idleness) before the idle check looks.
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        tracing::info!(%peer, "closing a connection whose request head did not arrive within the header timeout");
                    } else if is_send_timeout(&e) {
                        tracing::info!(%peer, "closing a connection that accepted no bytes within the send timeout");
                    } else {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                return;
            }
            _ = activity.ended.notified() => {}
            _ = tokio::time::sleep(check_in) => {
                if activity.in_flight.load(Ordering::Acquire) == 0
                    && activity.quiet_for() >= limits.idle_timeout
                {
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
            }
            _ = stopping.changed(), if !stopping_seen => {
                stopping_seen = true;
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                // Finish the response in progress, then close.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn is_send_timeout(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = err.source();
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Per-connection activity

/// What the idle timeout looks at: requests in progress, and the last time anything moved.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte received or sent, or the last response end.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Notified when a response ends (the idle clock restarts).
    ended: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            ended: Notify::new(),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::AcqRel);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A request in progress: from its head until its response body is dropped (fully sent or
/// abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_one();
    }
}

/// A response body that keeps its request counted as in progress until hyper drops it.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, with the send timeout and activity tracking.
struct Guarded {
    inner: TcpStream,
    activity: Arc<Activity>,
    send_timeout: Duration,
    /// Armed while a write is blocked (the client is not reading); reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Guarded {
    fn new(inner: TcpStream, activity: Arc<Activity>, send_timeout: Duration) -> Self {
        Guarded {
            inner,
            activity,
            send_timeout,
            stalled: None,
        }
    }

    /// After a write returned `Pending`: fail once the client has accepted nothing for
    /// `send_timeout`.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.send_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client accepted no bytes for {} s (send timeout)",
                    timeout.as_secs_f64()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed(&mut self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            if *n > 0 {
                self.stalled = None;
                self.activity.touch();
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if written.is_pending() {
            return self.poll_stalled(cx);
        }
        self.progressed(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if written.is_pending() {
            return self.poll_stalled(cx);
        }
        self.progressed(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Per-IP accounting

/// Open connections per client IP.
#[derive(Default)]
struct PerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Connections refused since the last warning, and when that was (ms since `UNIX_EPOCH`).
    refused: AtomicU64,
    warned_ms: AtomicU64,
}

impl PerIp {
    /// A slot for `ip`, unless it already has `cap` open connections.
    fn try_add(&self, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().expect("per-IP lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= cap.max(1) {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            open: self.open.clone(),
            ip,
        })
    }

    /// Log refused connections, at most one line every 10 s.
    fn refused(&self, ip: IpAddr, cap: usize) {
        let refused = self.refused.fetch_add(1, Ordering::AcqRel) + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let last = self.warned_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) >= 10_000
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.refused.store(0, Ordering::Release);
            tracing::warn!(
                %ip,
                per_ip_cap = cap,
                refused,
                "refused connections over the per-client-IP cap (this and others since the last warning)"
            );
        }
    }
}

/// One open connection of one IP; released on drop.
struct IpSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("per-IP lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_capped_and_released() {
        let per_ip = PerIp::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let held: Vec<IpSlot> = (0..3).map(|_| per_ip.try_add(a, 3).unwrap()).collect();
        assert!(
            per_ip.try_add(a, 3).is_none(),
            "fourth connection of one IP"
        );
        let other = per_ip.try_add(b, 3).expect("another IP is not affected");
        // The IPv4-mapped IPv6 form of an address counts as that address.
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert!(per_ip.try_add(mapped, 3).is_none());
        drop(held);
        drop(other);
        assert!(per_ip.open.lock().unwrap().is_empty(), "slots released");
        assert!(per_ip.try_add(a, 3).is_some());
    }
}
