//! `overseer prs` and `overseer run`: the processor runner with the deployment's checks,
//! alone on the events topic or in one process with ingestion; and the pieces other
//! front ends (the demo, the bench) reuse.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use overseer_dal::bus::Subscription;
use overseer_dal::bus::feed::CatalogFeed;
use overseer_dal::config::BusConfig;
use overseer_ingestion::pipeline::Storage;
use overseer_prs::check::Registry;
use overseer_prs::runner::RunnerReport;

use crate::config::Config;

/// How a deployment registers its checks: called once for every registry a command builds.
#[derive(Clone)]
pub struct Checks(Arc<dyn Fn(&mut Registry) + Send + Sync>);

impl Checks {
    pub fn new(register: impl Fn(&mut Registry) + Send + Sync + 'static) -> Self {
        Checks(Arc::new(register))
    }

    /// The registered checks with the configuration's settings applied (`[prs] grace_ms`
    /// and max delay, `[prs.checks.NAME]` overrides).
    pub fn registry(&self, cfg: &Config) -> Result<Registry> {
        let mut registry = Registry::new();
        (self.0)(&mut registry);
        overseer_prs::service::configure(&mut registry, &cfg.prs)?;
        Ok(registry)
    }

    /// The checks as registered, without the configuration's settings.
    pub fn registered(&self) -> Registry {
        let mut registry = Registry::new();
        (self.0)(&mut registry);
        registry
    }
}

/// Serves Prometheus metrics on `[prs] metrics_addr`, if set.
pub fn serve_metrics(cfg: &Config) -> Result<()> {
    let Some(addr) = &cfg.prs.metrics_addr else {
        return Ok(());
    };
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("prs.metrics_addr {addr:?} is not host:port"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
    Ok(())
}

/// Where the runner reads notifications: the events topic's consumer group (Kafka bus), or
/// a cursor over the catalog (in-process bus: notifications in memory would be lost in a
/// crash, the catalog's would not; the segments it reads warm `dal`'s cache).
/// `in_process` says whether ingestion runs in this process (required for the in-process
/// bus).
pub async fn subscription(
    cfg: &Config,
    storage: &Storage,
    dal: &overseer_dal::Dal,
    in_process: bool,
) -> Result<Box<dyn Subscription>> {
    match &cfg.bus {
        BusConfig::Kafka(_) => Ok(storage.bus.subscribe(&cfg.prs.group).await?),
        BusConfig::Memory { .. } => {
            if !in_process {
                bail!(
                    "the in-process bus ([bus] kind = \"memory\") reaches only checks running in \
                     the ingesting process: use `overseer run`, or a Kafka bus"
                );
            }
            let poll = Duration::from_millis(cfg.prs.watermark_poll_ms);
            let (catalog, store) = (storage.catalog.clone(), storage.store.clone());
            let feed = if cfg.prs.from_beginning {
                CatalogFeed::open(catalog, store, &cfg.prs.group, poll).await?
            } else {
                CatalogFeed::open_at_end(catalog, store, &cfg.prs.group, poll).await?
            };
            Ok(Box::new(feed.warming(dal.cache())))
        }
    }
}

fn print_report(r: &RunnerReport) {
    let outcomes: Vec<String> = r
        .by_outcome
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    eprintln!(
        "prs: {} notifications, {} triggers, {} runs ({})",
        r.notifications,
        r.triggers,
        r.runs,
        outcomes.join(", ")
    );
}

/// `overseer prs`: the runner alone, on the events topic.
pub async fn prs(cfg: Config, checks: &Checks, token: CancellationToken) -> Result<()> {
    crate::validate::ensure_valid(&cfg, checks)?;
    let storage = Storage::open(&cfg).await?;
    let dal = overseer_ingestion::dal::dal_over(&cfg, &storage)?;
    let sub = subscription(&cfg, &storage, &dal, false).await?;
    serve_metrics(&cfg)?;
    let registry = checks.registry(&cfg)?;
    let report = overseer_prs::service::run(&cfg.runner(), registry, dal, sub, None, token).await?;
    print_report(&report);
    Ok(())
}

/// `overseer run`: ingestion and the runner in one process, stopping together on a
/// signal (or when ingestion fails).
pub async fn run(cfg: Config, checks: &Checks, token: CancellationToken) -> Result<()> {
    // Before anything is ingested (and acknowledged to a source).
    crate::validate::ensure_valid(&cfg, checks)?;
    let storage = Storage::open(&cfg).await?;
    serve_metrics(&cfg)?;
    let dal = overseer_ingestion::dal::dal_over(&cfg, &storage)?;
    let registry = checks.registry(&cfg)?;
    let sub = subscription(&cfg, &storage, &dal, true).await?;
    let cfg = Arc::new(cfg);
    let ingest = {
        let (cfg, token) = (cfg.clone(), token.clone());
        tokio::spawn(async move {
            let r = overseer_ingestion::service::run(&cfg.ingestion, storage, false, token.clone())
                .await;
            match &r {
                // A failed ingestion stops the runner too.
                Err(_) => token.cancel(),
                // Every source finished (files without `follow`): their delayed checks
                // still run; the runner stops on SIGINT/SIGTERM.
                Ok(_) if !token.is_cancelled() => {
                    tracing::info!("every source finished; checks keep running until stopped")
                }
                Ok(_) => {}
            }
            r
        })
    };
    let prs =
        overseer_prs::service::run(&cfg.runner(), registry, dal, sub, None, token.clone()).await;
    token.cancel();
    let ingested = ingest.await.context("the ingestion task")?;
    let report = prs?;
    for (name, r) in ingested? {
        eprintln!(
            "{name}: {} events, {} updates, {} duplicates, {} quarantined, {} segments",
            r.events, r.updates, r.duplicates, r.quarantined, r.segments
        );
    }
    print_report(&report);
    Ok(())
}
