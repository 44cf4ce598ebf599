//! The runner as a service: registry + configuration → runner, escalation and outbox.
//!
//! [`configure`] applies `[prs.checks.NAME]` overrides to the registered checks (a name
//! that is not registered is an error listing the registered ones); [`routes`] builds the
//! escalation policies of `[escalation.NAME]` (routing keys and webhook URLs from the
//! environment); [`run`] drives a runner over a subscription until shutdown, with the
//! outbox delivering what the incidents owe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{EscalationConfig, EscalationKind, PrsSettings, RunnerConfig, StrategyName};
use overseer_dal::Dal;
use overseer_dal::bus::Subscription;

use crate::check::{Registry, Strategy};
use crate::escalate::{
    LogNotifier, Notifier, PagerDutyNotifier, RateLimit, RateLimited, Retrying, Severity,
    WebhookNotifier,
};
use crate::incident::{Escalator, Routes};
use crate::runner::{Runner, RunnerOptions, RunnerReport, Sink};
use crate::{Error, Result};

/// Applies the configuration's per-check settings (and its default grace and max delay)
/// to the registered checks. A grace or strategy set in code is kept over `[prs]
/// grace_ms` and `max_delay_ms` (the defaults); a `[prs.checks.NAME]` setting overrides
/// the code. A `max_delay_ms` for a check that is not freshness-aware is refused (it
/// would be ignored).
pub fn configure(registry: &mut Registry, prs: &PrsSettings) -> Result<()> {
    let known: Vec<String> = registry.iter().map(|s| s.name.clone()).collect();
    for name in prs.checks.keys() {
        if !known.contains(name) {
            return Err(Error::Config(format!(
                "[prs.checks.{name}]: no check {name:?} is registered (registered: {})",
                known.join(", ")
            )));
        }
    }
    let default_max = Duration::from_millis(prs.max_delay_ms);
    for name in known {
        let spec = registry.get_mut(&name).expect("listed above");
        if !spec.grace_in_code() {
            spec.grace = Duration::from_millis(prs.grace_ms);
        }
        if let Strategy::FreshnessAware { .. } = spec.strategy
            && !spec.strategy_in_code()
        {
            spec.strategy = Strategy::FreshnessAware {
                max_delay: default_max,
            };
        }
        let Some(c) = prs.checks.get(&name) else {
            continue;
        };
        if let Some(e) = c.enabled {
            spec.enabled = e;
        }
        if let Some(g) = c.grace_ms {
            spec.grace = Duration::from_millis(g);
        }
        if let Some(p) = &c.escalation {
            spec.escalation = Some(p.clone());
        }
        match c.strategy {
            Some(StrategyName::Immediate) => spec.strategy = Strategy::Immediate,
            Some(StrategyName::FixedDelay) => {
                spec.strategy =
                    Strategy::FixedDelay(Duration::from_millis(c.delay_ms.unwrap_or_default()));
            }
            Some(StrategyName::FreshnessAware)
                if !matches!(spec.strategy, Strategy::FreshnessAware { .. }) =>
            {
                spec.strategy = Strategy::FreshnessAware {
                    max_delay: default_max,
                };
            }
            Some(StrategyName::FreshnessAware) | None => {}
        }
        match (spec.strategy, c.max_delay_ms) {
            (Strategy::FreshnessAware { .. }, Some(ms)) => {
                spec.strategy = Strategy::FreshnessAware {
                    max_delay: Duration::from_millis(ms),
                };
            }
            (other, Some(_)) => {
                return Err(Error::Config(format!(
                    "[prs.checks.{name}] max_delay_ms bounds a freshness-aware wait, but the \
                     check's strategy is {other:?}: set strategy = \"freshness-aware\" or drop it"
                )));
            }
            (_, None) => {}
        }
    }
    Ok(())
}

fn severity(s: Option<&str>) -> Severity {
    match s {
        Some("critical") => Severity::Critical,
        Some("warning") => Severity::Warning,
        Some("info") => Severity::Info,
        _ => Severity::Error,
    }
}

/// One configured policy as a notifier (with retries and, for PagerDuty, the per-key rate
/// limit). Must be called inside a tokio runtime (the rate limiter runs a task).
pub fn notifier(name: &str, cfg: &EscalationConfig) -> Result<Arc<dyn Notifier>> {
    let rate = |default: Option<RateLimit>| {
        cfg.rate_per_minute
            .map(RateLimit::at_most_per_minute)
            .or(default)
    };
    let n: Arc<dyn Notifier> = match cfg.kind {
        EscalationKind::Log => Arc::new(LogNotifier::new().with_policy(name)),
        EscalationKind::Pagerduty => {
            let var = cfg.routing_key_env.as_deref().unwrap_or_default();
            let pd = PagerDutyNotifier::from_env(var, cfg.url.as_deref())?.with_policy(name);
            match rate(Some(RateLimit::PAGERDUTY)) {
                Some(limit) => Arc::new(RateLimited::spawn(Retrying::new(pd), limit)?),
                None => Arc::new(Retrying::new(pd)),
            }
        }
        EscalationKind::Webhook => {
            let hook = match (&cfg.url, &cfg.url_env) {
                (Some(url), _) => WebhookNotifier::new(url)?,
                (None, Some(var)) => WebhookNotifier::from_env(var)?,
                (None, None) => {
                    return Err(Error::Config(format!(
                        "escalation.{name}: a webhook needs url or url_env"
                    )));
                }
            }
            .with_policy(name);
            match rate(None) {
                Some(limit) => Arc::new(RateLimited::spawn(Retrying::new(hook), limit)?),
                None => Arc::new(Retrying::new(hook)),
            }
        }
    };
    if cfg.redact.is_empty() {
        return Ok(n);
    }
    Ok(Arc::new(Redacting {
        inner: n,
        fields: cfg.redact.clone(),
    }))
}

