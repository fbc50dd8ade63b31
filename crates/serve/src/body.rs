//! The response body of a NAR, and the rule for when its status line may go out.
//!
//! The restore thread ([`ChannelWriter`](crate::ChannelWriter)) holds back its latest chunk until
//! the NAR's SHA-256 and size were checked, so an unfinished stream never ends cleanly. With a
//! Content-Length (uncompressed NARs) that is not enough on its own: hyper considers the response
//! complete once Content-Length bytes went out, and cuts a longer chunk at that length. A restore
//! that produces *more* than NarSize (a hostile or corrupt manifest) could then deliver a complete
//! response of wrong bytes. So a chunk that would reach NarSize is only released after the stream
//! ended cleanly (the check passed and nothing follows), and a chunk that would pass NarSize is an
//! error. Before the status line, [`start`] applies the same rule to the first chunk, so such a
//! NAR, when its first chunk already reaches NarSize, is a plain `500`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Why a NAR response must not start, or must be aborted.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The restore failed (its error item) or ended without sending anything.
    Restore,
    /// More bytes than NarSize.
    TooLong,
    /// The stream ended before NarSize bytes.
    TooShort,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::Restore => "the restore failed",
            BodyError::TooLong => "the restore produced more than NarSize",
            BodyError::TooShort => "the restore ended before NarSize",
        })
    }
}

/// Wait for the NAR's first chunk and decide whether a `200` may be sent: it may not if the
/// restore failed, if the first chunk is longer than `exact`, or if it is exactly `exact` long but
/// the stream does not end cleanly right after it (wrong bytes would otherwise be complete).
pub async fn start(
    mut rx: mpsc::Receiver<io::Result<Bytes>>,
    exact: Option<u64>,
) -> Result<NarBody, BodyError> {
    let first = match rx.recv().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(_)) | None => return Err(BodyError::Restore),
    };
    let mut body = NarBody {
        pending: Some(first),
        rx,
        exact,
        sent: 0,
        ended: false,
    };
    if let Some(n) = exact {
        let len = body.pending.as_ref().map_or(0, |b| b.len() as u64);
        if len > n {
            return Err(BodyError::TooLong);
        }
        if len == n {
            body.await_clean_end().await?;
        }
    }
    Ok(body)
}

/// Chunks from the restore thread; an error item, or a length that disagrees with the announced
/// Content-Length, aborts the response instead of ending it.
pub struct NarBody {
    /// Received and not yet passed on.
    pending: Option<Bytes>,
    rx: mpsc::Receiver<io::Result<Bytes>>,
    /// Exact length (uncompressed NARs), announced as Content-Length.
    exact: Option<u64>,
    /// Bytes passed on.
    sent: u64,
    /// The restore closed the stream cleanly (it passed its checks).
    ended: bool,
}

impl NarBody {
    /// Before the status line: the next item must be the clean end of the stream.
    async fn await_clean_end(&mut self) -> Result<(), BodyError> {
        loop {
            match self.rx.recv().await {
                None => {
                    self.ended = true;
                    return Ok(());
                }
                Some(Ok(more)) if more.is_empty() => continue,
                Some(Ok(_)) => return Err(BodyError::TooLong),
                Some(Err(_)) => return Err(BodyError::Restore),
            }
        }
    }
}

fn abort(why: BodyError) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
    Poll::Ready(Some(Err(io::Error::other(why.to_string()))))
}

impl http_body::Body for NarBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.pending.take() {
                let after = this.sent + chunk.len() as u64;
                match this.exact {
                    Some(n) if after > n => return abort(BodyError::TooLong),
                    // The chunk completes the body: release it only after the clean end.
                    Some(n) if after == n && !this.ended => match this.rx.poll_recv(cx) {
                        Poll::Pending => {
                            this.pending = Some(chunk);
                            return Poll::Pending;
                        }
                        Poll::Ready(None) => this.ended = true,
                        Poll::Ready(Some(Ok(more))) if more.is_empty() => {
                            this.pending = Some(chunk);
                            continue;
                        }
                        Poll::Ready(Some(Ok(_))) => return abort(BodyError::TooLong),
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    },
                    _ => {}
                }
                this.sent = after;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.pending = Some(bytes),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.ended = true;
                    if this.exact.is_some_and(|n| this.sent != n) {
                        return abort(BodyError::TooShort);
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            // The whole length, as announced (the request log compares it with the bytes sent).
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// An empty body of unknown length: the body of a HEAD answer whose GET is chunked, so that no
/// `content-length: 0` is added to it.
pub struct UnknownLength;

impl http_body::Body for UnknownLength {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    /// A channel pre-filled with `items`, closed unless `open`.
    fn channel(
        items: Vec<io::Result<Bytes>>,
        open: bool,
    ) -> (
        mpsc::Receiver<io::Result<Bytes>>,
        Option<mpsc::Sender<io::Result<Bytes>>>,
    ) {
        let (tx, rx) = mpsc::channel(items.len() + 1);
        for item in items {
            tx.try_send(item).unwrap();
        }
        (rx, open.then_some(tx))
    }

    fn bytes(n: usize) -> io::Result<Bytes> {
        Ok(Bytes::from(vec![7u8; n]))
    }

    /// The whole body: the bytes passed on, and whether it ended cleanly.
    async fn collect(mut body: NarBody) -> (usize, bool) {
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => got += frame.into_data().unwrap().len(),
                Err(_) => return (got, false),
            }
        }
        (got, true)
    }

