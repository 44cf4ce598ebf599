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

/// `text` (say, a refusal's body that echoes the request) with every part of `url` that
/// can carry a credential replaced by [`super::REDACTED`]: the whole URL, its path, each
/// path segment and query value of four characters or more (raw and percent-decoded), and
/// its user and password.
pub(crate) fn scrub(text: &str, url: &Url) -> String {
    let mut secrets: Vec<String> = vec![url.as_str().to_owned(), url.path().to_owned()];
    if let Some(q) = url.query() {
        secrets.push(q.to_owned());
    }
    secrets.extend(url.path_segments().into_iter().flatten().map(str::to_owned));
    secrets.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
    secrets.push(url.username().to_owned());
    secrets.extend(url.password().map(str::to_owned));
    let decoded: Vec<String> = secrets
        .iter()
        .filter_map(|s| percent_decode(s))
        .filter(|d| !secrets.contains(d))
        .collect();
    secrets.extend(decoded);
    // Longest first: a segment inside the path is then replaced with the path.
    secrets.retain(|s| s.chars().count() >= 4);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in &secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), super::REDACTED);
        }
    }
    out
}

/// `s` with `%XX` escapes decoded, if it has any and they decode to UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a refusal with this status may succeed later: 429 (rate limited), 408
/// (request timeout) and 5xx.
pub(crate) fn status_is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The error for a refusal with `status`: [`Error::Throttled`] for a 429 (the target
/// asks to be sent less: retried after longer waits), else an escalation error,
/// transient per [`status_is_transient`].
pub(crate) fn refusal(policy: &str, status: StatusCode, message: String) -> Error {
    if status == StatusCode::TOO_MANY_REQUESTS {
        Error::Throttled {
            policy: policy.to_owned(),
            message,
        }
    } else {
        error(policy, message, status_is_transient(status))
    }
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

/// Up to [`BODY_READ_MAX`] bytes of a refusal's body are read and scrubbed whole before
/// it is cut to [`BODY_SNIPPET_MAX`]: a token across the cut would otherwise leave its
/// first half in the message.
const BODY_READ_MAX: usize = 64 << 10;

/// The response body, lossily decoded and passed through `clean` (which removes the
/// secrets it may echo), then cut to [`BODY_SNIPPET_MAX`] bytes at a character boundary.
pub(crate) async fn body_snippet(
    mut response: reqwest::Response,
    clean: impl Fn(&str) -> String,
) -> String {
    let mut body = Vec::new();
    while body.len() < BODY_READ_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(BODY_READ_MAX);
    let mut text = clean(String::from_utf8_lossy(&body).trim());
    if text.len() > BODY_SNIPPET_MAX {
        let mut cut = BODY_SNIPPET_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token across the snippet's cut is scrubbed whole, not left half in the message.
    #[tokio::test]
    async fn a_body_is_scrubbed_before_it_is_cut() {
        let url = Url::parse("https://hooks.example.com/hooks/s3cr3t-token-abcdef").unwrap();
        let page = format!(
            "{} no route for /hooks/s3cr3t-token-abcdef é",
            "x".repeat(BODY_SNIPPET_MAX - 20)
        );
        let response = reqwest::Response::from(
            axum::http::Response::builder()
                .status(404)
                .body(page)
                .unwrap(),
        );
        let snippet = body_snippet(response, |b| scrub(b, &url)).await;
        assert!(!snippet.contains("s3cr3t"), "{snippet}");
        assert!(snippet.len() <= BODY_SNIPPET_MAX + '…'.len_utf8());
        assert!(snippet.ends_with('…'));
    }

    #[test]
    fn scrub_removes_every_part_of_the_url_that_can_carry_a_token() {
        let url = Url::parse(
            "https://bob:hunter22@hooks.example.com/services/T0AB/Xy%2Fsecret99?token=abcd1234&v=1",
        )
        .unwrap();
        let body = "Cannot POST /services/T0AB/Xy%2Fsecret99 (segment Xy/secret99) token abcd1234 \
                    for bob with hunter22 at https://hooks.example.com/services/T0AB/Xy%2Fsecret99?token=abcd1234&v=1";
        let out = scrub(body, &url);
        for secret in ["T0AB", "secret99", "abcd1234", "hunter22", "Xy%2F"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("Cannot POST"), "{out}");
        // Short fragments are left: they would blank ordinary words.
        assert!(out.contains("bob"), "{out}");
    }
}
