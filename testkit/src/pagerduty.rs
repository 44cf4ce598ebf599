//! A local stand-in for PagerDuty's Events API v2, for tests (PagerDuty itself cannot be
//! reached from here, and tests must not page anyone).
//!
//! `POST /v2/enqueue` follows the public contract:
//! - the body must be a JSON object, else 400 `{status: "Unrecognized object", ..}`;
//! - `routing_key` is a 32-character string; `event_action` is `trigger`, `acknowledge`
//!   or `resolve`; `dedup_key` is at most 255 characters and required unless triggering;
//!   a trigger has `payload` with `summary` (1..=1024 characters), `source` and `severity`
//!   (`critical|error|warning|info`), and optional string `timestamp` (ISO 8601),
//!   `component`, `group`, `class`, object `custom_details`; the body is at most 512 KB.
//!   Any violation is 400 `{status: "invalid event", message: "Event object is invalid",
//!   errors: [..]}` listing every problem;
//! - otherwise 202 `{status: "success", message: "Event processed", dedup_key}`, with a
//!   dedup_key generated for a trigger that had none.
//!
//! Incidents are kept like PagerDuty keeps alerts, per (routing_key, dedup_key): a
//! trigger with an incident open adds nothing but a log entry (counted as a duplicate);
//! acknowledge marks it; resolve closes it; acknowledge or resolve with nothing open is
//! accepted and dropped. Every request received is recorded, faults included.
//!
//! Faults are scriptable: [`FakePagerDuty::fail_next_with_429`] and
//! [`FakePagerDuty::fail_next_with_500`] answer the next N requests with that status
//! before looking at them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
/// The status codes the fake answers with (re-exported for its callers).
pub use axum::http::StatusCode;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A valid (32-character) routing key for tests.
pub const TEST_ROUTING_KEY: &str = "0123456789abcdef0123456789abcdef";

/// PagerDuty's limit on an event's size.
const MAX_EVENT_BYTES: usize = 512 * 1024;

/// One HTTP request the server received.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    /// The body as text (lossily decoded).
    pub body: String,
    /// The body parsed as JSON, if it was JSON.
    pub json: Option<Value>,
    /// The status the server answered.
    pub status: u16,
}

/// Whether an open incident was acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentStatus {
    Triggered,
    Acknowledged,
}

/// An incident (PagerDuty: an alert) opened by a trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub routing_key: String,
    pub dedup_key: String,
    pub status: IncidentStatus,
    /// The opening trigger's `payload`.
    pub payload: Value,
    /// Triggers received while it was open, the opening one included.
    pub triggers: u64,
}

impl Incident {
    /// The opening trigger's `payload.summary`.
    pub fn summary(&self) -> &str {
        self.payload["summary"].as_str().unwrap_or_default()
    }

