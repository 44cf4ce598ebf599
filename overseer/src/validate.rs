//! `overseer validate`: everything that can be known wrong before anything is ingested —
//! the configuration's own rules, the registered checks against it (names in
//! `[prs.checks.NAME]`, escalation policies), every check's view against the view
//! definitions, and the environment variables the configuration names for secrets. Every
//! problem is listed, not just the first.

use std::path::Path;

use anyhow::{Result, bail};

use crate::config::Config;
use crate::engine::Checks;

/// Every problem with the configuration at `path` and the registered checks, in the order
/// found; empty when there is none.
pub fn problems(path: &Path, checks: &Checks) -> Vec<String> {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        // Nothing more can be checked without a configuration.
        Err(e) => return vec![format!("{e:#}")],
    };
    let mut out = Vec::new();
    for var in secret_envs(&cfg) {
        if std::env::var_os(&var.0).is_none() {
            out.push(format!(
                "{}: environment variable {} is not set",
                var.1, var.0
            ));
        }
    }
    let registry = match checks.registry(&cfg) {
        Ok(r) => r,
        Err(e) => {
            out.push(format!("{e:#}"));
            return out;
        }
    };
    let views = match overseer_ingestion::dal::views(&cfg.dal) {
        Ok(v) => v,
        Err(e) => {
            out.push(e.to_string());
            return out;
        }
    };
    // The views the checks registered in code, beside the built-in and configured ones.
    let views = match views.with_descriptor_sets(registry.descriptor_sets().iter().copied()) {
        Ok(v) => v,
        Err(e) => {
            out.push(format!("views registered by the checks: {e}"));
            return out;
        }
    };
    // Every check's view against the configured models (what the runner refuses to
    // start with).
    out.extend(
        overseer_prs::validate::validate(&registry, &views, &cfg.runner().models)
            .iter()
            .map(ToString::to_string),
    );
    if let Err(e) = overseer_prs::service::routes(&cfg.runner(), &registry) {
        out.push(e.to_string());
    }
    out
}

/// The environment variables the configuration names for secrets, each with the key that
/// names it.
fn secret_envs(cfg: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let overseer_dal::config::CatalogConfig::Postgres(pg) = &cfg.catalog {
        out.push((pg.url_env.clone(), "catalog.url_env".to_owned()));
    }
    for s in &cfg.sources {
        if let Some(pg) = &s.postgres {
            out.push((
                pg.url_env.clone(),
                format!("sources {:?}: postgres.url_env", s.name),
            ));
        }
    }
    for (name, e) in &cfg.escalation {
        if let Some(v) = &e.routing_key_env {
            out.push((v.clone(), format!("escalation.{name}.routing_key_env")));
        }
        if let Some(v) = &e.url_env {
            out.push((v.clone(), format!("escalation.{name}.url_env")));
        }
    }
    out
}

/// Prints every problem and fails if there is any.
pub(crate) async fn run(path: &Path, checks: &Checks) -> Result<()> {
    let problems = problems(path, checks);
    if problems.is_empty() {
        println!("{}: valid", path.display());
        return Ok(());
    }
    for p in &problems {
        println!("- {p}");
    }
    bail!("{}: {} problem(s)", path.display(), problems.len())
}
