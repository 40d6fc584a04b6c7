//! Answers written page by page (see `ops::stream`): the producer runs on the blocking pool
//! and hands its pieces to the response body through a bounded channel, each within the
//! read's deadline.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use scim_core::ScimError;

use super::resources::with_etag;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::if_none_match_hits;
use crate::ops::Piece;
use crate::AppState;

/// How long an answer written page by page may take when reads have no time limit
/// (`SCIM_QUERY_TIMEOUT_MS=0`): it holds a database snapshot and connection while it lasts.
const STREAM_LIMIT_WITHOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs `produce` for the caller's tenant on the blocking pool, handing its pieces to the
/// response as they come, and returns once the answer begins ([`Piece::Head`], or
/// [`Piece::Changed`]) with the body to come. An error before that is the answer. The read
/// holds a database connection while it lasts, so it is bounded in time as any read is
/// (`SCIM_QUERY_TIMEOUT_MS`, counted from its start): a client that stops reading for longer
/// gets a cut-short answer (the connection closed mid-body), never a complete-looking one.
pub(super) async fn streamed<I: Send + 'static>(
    state: web::Data<AppState>,
    caller: Caller,
    input: ApiResult<I>,
    produce: impl FnOnce(&AppState, &str, I, &mut dyn FnMut(Piece) -> bool) -> Result<(), ScimError>
        + Send
        + 'static,
) -> ApiResult<(Piece, Streamed)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Piece, ScimError>>(2);
    let runtime = tokio::runtime::Handle::current();
    let limit = state
        .config
        .query_timeout
        .unwrap_or(STREAM_LIMIT_WITHOUT_TIMEOUT);
    let deadline = tokio::time::Instant::now() + limit;
    actix_web::rt::task::spawn_blocking(move || {
        let mut sender = DeadlineSender::new(tx, runtime, deadline);
        let result = input
            .map_err(|e| e.0)
            .and_then(|i| produce(&state, &caller.tenant(&state)?, i, &mut |p| sender.send(p)));
        if sender.late {
            log::warn!(
                "an answer was cut short: the client read it more slowly than the read's time \
                 limit ({} ms) allows",
                limit.as_millis()
            );
        }
        match result {
            Err(e) if !sender.started => {
                let _ = sender.tx.blocking_send(Err(e));
            }
            Err(e) => log::warn!("an answer was cut short: {}", e.detail.escape_debug()),
            Ok(()) => {}
        }
    });
    match rx.recv().await {
        Some(Ok(first @ Piece::Head(_))) => {
            let mut body = Streamed::new(rx);
            body.read_ahead().await;
            Ok((first, body))
        }
        Some(Ok(first @ Piece::Changed)) => Ok((first, Streamed::new(rx))),
        Some(Err(e)) => Err(ApiError(e)),
        Some(Ok(_)) | None => Err(ApiError(ScimError::internal(
            "a read written page by page ended before its answer began",
        ))),
    }
}

/// Hands pieces from a blocking thread to the response, each waiting at most until one
/// deadline for room in the channel.
struct DeadlineSender {
    tx: tokio::sync::mpsc::Sender<Result<Piece, ScimError>>,
    runtime: tokio::runtime::Handle,
    deadline: tokio::time::Instant,
    /// the answer has begun (its first piece is handed over)
    started: bool,
    /// a piece waited past the deadline
    late: bool,
}

impl DeadlineSender {
    fn new(
        tx: tokio::sync::mpsc::Sender<Result<Piece, ScimError>>,
        runtime: tokio::runtime::Handle,
        deadline: tokio::time::Instant,
    ) -> Self {
        DeadlineSender {
            tx,
            runtime,
            deadline,
            started: false,
            late: false,
        }
    }

    /// Whether the piece was handed over; `false`: the response is gone, or the deadline
    /// passed (`late`), and nothing more should be sent.
    fn send(&mut self, piece: Piece) -> bool {
        if self.late {
            return false;
        }
        self.started = true;
        // Room in the channel (the usual case): no timer to set, no wake-up of the runtime's
        // driver for one.
        let piece = match self.tx.try_send(Ok(piece)) {
            Ok(()) => return true,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
            Err(tokio::sync::mpsc::error::TrySendError::Full(piece)) => piece,
        };
        let wait = tokio::time::timeout_at(self.deadline, self.tx.send(piece));
        let sent = self.runtime.block_on(wait);
        self.late = sent.is_err();
        matches!(sent, Ok(Ok(())))
    }
}

/// The body of an answer written page by page ([`streamed`]).
pub struct Streamed {
    rx: tokio::sync::mpsc::Receiver<Result<Piece, ScimError>>,
    /// the producer said the body is complete
    done: bool,
    /// chunks read ahead, sent first
    ready: std::collections::VecDeque<web::Bytes>,
    /// the length of the whole body, when it was all read ahead
    whole: Option<u64>,
}

