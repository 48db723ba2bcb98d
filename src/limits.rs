//! What one request, and one client, may hold open (docs/behaviour.md, "Slow
//! clients"). The headers of a request must arrive within 5 s (actix-web's own
//! limit); after them:
//! - its body must arrive whole within `TOKENGATE_BODY_TIMEOUT_SECS` (30 s) of the
//!   headers, with no pause longer than `BODY_PAUSE`: a body trickled in a byte at a
//!   time otherwise holds its connection, and a task, for as long as the sender
//!   likes. What did not arrive in time is an error the handler answers with 408,
//!   closing the connection;
//! - one client (its address, behind trusted proxies the one they name) may have at
//!   most `TOKENGATE_CLIENT_REQUESTS` (32) request bodies arriving at once on every
//!   route but `/v1` (the pages that face the internet); past that, 429 at once. A
//!   body that has arrived gives its slot back, so people sending forms at the same
//!   moment, even from one address, are not held up. `/v1` is not counted: its one
//!   client, LibreChat, speaks for all its users, and it holds a client key;
//! - a connection whose request body was not read whole (refused before it was
//!   needed, or late) is closed once the answer is sent. actix-web would otherwise
//!   keep reading a chunked body to its end before the next request, for as long
//!   as the client takes to send it: forever, for a client that never does.

use crate::startup::AppState;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use bytes::Bytes;
use futures_util::Stream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The longest pause inside a body: its pieces follow each other closely, even on a
/// phone's connection.
pub const BODY_PAUSE: Duration = Duration::from_secs(10);

/// The middleware: times every body, and counts each client's requests on the pages.
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let config = &state.config;
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    // Kept until the answer has been sent (`Holding`).
    let payload = Rc::new(RefCell::new(req.take_payload()));
    // A body on a page facing the internet takes one of its client's slots until it
    // has arrived. The path as the router reads it, escapes decoded: `/%6De` is `/me`.
    let path = req.match_info().as_str();
    let metered = path
        .strip_prefix("/v1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    let slot = if metered {
        None
    } else {
        let client = crate::net::client_address(req.request(), &config.trusted_proxies);
        let Some(slot) = state.client_slots.take(&client) else {
            tracing::info!(client = %client, "too many request bodies open from one client; refused");
            let page = HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, "10"))
                .content_type("text/plain; charset=utf-8")
                .body("Muitos pedidos abertos deste endereço; tente de novo em instantes. / Too many requests open from this address; try again in a moment.");
            return Ok(holding(req.into_response(page), payload));
        };
        Some(slot)
    };
    let timed = TimedBody::new(payload.clone(), config.body_timeout, BODY_PAUSE, slot);
    req.set_payload(Payload::from(
        Box::pin(timed) as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>
    ));
    let res = next.call(req).await?;
    Ok(holding(res, payload))
}

/// `res`, keeping the request's body until it has been sent (`Holding`).
fn holding<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
    request_body: Rc<RefCell<Payload>>,
) -> ServiceResponse<BoxBody> {
    res.map_body(|_, body| {
        BoxBody::new(Holding {
            body: body.boxed(),
            _request_body: request_body,
        })
    })
}

/// A response body that keeps its request's body until it has been sent. actix-web
/// closes the connection after answering a request whose body is still there and
/// unfinished; once the handler has let go of that body, it drains a chunked one
/// instead, waiting as long as the client likes.
struct Holding {
    body: BoxBody,
    _request_body: Rc<RefCell<Payload>>,
}

impl MessageBody for Holding {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// Whether a body error is one of `TimedBody`'s.
pub fn timed_out(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// A request body that must arrive by a deadline, and without long pauses. It holds
/// its client's slot (on the public pages) until it has arrived, or failed.
struct TimedBody {
    inner: Rc<RefCell<Payload>>,
    deadline: Pin<Box<Sleep>>,
    pause: Duration,
    quiet: Pin<Box<Sleep>>,
    over: bool,
    slot: Option<Slot>,
}

impl TimedBody {
    fn new(
        inner: Rc<RefCell<Payload>>,
        within: Duration,
        pause: Duration,
        slot: Option<Slot>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(now + within)),
            pause,
            quiet: Box::pin(tokio::time::sleep_until(now + pause)),
            over: false,
            slot,
        }
    }
}

impl Stream for TimedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.over {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *self.inner.borrow_mut()).poll_next(cx);
        match polled {
            Poll::Ready(Some(Ok(bytes))) => {
                let next = Instant::now() + self.pause;
                self.quiet.as_mut().reset(next);
                return Poll::Ready(Some(Ok(bytes)));
            }
            Poll::Ready(other) => {
                // The whole body is in (or it broke): the slot goes back.
                self.slot = None;
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        let late =
            self.deadline.as_mut().poll(cx).is_ready() || self.quiet.as_mut().poll(cx).is_ready();
        if !late {
            return Poll::Pending;
        }
        self.over = true;
        self.slot = None;
        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the request body did not arrive in time",
        )))))
    }
}

/// How many requests each client has open on the public pages.
pub struct ClientSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
    max: usize,
}

impl ClientSlots {
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    /// How many requests `client` has open.
    pub fn open(&self, client: &str) -> usize {
        self.lock().get(client).copied().unwrap_or(0)
    }

    /// One more open request of `client`, or `None` when it has `max` already.
    fn take(&self, client: &str) -> Option<Slot> {
        let mut open = self.lock();
        let n = open.entry(client.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: self.open.clone(),
            client: client.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A request open; given back when dropped.
struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}
