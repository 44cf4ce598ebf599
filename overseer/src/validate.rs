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
/// found; empty when there is none. Call it inside a Tokio runtime (escalation policies
/// are built to check them, and a rate-limited one starts a task).
pub async fn problems(path: &Path, checks: &Checks) -> Vec<String> {
    match Config::load(path) {
        Ok(cfg) => problems_in(&cfg, checks),
        // Nothing more can be checked without a configuration.
        Err(e) => vec![format!("{e:#}")],
    }
}

/// Every problem of a loaded configuration with the registered checks: the secrets'
/// environment variables, `[prs.checks.NAME]` names, every check's view against the
/// configured models, and the escalation policies. Inside a Tokio runtime.
pub fn problems_in(cfg: &Config, checks: &Checks) -> Vec<String> {
    let mut out = Vec::new();
    let mut secrets_missing = false;
    for (var, key) in secret_envs(cfg) {
        if std::env::var_os(&var).is_none() {
            secrets_missing = true;
            out.push(format!("{key}: environment variable {var} is not set"));
        }
    }
    // The checks as configured; if the configuration names checks that do not exist, that
    // is one problem, and the checks as registered are validated all the same.
    let registry = match checks.registry(cfg) {
        Ok(r) => r,
        Err(e) => {
            out.push(format!("{e:#}"));
            checks.registered()
        }
    };
    let views = overseer_ingestion::dal::views(&cfg.dal)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            // The views the checks registered in code, beside the built-in and configured.
            v.with_descriptor_sets(registry.descriptor_sets().iter().copied())
                .map_err(|e| format!("views registered by the checks: {e}"))
        });
    match views {
        // Every check's view against the configured models (what the runner refuses to
        // start with).
        Ok(views) => out.extend(
            overseer_prs::validate::validate(&registry, &views, &cfg.runner().models)
                .iter()
                .map(ToString::to_string),
        ),
        Err(e) => out.push(e),
    }
    // Building the policies reads their secrets: a missing one is already listed above.
    if !secrets_missing && let Err(e) = overseer_prs::service::routes(&cfg.runner(), &registry) {
        out.push(e.to_string());
    }
    out
}

/// Fails listing every problem of `cfg` with the checks, if there is any: what `run` and
/// `prs` do before they open anything.
pub fn ensure_valid(cfg: &Config, checks: &Checks) -> Result<()> {
    let problems = problems_in(cfg, checks);
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "the configuration and the checks do not fit ({} problem(s); `overseer validate` lists them too):\n- {}",
        problems.len(),
        problems.join("\n- ")
    )
}

/// The environment variables the configuration names for secrets, each with the key that
/// names it.
fn secret_envs(cfg: &Config) -> Vec<(String, String)> {
    // (variable, the key that names it)
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
        if let Some(k) = &s.kafka {
            for (property, var) in &k.properties_env {
                out.push((
                    var.clone(),
                    format!("sources {:?}: kafka.properties_env.{property}", s.name),
                ));
            }
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
    let problems = problems(path, checks).await;
    if problems.is_empty() {
        println!("{}: valid", path.display());
        return Ok(());
    }
    for p in &problems {
        println!("- {p}");
    }
    bail!("{}: {} problem(s)", path.display(), problems.len())
}
