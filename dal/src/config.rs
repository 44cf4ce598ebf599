//! Configuration of the storage backends (the `[store]`, `[catalog]` and `[bus]` tables of
//! the TOML config), of the records (`[[models]]`) and of readers (`[dal]`), and the functions that open them. Secrets never appear here: S3
//! credentials come from the standard AWS environment variables, the catalog's connection
//! string from the environment variable the config names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::bus::{DynBus, memory::MemoryBus};
use crate::catalog::DynCatalog;
use crate::store::{DynStore, local::LocalStore, memory::MemoryStore};
use crate::{Error, Result};

/// `[store]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// A local directory (the embedded default).
    Local { path: PathBuf },
    /// Process memory; nothing survives.
    Memory,
    /// S3 or an S3-compatible server.
    S3(S3Config),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Local {
            path: PathBuf::from("overseer-data/objects"),
        }
    }
}

/// S3 settings. Credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or any source of
/// the default AWS chain), never the config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket (e.g. `overseer/prod`); empty for the bucket root.
    #[serde(default)]
    pub prefix: String,
    /// Custom endpoint (MinIO, garage); the AWS default when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`http://host/bucket/key`), needed by most local servers.
    #[serde(default)]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// `[catalog]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CatalogConfig {
    /// A local redb file; no server.
    Embedded { path: PathBuf },
    /// PostgreSQL.
    Postgres(PgCatalogConfig),
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig::Embedded {
            path: PathBuf::from("overseer-data/catalog.redb"),
        }
    }
}

/// PostgreSQL catalog settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PgCatalogConfig {
    /// Name of the environment variable holding the connection string
    /// (`host=... user=... password=...` or a `postgres://` URL).
    #[serde(default = "default_catalog_url_env")]
    pub url_env: String,
    /// Schema holding the catalog's tables (created by the migrations).
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_catalog_url_env() -> String {
    "OVERSEER_CATALOG_URL".into()
}

fn default_schema() -> String {
    "overseer".into()
}

/// `[bus]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BusConfig {
    /// In-process channels (the embedded default).
    Memory {
        #[serde(default = "default_bus_capacity")]
        capacity: usize,
    },
    /// A Kafka events topic.
    Kafka(KafkaBusConfig),
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig::Memory {
            capacity: default_bus_capacity(),
        }
    }
}

fn default_bus_capacity() -> usize {
    65_536
}

/// Kafka events-topic settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaBusConfig {
    /// `host:port,...`
    pub brokers: String,
    #[serde(default = "default_events_topic")]
    pub topic: String,
    /// Partitions to create the topic with when it does not exist.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// The consumer group's session timeout: after an instance dies without leaving
    /// (kill -9, a lost machine), its partitions are handed to the others this long after
    /// its last heartbeat. librdkafka's default is 45 s; the broker bounds it
    /// (`group.min.session.timeout.ms`, 6 s by default).
    #[serde(default = "default_bus_session_timeout_ms")]
    pub session_timeout_ms: u32,
}

fn default_bus_session_timeout_ms() -> u32 {
    10_000
}

impl KafkaBusConfig {
    /// The settings for `brokers` with every default.
    pub fn new(brokers: impl Into<String>) -> KafkaBusConfig {
        KafkaBusConfig {
            brokers: brokers.into(),
            topic: default_events_topic(),
            partitions: default_partitions(),
            session_timeout_ms: default_bus_session_timeout_ms(),
        }
    }
}

fn default_events_topic() -> String {
    "overseer.events".into()
}

fn default_partitions() -> i32 {
    4
}

/// `[dal]`: how readers of the history (`overseer view`, the checks) open the data access
/// layer (`overseer_ingestion::dal::open_dal`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DalSettings {
    /// Budget of the read cache of decoded updates, in MiB; 0 disables it.
    pub cache_mib: u64,
    /// Budget of the maintained record states (each record's fold, extended by the
    /// updates since instead of re-folded: `overseer_dal::state`), in MiB; 0 disables
    /// them (every read folds the record's history).
    pub state_mib: u64,
    /// A snapshot of a record's fold is stored beside the history every this many of its
    /// updates (`overseer_dal::snapshot`), so a read as of any time folds at most this
    /// many, also in a process that never read the record; 0: none (reads without a
    /// maintained fold fold the record's whole history).
    pub snapshot_every: u64,
    /// Encoded `FileDescriptorSet`s (`protoc --include_imports --descriptor_set_out`, or
    /// protox) holding the user's own view messages, added to the built-in
    /// `overseer.views.v1` views. Relative paths are taken from the working directory, like
    /// every other path in this file.
    pub view_descriptor_sets: Vec<PathBuf>,
}

impl Default for DalSettings {
    fn default() -> Self {
        DalSettings {
            cache_mib: crate::cache::DEFAULT_CACHE_BYTES >> 20,
            state_mib: crate::state::DEFAULT_STATE_BYTES >> 20,
            snapshot_every: crate::snapshot::DEFAULT_SNAPSHOT_EVERY,
            view_descriptor_sets: Vec::new(),
        }
    }
}