    #[tokio::test]
    async fn a_first_chunk_longer_than_nar_size_is_refused_before_the_status_line() {
        // The issue #17 case: NarSize < one chunk, the restore produced more.
        let (rx, _) = channel(vec![bytes(1000)], false);
        assert_eq!(start(rx, Some(400)).await.err(), Some(BodyError::TooLong));
    }

    #[tokio::test]
    async fn a_first_chunk_of_exactly_nar_size_needs_the_clean_end() {
        // Followed by more bytes: the restore went past NarSize.
        let (rx, _) = channel(vec![bytes(400), bytes(10)], false);
        assert_eq!(start(rx, Some(400)).await.err(), Some(BodyError::TooLong));
        // Followed by the restore's error.
        let (rx, _) = channel(vec![bytes(400), Err(io::Error::other("hash"))], false);
        assert_eq!(start(rx, Some(400)).await.err(), Some(BodyError::Restore));
        // Followed by the clean end: complete.
        let (rx, _) = channel(vec![bytes(400)], false);
        let body = start(rx, Some(400)).await.unwrap();
        assert!(body.ended);
        assert_eq!(collect(body).await, (400, true));
    }

    #[tokio::test]
    async fn a_failed_or_empty_restore_is_refused() {
        let (rx, _) = channel(vec![Err(io::Error::other("corrupt"))], false);
        assert_eq!(start(rx, Some(400)).await.err(), Some(BodyError::Restore));
        let (rx, _) = channel(vec![], false);
        assert_eq!(start(rx, None).await.err(), Some(BodyError::Restore));
    }

    #[tokio::test]
    async fn a_chunk_reaching_nar_size_is_held_until_the_stream_ends() {
        // NarSize a multiple of the chunk size and a restore that goes on: the chunk that would
        // complete the body is never passed on.
        let (rx, _) = channel(vec![bytes(100), bytes(100), bytes(100)], false);
        let body = start(rx, Some(200)).await.unwrap();
        assert_eq!(collect(body).await, (100, false));
        // The same with the restore still running: the completing chunk waits for the end.
        let (rx, tx) = channel(vec![bytes(100), bytes(100)], true);
        let mut body = start(rx, Some(200)).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 100);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            Pin::new(&mut body).poll_frame(&mut cx).is_pending(),
            "held back"
        );
        drop(tx);
        assert_eq!(collect(body).await, (100, true));
    }

    #[tokio::test]
    async fn lengths_that_disagree_with_nar_size_abort() {
        // Too long in a later chunk.
        let (rx, _) = channel(vec![bytes(100), bytes(150)], false);
        assert_eq!(
            collect(start(rx, Some(200)).await.unwrap()).await,
            (100, false)
        );
        // Too short.
        let (rx, _) = channel(vec![bytes(100), bytes(50)], false);
        assert_eq!(
            collect(start(rx, Some(200)).await.unwrap()).await,
            (150, false)
        );
        // Error after some chunks.
        let (rx, _) = channel(vec![bytes(100), Err(io::Error::other("x"))], false);
        assert_eq!(
            collect(start(rx, Some(200)).await.unwrap()).await,
            (100, false)
        );
        // Exact, in several chunks.
        let (rx, _) = channel(vec![bytes(100), bytes(60), bytes(40)], false);
        assert_eq!(
            collect(start(rx, Some(200)).await.unwrap()).await,
            (200, true)
        );
        // Unknown length (zstd): whatever arrives, ended by the clean end.
        let (rx, _) = channel(vec![bytes(100), bytes(60)], false);
        assert_eq!(collect(start(rx, None).await.unwrap()).await, (160, true));
    }
}