    /// The opening trigger's `payload.severity`.
    pub fn severity(&self) -> &str {
        self.payload["severity"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct Book {
    requests: Vec<ReceivedRequest>,
    /// Open incidents by (routing_key, dedup_key).
    open: BTreeMap<(String, String), Incident>,
    resolved: Vec<Incident>,
    opened_total: u64,
    triggers_deduplicated: u64,
    resolves: u64,
    resolves_dropped: u64,
    acknowledges: u64,
    /// Statuses to answer the next requests with, before any validation.
    faults: VecDeque<StatusCode>,
    /// While set, every request is answered with it, unread (an outage).
    outage: Option<StatusCode>,
    /// How long every answer is held back after the request is applied.
    delay: std::time::Duration,
    /// Called with every request once it is applied, before it is answered.
    hook: Option<RequestHook>,
}

/// See [`FakePagerDuty::on_request`].
pub type RequestHook = Arc<dyn Fn(&ReceivedRequest) + Send + Sync>;

type Shared = Arc<Mutex<Book>>;

/// A local PagerDuty Events API v2 server on 127.0.0.1 and a free port. Stops when
/// dropped.
pub struct FakePagerDuty {
    addr: SocketAddr,
    book: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl FakePagerDuty {
    /// Binds 127.0.0.1:0 and serves on the current Tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let book = Shared::default();
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(4 * MAX_EVENT_BYTES))
            .with_state(book.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake PagerDuty server stopped");
            }
        });
        Ok(FakePagerDuty { addr, book, server })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The events endpoint: `http://127.0.0.1:<port>/v2/enqueue`.
    pub fn url(&self) -> String {
        format!("http://{}/v2/enqueue", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.book().requests.clone()
    }

    /// The incidents open now, by (routing_key, dedup_key).
    pub fn open_incidents(&self) -> Vec<Incident> {
        self.book().open.values().cloned().collect()
    }

    /// The incidents resolved so far, in order.
    pub fn resolved_incidents(&self) -> Vec<Incident> {
        self.book().resolved.clone()
    }

    /// Incidents ever opened.
    pub fn incidents_opened_total(&self) -> u64 {
        self.book().opened_total
    }

    /// Triggers that found their incident open and so opened nothing.
    pub fn triggers_deduplicated(&self) -> u64 {
        self.book().triggers_deduplicated
    }

    /// Resolves that closed an open incident.
    pub fn resolves(&self) -> u64 {
        self.book().resolves
    }

    /// Resolves accepted with no incident open (PagerDuty drops them).
    pub fn resolves_dropped(&self) -> u64 {
        self.book().resolves_dropped
    }

    /// Acknowledges that marked an open incident.
    pub fn acknowledges(&self) -> u64 {
        self.book().acknowledges
    }

    /// The next `n` requests are answered 429 (rate limited), unread.
    pub fn fail_next_with_429(&self, n: usize) {
        self.fail_next_with(StatusCode::TOO_MANY_REQUESTS, n);
    }

    /// The next `n` requests are answered 500, unread.
    pub fn fail_next_with_500(&self, n: usize) {
        self.fail_next_with(StatusCode::INTERNAL_SERVER_ERROR, n);
    }

    /// The next `n` requests are answered `status`, unread.
    pub fn fail_next_with(&self, status: StatusCode, n: usize) {
        self.book().faults.extend(std::iter::repeat_n(status, n));
    }

    /// From now on every request is answered `status`, unread, until called with `None`.
    pub fn fail_all_with(&self, status: Option<StatusCode>) {
        self.book().outage = status;
    }

    /// Every request is applied as it arrives but answered only after `delay` (zero: at
    /// once), as a PagerDuty slower than its client's timeout is.
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.book().delay = delay;
    }

    /// Calls `hook` with every request once it is applied and recorded, before it is
    /// answered; the answer waits for it (e.g. to kill the sender after PagerDuty applied
    /// its request and before it hears so).
    pub fn on_request(&self, hook: impl Fn(&ReceivedRequest) + Send + Sync + 'static) {
        self.book().hook = Some(Arc::new(hook));
    }
}

impl Drop for FakePagerDuty {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for FakePagerDuty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePagerDuty")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Every request: apply and record it, call the hook, then answer (after the delay).
async fn handle(State(book): State<Shared>, method: Method, uri: Uri, body: Bytes) -> Response {
    let (status, answer, request, hook, delay) = apply(&book, &method, &uri, &body);
    if let Some(hook) = hook {
        hook(&request);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    (status, axum::Json(answer)).into_response()
}

type Applied = (
    StatusCode,
    Value,
    ReceivedRequest,
    Option<RequestHook>,
    std::time::Duration,
);

/// Answers and records one request, under the book's lock.
fn apply(book: &Shared, method: &Method, uri: &Uri, body: &Bytes) -> Applied {
    let mut b = book.lock().unwrap_or_else(PoisonError::into_inner);
    let (status, answer) = if let Some(fault) = b.outage.or_else(|| b.faults.pop_front()) {
        (fault, fault_body(fault))
    } else if method == Method::POST && uri.path() == "/v2/enqueue" {
        enqueue(&mut b, body)
    } else {
        (
            StatusCode::NOT_FOUND,
            json!({"status": "not found", "message": "Not Found"}),
        )
    };
    let request = ReceivedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        body: String::from_utf8_lossy(body).into_owned(),
        json: serde_json::from_slice(body).ok(),
        status: status.as_u16(),
    };
    b.requests.push(request.clone());
    (status, answer, request, b.hook.clone(), b.delay)
}

fn fault_body(status: StatusCode) -> Value {
    if status == StatusCode::TOO_MANY_REQUESTS {
        json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly. Please retry later."})
    } else {
        json!({"status": "error", "message": "Internal server error"})
    }
}

/// Validates one event and applies it to the incident table.
fn enqueue(b: &mut Book, body: &[u8]) -> (StatusCode, Value) {
    let event = match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                json!({"status": "Unrecognized object", "message": "Event object format is unrecognized", "errors": ["JSON parse error"]}),
            );
        }
    };
    let errors = validate(&event, body.len());
    if !errors.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
        );
    }
    let routing_key = event["routing_key"].as_str().unwrap_or_default().to_owned();
    let action = event["event_action"].as_str().unwrap_or_default();
    let dedup_key = match event["dedup_key"].as_str() {
        Some(k) if !k.is_empty() => k.to_owned(),
        _ => format!("{:032x}", fastrand::u128(..)),
    };
    let key = (routing_key.clone(), dedup_key.clone());
    match action {
        "trigger" => match b.open.get_mut(&key) {
            Some(incident) => {
                incident.triggers += 1;
                b.triggers_deduplicated += 1;
            }
            None => {
                b.open.insert(
                    key,
                    Incident {
                        routing_key,
                        dedup_key: dedup_key.clone(),
                        status: IncidentStatus::Triggered,
                        payload: event["payload"].clone(),
                        triggers: 1,
                    },
                );
                b.opened_total += 1;
            }
        },
        "acknowledge" => {
            if let Some(incident) = b.open.get_mut(&key) {
                incident.status = IncidentStatus::Acknowledged;
                b.acknowledges += 1;
            }
        }
        _ => match b.open.remove(&key) {
            Some(incident) => {
                b.resolved.push(incident);
                b.resolves += 1;
            }
            None => b.resolves_dropped += 1,
        },
    }
    (
        StatusCode::ACCEPTED,
        json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
    )
}