/// Blanks the configured sensitive fields out of every notice's details before it leaves
/// (DESIGN invariant 7).
struct Redacting {
    inner: Arc<dyn Notifier>,
    fields: Vec<String>,
}

#[async_trait::async_trait]
impl Notifier for Redacting {
    async fn send(&self, notice: &crate::escalate::Notice) -> Result<()> {
        self.inner
            .send(&notice.clone().redacted(&self.fields))
            .await
    }
    fn describe(&self) -> String {
        format!(
            "{} (redacting {})",
            self.inner.describe(),
            self.fields.join(", ")
        )
    }
    fn policy(&self) -> &str {
        self.inner.policy()
    }
}

/// The escalation routes of the configuration: every `[escalation.NAME]` plus `log`.
pub fn routes(cfg: &RunnerConfig, registry: &Registry) -> Result<Routes> {
    let mut policies: BTreeMap<String, Arc<dyn Notifier>> = BTreeMap::new();
    policies.insert(
        "log".into(),
        Arc::new(LogNotifier::new().with_policy("log")),
    );
    for (name, e) in &cfg.escalation {
        policies.insert(name.clone(), notifier(name, e)?);
    }
    let default_sev = cfg
        .escalation
        .get(&cfg.prs.default_escalation)
        .and_then(|e| e.severity.as_deref());
    Ok(Routes {
        policies,
        default_policy: cfg.prs.default_escalation.clone(),
        by_check: registry
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.escalation.clone()?)))
            .collect(),
        muted: cfg
            .prs
            .checks
            .iter()
            .filter(|(_, c)| c.muted)
            .map(|(n, _)| n.clone())
            .collect(),
        severity: severity(default_sev),
    })
}

/// Runner options from the configuration (with [`RunnerOptions::models`] set, so the
/// runner validates its checks against the configured models before it starts).
pub fn options(cfg: &RunnerConfig) -> RunnerOptions {
    RunnerOptions {
        model_sources: cfg.model_sources.clone(),
        concurrency: cfg.prs.concurrency,
        watermark_poll: Duration::from_millis(cfg.prs.watermark_poll_ms),
        models: Some(cfg.models.clone()),
        ..RunnerOptions::default()
    }
}

/// Runs the enabled checks of `registry` over `sub` until `shutdown`: verdicts go to the
/// incident state machine (and `also`, if given: e.g. the demo's console), notices to the
/// configured policies.
pub async fn run(
    cfg: &RunnerConfig,
    registry: Registry,
    dal: Dal,
    sub: Box<dyn Subscription>,
    also: Option<Arc<dyn Sink>>,
    shutdown: CancellationToken,
) -> Result<RunnerReport> {
    let routes = routes(cfg, &registry)?;
    run_routed(cfg, routes, registry, dal, sub, also, shutdown).await
}

/// [`run`] with escalation `routes` given in code instead of the configured policies (the
/// demo and the bench escalate to a notifier of their own).
pub async fn run_routed(
    cfg: &RunnerConfig,
    routes: Routes,
    registry: Registry,
    dal: Dal,
    sub: Box<dyn Subscription>,
    also: Option<Arc<dyn Sink>>,
    shutdown: CancellationToken,
) -> Result<RunnerReport> {
    let enabled = registry
        .iter()
        .filter(|s| s.enabled)
        .map(|s| s.name.clone())
        .collect::<Vec<_>>();
    let (escalator, outbox) = Escalator::new(dal.catalog().clone(), routes, enabled)?;
    let outbox = outbox.with_shutdown_timeout(Duration::from_millis(cfg.prs.shutdown_timeout_ms));
    let runner = Runner::new(dal, Arc::new(registry), options(cfg))?;
    let outbox_stop = CancellationToken::new();
    let outbox_task = tokio::spawn(outbox.run(outbox_stop.clone()));
    let sink: Arc<dyn Sink> = match also {
        Some(extra) => Arc::new(Fanout(vec![Arc::new(escalator), extra])),
        None => Arc::new(escalator),
    };
    let report = runner.run(sub, sink, shutdown).await;
    outbox_stop.cancel();
    let outbox_result = outbox_task
        .await
        .map_err(|e| Error::Panicked(e.to_string()))?;
    let report = report?;
    outbox_result?;
    Ok(report)
}

/// Sinks in order (e.g. the escalator, then a console or a collector).
pub struct Fanout(pub Vec<Arc<dyn Sink>>);

#[async_trait::async_trait]
impl Sink for Fanout {
    async fn record(&self, run: &crate::runner::RunRecord) -> Result<()> {
        for s in &self.0 {
            s.record(run).await?;
        }
        Ok(())
    }
}
