//! The webhook target: POSTs the [`Notice`] as JSON.

use std::time::Duration;

use reqwest::Url;

use super::events::AttemptFinished;
use super::http::{self, DEFAULT_TIMEOUT};
use super::{Notice, Notifier};
use crate::{Error, Result};

/// The header naming a notice's identity (IETF draft `Idempotency-Key`).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// POSTs each [`Notice`] as a JSON body to a URL, with an `Idempotency-Key` header
/// ([`Notice::idempotency_key`]: the same for every redelivery of one notice, so a
/// receiver can drop repeats). 2xx is delivered; 429, 408, 5xx, timeouts and connection
/// errors are transient; any other status is definite.
///
/// Webhook URLs often carry a token in their path, so `Debug`, `describe` and error
/// messages show only `scheme://host/…`.
#[derive(Clone)]
pub struct WebhookNotifier {
    /// The policy name (metric label, error `policy`).
    policy: String,
    url: Url,
    /// Whole-request timeout (connect, send, response).
    timeout: Duration,
    client: reqwest::Client,
}

impl WebhookNotifier {
    /// A webhook to `url` (http or https), policy name `webhook`, 10 s timeout.
    pub fn new(url: &str) -> Result<Self> {
        let policy = "webhook".to_owned();
        Ok(WebhookNotifier {
            url: http::parse_url(&policy, url)?,
            client: http::client(&policy)?,
            timeout: DEFAULT_TIMEOUT,
            policy,
        })
    }

    /// A webhook whose URL is read from the environment variable `var_name` (the URL
    /// is a secret when it embeds a token).
    pub fn from_env(var_name: &str) -> Result<Self> {
        let url = std::env::var(var_name).map_err(|e| {
            Error::Config(format!(
                "webhook URL: environment variable {var_name} {}",
                env_problem(&e)
            ))
        })?;
        Self::new(url.trim())
    }

    /// Names the policy (metric label, error `policy`).
    pub fn with_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = policy.into();
        self
    }

    /// Sets the whole-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn post(&self, notice: &Notice) -> Result<()> {
        let response = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(IDEMPOTENCY_KEY, notice.idempotency_key())
            .json(notice)
            .send()
            .await
            .map_err(|e| http::send_error(&self.policy, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // A refusal's body often echoes the path, where webhook tokens live.
        let body = http::body_snippet(response, |b| http::scrub(b, &self.url)).await;
        Err(http::refusal(
            &self.policy,
            status,
            format!("webhook answered {status}: {body}"),
        ))
    }
}

/// Why an environment variable could not be used, as the end of a sentence.
pub(crate) fn env_problem(e: &std::env::VarError) -> &'static str {
    match e {
        std::env::VarError::NotPresent => "is not set",
        std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
    }
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("policy", &self.policy)
            .field("url", &http::redacted_url(&self.url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Notifier for WebhookNotifier {
    async fn send(&self, notice: &Notice) -> Result<()> {
        let result = self.post(notice).await;
        AttemptFinished {
            policy: &self.policy,
            notice,
            result: &result,
        }
        .emit();
        result
    }

    fn describe(&self) -> String {
        format!("webhook {}", http::redacted_url(&self.url))
    }

    fn policy(&self) -> &str {
        &self.policy
    }
}