/// Upper bound of `[dal] cache_mib` and `state_mib`: a larger value is a typo, not a budget.
pub const MAX_CACHE_MIB: u64 = 1 << 20;

impl DalSettings {
    /// Rules of the `[dal]` table alone.
    pub fn validate(&self) -> Result<()> {
        for (name, mib) in [
            ("dal.cache_mib", self.cache_mib),
            ("dal.state_mib", self.state_mib),
        ] {
            if mib > MAX_CACHE_MIB {
                return Err(Error::invalid(
                    name,
                    format!("{mib} is more than {MAX_CACHE_MIB} (1 TiB)"),
                ));
            }
        }
        Ok(())
    }

    /// The maintained states' budget in bytes.
    pub fn state_bytes(&self) -> u64 {
        self.state_mib.saturating_mul(1 << 20)
    }

    /// The read cache budget in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mib.saturating_mul(1 << 20)
    }
}

/// `[[models]]`: how to find a record's id and references in its events.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `namespace.name`, e.g. `payments.transfers` (Postgres schema.table, Mongo db.collection).
    pub name: String,
    /// Field (dotted path) holding the record id in the record's document or row.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Reference name → field (dotted path); the values become the master document's
    /// references and feed the reference index used for joins.
    #[serde(default)]
    pub references: BTreeMap<String, String>,
}

fn default_id_field() -> String {
    "id".into()
}

/// A backend the configuration names but this build left out (a cargo feature of
/// `overseer-dal`, on by default).
#[allow(dead_code)] // used only when a backend feature is off
fn not_built(what: &str, kind: &str) -> Error {
    Error::invalid(
        format!("{what}.kind"),
        format!(
            "kind = \"{kind}\" needs overseer-dal's cargo feature \"{kind}\", which this build \
             does not enable"
        ),
    )
}

/// Opens the configured object store.
pub async fn open_store(cfg: &StoreConfig) -> Result<DynStore> {
    Ok(match cfg {
        StoreConfig::Local { path } => Arc::new(LocalStore::open(path)?),
        StoreConfig::Memory => Arc::new(MemoryStore::new()),
        #[cfg(feature = "s3")]
        StoreConfig::S3(s3) => Arc::new(crate::store::s3::S3Store::connect(s3).await?),
        #[cfg(not(feature = "s3"))]
        StoreConfig::S3(_) => return Err(not_built("store", "s3")),
    })
}

/// Opens the configured catalog to read it while another process may write it (`overseer
/// history`, `view`, `replay` beside `overseer run`): the embedded catalog read-only
/// ([`crate::catalog::embedded::EmbeddedCatalog::open_reader`]); PostgreSQL as
/// [`open_catalog`] does (its server serves readers and writers alike).
pub async fn open_catalog_reader(cfg: &CatalogConfig) -> Result<DynCatalog> {
    match cfg {
        #[cfg(feature = "embedded")]
        CatalogConfig::Embedded { path } => {
            // Blocking file work (and, after a writer's crash, its repair) off the runtime.
            let path = path.clone();
            let reader = tokio::task::spawn_blocking(move || {
                crate::catalog::embedded::EmbeddedCatalog::open_reader(path)
            })
            .await
            .map_err(|e| Error::catalog(format!("opening the embedded catalog: {e}")))??;
            Ok(Arc::new(reader))
        }
        _ => open_catalog(cfg).await,
    }
}

/// Opens the configured catalog (running migrations for PostgreSQL).
pub async fn open_catalog(cfg: &CatalogConfig) -> Result<DynCatalog> {
    match cfg {
        #[cfg(feature = "embedded")]
        CatalogConfig::Embedded { path } => Ok(Arc::new(
            crate::catalog::embedded::EmbeddedCatalog::open(path)?,
        )),
        #[cfg(not(feature = "embedded"))]
        CatalogConfig::Embedded { .. } => Err(not_built("catalog", "embedded")),
        #[cfg(not(feature = "postgres"))]
        CatalogConfig::Postgres(_) => Err(not_built("catalog", "postgres")),
        #[cfg(feature = "postgres")]
        CatalogConfig::Postgres(pg) => {
            let url = std::env::var(&pg.url_env).map_err(|_| {
                Error::invalid(
                    "catalog.url_env",
                    format!(
                        "environment variable {} (the catalog's connection string) is not set",
                        pg.url_env
                    ),
                )
            })?;
            Ok(Arc::new(
                crate::catalog::postgres::PgCatalog::connect(&url, &pg.schema).await?,
            ))
        }
    }
}

/// Opens the configured bus.
pub async fn open_bus(cfg: &BusConfig) -> Result<DynBus> {
    Ok(match cfg {
        BusConfig::Memory { capacity } => Arc::new(MemoryBus::new(*capacity)),
        #[cfg(feature = "kafka")]
        BusConfig::Kafka(k) => Arc::new(crate::bus::kafka::KafkaBus::connect(k).await?),
        #[cfg(not(feature = "kafka"))]
        BusConfig::Kafka(_) => return Err(not_built("bus", "kafka")),
    })
}
