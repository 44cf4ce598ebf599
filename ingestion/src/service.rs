//! `overseer ingest`: every configured source, each through its own pipeline, supervised
//! in one `JoinSet` with one cancellation token (Tansu's broker style). A failing source
//! stops the others cleanly; everything acknowledged stays durable.

use std::collections::BTreeMap;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::{Ingestor, SourceReport, Storage};
use crate::{Error, Result};

/// Runs ingestion for `cfg` until every source ends or `shutdown` fires. With `once`, every
/// source must be a file that is not followed: the run drains them and returns.
pub async fn run(
    cfg: &Config,
    storage: Storage,
    once: bool,
    shutdown: CancellationToken,
) -> Result<BTreeMap<String, SourceReport>> {
    if cfg.sources.is_empty() {
        return Err(Error::Config("no [[sources]] configured".into()));
    }
    if let Some(s) = cfg
        .sources
        .iter()
        .find(|s| once && s.file.as_ref().is_none_or(|f| f.follow))
    {
        return Err(Error::Config(format!(
            "--once drains file sources; source {:?} is not a file without `follow`",
            s.name
        )));
    }
    let ingestor = Ingestor::new(storage, cfg.ingest.clone());
    ingestor.recover(&shutdown).await?;
    let mut set = JoinSet::new();
    for src in &cfg.sources {
        let consumer = crate::format::build(src, cfg)?;
        let source = crate::source::build(src)?;
        let (ing, src, token) = (ingestor.clone(), src.clone(), shutdown.clone());
        set.spawn(async move {
            let r = ing.run_source(&src, consumer, source, token).await;
            (src.name, r)
        });
    }
    let mut reports = BTreeMap::new();
    let mut first_err = None;
    while let Some(joined) = set.join_next().await {
        let (name, r) =
            joined.map_err(|e| Error::source("?", format!("task failed: {e}"), false))?;
        match r {
            Ok(rep) => {
                tracing::info!(source = %name, ?rep, "source finished");
                reports.insert(name, rep);
            }
            Err(e) => {
                tracing::error!(source = %name, error = %e, "source failed; stopping the others");
                shutdown.cancel();
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}