impl Streamed {
    fn new(rx: tokio::sync::mpsc::Receiver<Result<Piece, ScimError>>) -> Self {
        Streamed {
            rx,
            done: false,
            ready: std::collections::VecDeque::new(),
            whole: None,
        }
    }

    /// Reads ahead until the body is complete or two chunks are in, so that the head leaves
    /// with the first bytes of the body, and a small answer (a group of a few members) leaves
    /// as one response with a length rather than a chunked one.
    async fn read_ahead(&mut self) {
        while self.ready.len() < 2 {
            match self.rx.recv().await {
                Some(Ok(Piece::Bytes(b))) if b.is_empty() => {}
                Some(Ok(Piece::Bytes(b))) => self.ready.push_back(b.into()),
                Some(Ok(Piece::Last(b))) => {
                    if !b.is_empty() {
                        self.ready.push_back(b.into());
                    }
                    self.done = true;
                    self.whole = Some(self.ready.iter().map(|b| b.len() as u64).sum());
                    return;
                }
                Some(Ok(Piece::Head(_) | Piece::Changed)) => {}
                Some(Err(_)) | None => {
                    // Cut short: the stream reports it when it gets there.
                    return;
                }
            }
        }
    }
}

impl actix_web::body::MessageBody for Streamed {
    type Error = std::io::Error;

    fn size(&self) -> actix_web::body::BodySize {
        match self.whole {
            Some(n) => actix_web::body::BodySize::Sized(n),
            None => actix_web::body::BodySize::Stream,
        }
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        use std::task::Poll;
        if let Some(b) = self.ready.pop_front() {
            return Poll::Ready(Some(Ok(b)));
        }
        if self.whole.is_some() {
            return Poll::Ready(None);
        }
        loop {
            return match self.rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(Piece::Bytes(b)))) if b.is_empty() => continue,
                Poll::Ready(Some(Ok(Piece::Bytes(b)))) => Poll::Ready(Some(Ok(b.into()))),
                Poll::Ready(Some(Ok(Piece::Last(b)))) => {
                    self.done = true;
                    match b.is_empty() {
                        true => continue,
                        false => Poll::Ready(Some(Ok(b.into()))),
                    }
                }
                Poll::Ready(Some(Ok(Piece::Head(_) | Piece::Changed))) => continue,
                Poll::Ready(None) if self.done => Poll::Ready(None),
                // The read ended before the body was complete: the client must see a broken
                // answer, not a short one.
                Poll::Ready(Some(Err(_)) | None) => {
                    Poll::Ready(Some(Err(std::io::Error::other("the answer was cut short"))))
                }
            };
        }
    }
}

/// A 200 answer of a read written page by page, or 304 when `If-None-Match` names its version.
pub(super) fn respond_streamed(req: &HttpRequest, first: Piece, body: Streamed) -> HttpResponse {
    let version = match first {
        Piece::Head(version) => version,
        _ => None,
    };
    if version.is_some_and(|v| if_none_match_hits(req.headers(), v)) {
        // Dropping the body ends the read.
        return with_etag(HttpResponse::NotModified().finish(), version);
    }
    streamed_ok(version, body)
}

pub(super) fn streamed_ok(version: Option<i64>, body: Streamed) -> HttpResponse {
    let resp = HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, crate::error::SCIM_JSON))
        .body(body);
    with_etag(resp, version)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{DeadlineSender, Piece};

    /// Sends pieces until one is refused, on a blocking thread; how many were taken and
    /// whether the refusal was the deadline's.
    async fn send_until_refused(sender: DeadlineSender) -> (usize, bool) {
        let run = actix_web::rt::task::spawn_blocking(move || {
            let mut sender = sender;
            let mut taken = 0;
            while taken < 100 && sender.send(Piece::Bytes(vec![b' '; 8])) {
                taken += 1;
            }
            (taken, sender.late)
        });
        // A sender that never gave up would fail here, not hang the suite.
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the sender gave up")
            .expect("the sending thread")
    }

    #[actix_web::test]
    async fn a_response_nobody_reads_is_given_up_at_the_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_millis(200);
        let sender = DeadlineSender::new(tx, tokio::runtime::Handle::current(), deadline);
        // The channel holds two pieces; the third waits for the reader until the deadline.
        assert_eq!(send_until_refused(sender).await, (2, true));
        assert!(tokio::time::Instant::now() >= deadline);
        drop(rx);
    }

    #[actix_web::test]
    async fn a_response_that_went_away_is_given_up_at_once_and_not_late() {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        drop(rx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let sender = DeadlineSender::new(tx, tokio::runtime::Handle::current(), deadline);
        assert_eq!(send_until_refused(sender).await, (0, false));
    }
}