/// Every way `event` breaks the contract.
fn validate(event: &Value, size: usize) -> Vec<String> {
    let mut errors = Vec::new();
    if size > MAX_EVENT_BYTES {
        errors.push(format!(
            "Event is too large ({size} bytes; the limit is 512 KB)"
        ));
    }
    match &event["routing_key"] {
        Value::String(k) if k.trim().is_empty() => {
            errors.push("'routing_key' is missing or blank".to_owned())
        }
        Value::String(k) if k.chars().count() != 32 => {
            errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".to_owned())
        }
        Value::String(_) => {}
        Value::Null => errors.push("'routing_key' is missing or blank".to_owned()),
        _ => errors.push("'routing_key' must be a string".to_owned()),
    }
    let action = event["event_action"].as_str();
    if !matches!(action, Some("trigger" | "acknowledge" | "resolve")) {
        errors.push(
            "'event_action' is missing or invalid (expected trigger, acknowledge or resolve)"
                .to_owned(),
        );
    }
    match &event["dedup_key"] {
        Value::Null => {
            if matches!(action, Some("acknowledge" | "resolve")) {
                errors
                    .push("'dedup_key' is required for acknowledge and resolve events".to_owned());
            }
        }
        Value::String(k) => {
            if k.chars().count() > 255 {
                errors.push("'dedup_key' is too long (maximum 255 characters)".to_owned());
            }
            if k.is_empty() && matches!(action, Some("acknowledge" | "resolve")) {
                errors
                    .push("'dedup_key' is required for acknowledge and resolve events".to_owned());
            }
        }
        _ => errors.push("'dedup_key' must be a string".to_owned()),
    }
    if action == Some("trigger") {
        validate_payload(&event["payload"], &mut errors);
    }
    errors
}

fn validate_payload(payload: &Value, errors: &mut Vec<String>) {
    let Value::Object(p) = payload else {
        errors.push("'payload' is missing or not an object".to_owned());
        return;
    };
    match p.get("summary") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push("'payload.summary' is missing or blank".to_owned())
        }
        Some(Value::String(s)) if s.chars().count() > 1024 => {
            errors.push("'payload.summary' is too long (maximum 1024 characters)".to_owned())
        }
        Some(Value::String(_)) => {}
        _ => errors.push("'payload.summary' is missing or blank".to_owned()),
    }
    match p.get("source") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        _ => errors.push("'payload.source' is missing or blank".to_owned()),
    }
    match p.get("severity").and_then(Value::as_str) {
        Some("critical" | "error" | "warning" | "info") => {}
        _ => errors.push(
            "'payload.severity' is missing or invalid (expected critical, error, warning or info)"
                .to_owned(),
        ),
    }
    match p.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if parses_as_iso8601(t) => {}
        Some(_) => errors.push("'payload.timestamp' is not an ISO 8601 timestamp".to_owned()),
    }
    for field in ["component", "group", "class"] {
        if !matches!(p.get(field), None | Some(Value::Null | Value::String(_))) {
            errors.push(format!("'payload.{field}' must be a string"));
        }
    }
    if !matches!(
        p.get("custom_details"),
        None | Some(Value::Null | Value::Object(_))
    ) {
        errors.push("'payload.custom_details' must be an object".to_owned());
    }
}

/// RFC 3339, or the `+0000` offset form PagerDuty's own examples use.
fn parses_as_iso8601(t: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(t).is_ok()
        || chrono::DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%z").is_ok()
}
