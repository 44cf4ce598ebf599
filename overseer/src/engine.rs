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

/// Serves Prometheus metrics (`/metrics`) and readiness (`/ready`) on `[prs] metrics_addr`,
/// if set. Must be called inside a tokio runtime.
pub fn serve_metrics(cfg: &Config) -> Result<()> {
    serve_metrics_at(cfg.prs.metrics_addr.as_deref(), "prs.metrics_addr")
}

/// Serves `/metrics` and `/ready` on `addr` (the setting `key`), if set.
pub fn serve_metrics_at(addr: Option<&str>, key: &str) -> Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("{key} {addr:?} is not host:port"))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("serving metrics on {addr}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms drain their buckets here (what `install` would have spawned).
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/ready", axum::routing::get(|| async { readiness() }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics, readiness at /ready");
    Ok(())
}

/// `/ready`: 200 unless ingestion or the runner is waiting out a storage fault (a database
/// restart, an object store's 5xx), which each retries for as long as it lasts; 503
/// meanwhile.
fn readiness() -> (axum::http::StatusCode, String) {
    readiness_with(
        overseer_ingestion::pipeline::stalled_ops(),
        overseer_prs::retry::stalled_steps(),
    )
}

fn readiness_with(ingest: i64, runner: i64) -> (axum::http::StatusCode, String) {
    if ingest == 0 && runner == 0 {
        return (axum::http::StatusCode::OK, "ready\n".into());
    }
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "not ready: waiting out a transient storage fault ({ingest} ingestion operations, \
             {runner} runner steps)\n"
        ),
    )
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

/// Opens the storage (waiting out a database or store that is down at start), unless a
/// stop comes first: `None` then.
pub(crate) async fn open_unless_stopped(
    cfg: &Config,
    token: &CancellationToken,
) -> Result<Option<Storage>> {
    tokio::select! {
        storage = Storage::open(cfg) => Ok(Some(storage?)),
        () = token.cancelled() => {
            tracing::info!("stopped before the storage was open");
            Ok(None)
        }
    }
}

/// `overseer prs`: the runner alone, on the events topic.
pub async fn prs(cfg: Config, checks: &Checks, token: CancellationToken) -> Result<()> {
    crate::validate::ensure_valid(&cfg, checks)?;
    let Some(storage) = open_unless_stopped(&cfg, &token).await? else {
        return Ok(());
    };
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
    let Some(storage) = open_unless_stopped(&cfg, &token).await? else {
        return Ok(());
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_unless_storage_holds_ingestion_up() {
        assert_eq!(readiness_with(0, 0).0, axum::http::StatusCode::OK);
        let (status, body) = readiness_with(2, 0);
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("2 ingestion operations"), "{body}");
        let (status, body) = readiness_with(0, 1);
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("1 runner steps"), "{body}");
    }
}
