//! The configuration file: every crate owns the types of its own tables, and this is where
//! they are assembled. `[prs]` and `[escalation.NAME]` belong to the runner
//! ([`overseer_prs::config`]); every other table to ingestion and the storage it writes
//! ([`overseer_ingestion::config`], which takes the storage tables from
//! [`overseer_dal::config`]). Unknown keys are errors naming the key, whichever table they
//! are in.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use overseer_prs::config::{EscalationConfig, PrsSettings, RunnerConfig};

/// The whole configuration file.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `[store]`, `[catalog]`, `[bus]`, `[ingest]`, `[dal]`, `[[models]]`, `[[sources]]`.
    pub ingestion: overseer_ingestion::config::Config,
    /// `[prs]`
    pub prs: PrsSettings,
    /// `[escalation.NAME]`: escalation policies checks name. `log` always exists.
    pub escalation: BTreeMap<String, EscalationConfig>,
}

/// The runner's tables, parsed on their own so unknown keys in them are reported too.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunnerTables {
    #[serde(default)]
    prs: PrsSettings,
    #[serde(default)]
    escalation: BTreeMap<String, EscalationConfig>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and validates a configuration's text.
    pub fn parse(text: &str) -> Result<Config> {
        let mut table: toml::Table = toml::from_str(text)?;
        let mut runner = toml::Table::new();
        for key in ["prs", "escalation"] {
            if let Some(v) = table.remove(key) {
                runner.insert(key.to_owned(), v);
            }
        }
        let ingestion: overseer_ingestion::config::Config = table.try_into()?;
        let RunnerTables { prs, escalation } = runner.try_into()?;
        let cfg = Config {
            ingestion,
            prs,
            escalation,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every table's own rules.
    pub fn validate(&self) -> Result<()> {
        self.ingestion.validate()?;
        overseer_prs::config::validate(&self.prs, &self.escalation)?;
        Ok(())
    }

    /// What the runner needs: its tables and which sources feed each model.
    pub fn runner(&self) -> RunnerConfig {
        RunnerConfig {
            prs: self.prs.clone(),
            escalation: self.escalation.clone(),
            model_sources: self.ingestion.model_sources(),
            models: self
                .ingestion
                .models
                .iter()
                .map(|m| (m.name.clone(), m.references.clone()))
                .collect(),
        }
    }
}

impl std::ops::Deref for Config {
    type Target = overseer_ingestion::config::Config;

    /// The storage and ingestion tables (`cfg.models`, `cfg.catalog`, ...).
    fn deref(&self) -> &Self::Target {
        &self.ingestion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_in_every_table() {
        let e = format!("{:#}", Config::parse("[prs]\ngrace = 3").unwrap_err());
        assert!(e.contains("grace"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[ingest]\nbatch_max_event = 3").unwrap_err()
        );
        assert!(e.contains("batch_max_event"), "{e}");
        let e = format!("{:#}", Config::parse("[nonsense]\nx = 1").unwrap_err());
        assert!(e.contains("nonsense"), "{e}");
    }

    #[test]
    fn runner_tables_are_validated() {
        let e = format!(
            "{:#}",
            Config::parse("[prs]\ndefault_escalation = \"pager\"").unwrap_err()
        );
        assert!(e.contains("prs.default_escalation"), "{e}");
        let c = Config::parse("[prs]\ngrace_ms = 250\n[escalation.pager]\nkind = \"log\"").unwrap();
        assert_eq!(c.prs.grace_ms, 250);
        assert!(c.escalation.contains_key("pager"));
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for ent in std::fs::read_dir(&dir).unwrap() {
            let p = ent.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
        assert!(n > 0, "examples/ has configs");
    }
}
