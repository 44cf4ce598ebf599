//! The runner's configuration: the `[prs]` table (with `[prs.checks.NAME]` overrides) and
//! the `[escalation.NAME]` policies. The file that assembles every crate's tables is the
//! `overseer` crate's; this crate owns only these.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// What [`crate::service::run`] needs from the configuration file.
#[derive(Clone, Debug, Default)]
pub struct RunnerConfig {
    pub prs: PrsSettings,
    pub escalation: BTreeMap<String, EscalationConfig>,
    /// Which sources feed each model (from `[[models]]` and `[[sources]]`): a check's
    /// freshness waits on these.
    pub model_sources: BTreeMap<String, Vec<String>>,
    /// The configured models and their references, which start-up validation checks every
    /// check's view against.
    pub models: crate::validate::Models,
}

/// Default `[prs] grace_ms`: 2 s. Safe for the shipped checks, whose ledger entries are
/// committed a few milliseconds after their transfer (a grace of 0 evaluates a transfer
/// at its own commit time, before its entries exist, and every check fails); set it to the
/// longest time your systems take to reflect one another's changes. Source lag is not the
/// grace's business: freshness-aware checks wait for the watermarks.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// `[prs]`: the processor runner.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrsSettings {
    /// Consumer group on the events topic (Kafka bus), or cursor name over the catalog
    /// (embedded).
    pub group: String,
    /// Check runs executing at once.
    pub concurrency: usize,
    /// Grace of checks that set none, ms: how long other systems may take to reflect a
    /// trigger (a check evaluates as of the trigger's commit time plus this). Default
    /// [`DEFAULT_GRACE`].
    pub grace_ms: u64,
    /// Longest freshness-aware wait, ms, for checks that set none.
    pub max_delay_ms: u64,
    /// How often source watermarks are read, ms.
    pub watermark_poll_ms: u64,
    /// Policy of checks that name none.
    pub default_escalation: String,
    /// Where to serve Prometheus metrics (`host:port`); none by default.
    pub metrics_addr: Option<String>,
    /// First start without a saved position: check from the beginning of history (true)
    /// or only what arrives from now on (false).
    pub from_beginning: bool,
    /// How long a stopping process goes on delivering owed notices, ms (default 10 000):
    /// what is still owed then is sent by the next start.
    pub shutdown_timeout_ms: u64,
    /// Per-check settings, by check name.
    pub checks: BTreeMap<String, CheckSettings>,
}

impl Default for PrsSettings {
    fn default() -> Self {
        PrsSettings {
            group: "overseer-prs".into(),
            concurrency: 64,
            grace_ms: DEFAULT_GRACE.as_millis() as u64,
            max_delay_ms: 60_000,
            watermark_poll_ms: 50,
            default_escalation: "log".into(),
            metrics_addr: None,
            from_beginning: false,
            shutdown_timeout_ms: crate::incident::SHUTDOWN_TIMEOUT.as_millis() as u64,
            checks: BTreeMap::new(),
        }
    }
}

/// `[prs.checks.NAME]`: overrides of one registered check's defaults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckSettings {
    /// Run live (false: a shadow check, for replay only).
    pub enabled: Option<bool>,
    /// Kill switch: verdicts are recorded, nothing is escalated.
    #[serde(default)]
    pub muted: bool,
    pub strategy: Option<StrategyName>,
    /// `fixed-delay`: the delay, ms.
    pub delay_ms: Option<u64>,
    /// `freshness-aware`: the bound on the wait, ms.
    pub max_delay_ms: Option<u64>,
    pub grace_ms: Option<u64>,
    /// Escalation policy name.
    pub escalation: Option<String>,
}

/// Execution strategies by name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    Immediate,
    FixedDelay,
    FreshnessAware,
}

/// `[escalation.NAME]`: one escalation policy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    pub kind: EscalationKind,
    /// `pagerduty`: the environment variable holding the routing key (never the key).
    pub routing_key_env: Option<String>,
    /// `pagerduty`: the Events API v2 URL (default PagerDuty's); `webhook`: the URL.
    pub url: Option<String>,
    /// `webhook`: an environment variable holding the URL (URLs often embed a token).
    pub url_env: Option<String>,
    /// `critical`, `error`, `warning` or `info` (default `error`).
    pub severity: Option<String>,
    /// The most requests sent in any 60 s window, per routing key (at least 2; PagerDuty
    /// allows about 120, the default for `pagerduty`). A sixth of it may go at once after
    /// a quiet spell, the rest is spread over the minute.
    pub rate_per_minute: Option<u32>,
    /// Detail fields blanked out of what is sent (e.g. `account_id`).
    #[serde(default)]
    pub redact: Vec<String>,
}

/// Kinds of escalation policies.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EscalationKind {
    Log,
    Pagerduty,
    Webhook,
}

/// Cross-field rules of `[prs]` and `[escalation.NAME]`, each error naming its key.
pub fn validate(prs: &PrsSettings, escalation: &BTreeMap<String, EscalationConfig>) -> Result<()> {
    let bad = |m: String| Err(Error::Config(m));
    if prs.concurrency == 0 || prs.watermark_poll_ms == 0 || prs.group.is_empty() {
        return bad(
            "prs.concurrency and prs.watermark_poll_ms must be > 0, prs.group non-empty".into(),
        );
    }
    let policy_exists = |p: &str| p == "log" || escalation.contains_key(p);
    if !policy_exists(&prs.default_escalation) {
        return bad(format!(
            "prs.default_escalation {:?} is not an [escalation.NAME] (or \"log\")",
            prs.default_escalation
        ));
    }
    for (name, c) in &prs.checks {
        if let Some(p) = &c.escalation
            && !policy_exists(p)
        {
            return bad(format!(
                "prs.checks.{name}.escalation {p:?} is not an [escalation.NAME] (or \"log\")"
            ));
        }
        if c.delay_ms.is_some() != (c.strategy == Some(StrategyName::FixedDelay)) {
            return bad(format!(
                "prs.checks.{name}: delay_ms goes with strategy = \"fixed-delay\", and it needs it"
            ));
        }
    }
    for (name, e) in escalation {
        let at = format!("escalation.{name}");
        match e.kind {
            EscalationKind::Pagerduty if e.routing_key_env.is_none() => {
                return bad(format!("{at}: kind \"pagerduty\" needs routing_key_env"));
            }
            EscalationKind::Webhook if e.url.is_some() == e.url_env.is_some() => {
                return bad(format!(
                    "{at}: kind \"webhook\" needs exactly one of url, url_env"
                ));
            }
            _ => {}
        }
        if let Some(n) = e.rate_per_minute
            && n < 2
        {
            return bad(format!(
                "{at}.rate_per_minute {n}: at least 2 (one sent at once, one a minute)"
            ));
        }
        if let Some(sev) = &e.severity
            && !matches!(sev.as_str(), "critical" | "error" | "warning" | "info")
        {
            return bad(format!(
                "{at}.severity {sev:?}: expected critical, error, warning or info"
            ));
        }
    }
    Ok(())
}
