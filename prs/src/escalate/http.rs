//! What the HTTP transports share: the client, the status classification, and keeping
//! secrets (URL paths, tokens) out of messages.

use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::error;
use crate::{Error, Result};

/// The whole-request timeout of the HTTP transports unless configured otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time to establish a connection; part of the request timeout too.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of a refusal's body goes into an error message.
const BODY_SNIPPET_MAX: usize = 1024;

/// A client for one transport. Redirects are not followed: a POST redirected becomes a
/// GET, so a redirect means a wrong URL (definite).
pub(crate) fn client(policy: &str) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("overseer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            Error::Config(format!(
                "escalation {policy}: cannot build the HTTP client: {}",
                e.without_url()
            ))
        })
}

/// Parses an escalation URL (http or https only).
pub(crate) fn parse_url(policy: &str, url: &str) -> Result<Url> {
    let parsed = Url::parse(url)
        .map_err(|e| Error::Config(format!("escalation {policy}: invalid URL: {e}")))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host_str().is_some() => Ok(parsed),
        _ => Err(Error::Config(format!(
            "escalation {policy}: URL must be http(s)://host/..., got {}",
            redacted_url(&parsed)
        ))),
    }
}

/// `scheme://host[:port]/…`: a URL with its path and query (where webhook tokens live) cut.
pub(crate) fn redacted_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

/// Whether a refusal with this status may succeed later: 429 (rate limited), 408
/// (request timeout) and 5xx.
pub(crate) fn status_is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// A request that got no response: timeouts, connection and protocol errors are all
/// transient (PagerDuty: "Networking Error: retry"); only a request that could not be
/// built is definite. The URL is stripped from the message.
pub(crate) fn send_error(policy: &str, err: reqwest::Error) -> Error {
    let transient = !err.is_builder();
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let err = err.without_url();
    error(policy, format!("{what}: {}", error_chain(&err)), transient)
}

/// An error and its sources, `: `-separated (reqwest's Display alone hides the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Up to [`BODY_SNIPPET_MAX`] bytes of the response body, lossily decoded.
pub(crate) async fn body_snippet(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < BODY_SNIPPET_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(BODY_SNIPPET_MAX);
    String::from_utf8_lossy(&body).trim().to_owned()
}
