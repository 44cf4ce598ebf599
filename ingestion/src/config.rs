//! The configuration file (TOML). Defaults live here and only here; cross-field rules are
//! checked by [`Config::validate`] with errors naming the offending key. Secrets are never
//! in the file: connection strings come from environment variables the file names.
//!
//! ```toml
//! [store]                      # local | memory | s3
//! kind = "local"
//! path = "overseer-data/objects"
//!
//! [catalog]                    # embedded | postgres
//! kind = "embedded"
//! path = "overseer-data/catalog.redb"
//!
//! [ingest]
//! batch_max_events = 4096
//! batch_max_ms = 20
//!
//! [dal]                        # readers: `overseer view`, checks
//! cache_mib = 64
//! view_descriptor_sets = ["my_views.binpb"]
//!
//! [[models]]
//! name = "ledger.entries"
//! id_field = "_id"
//! references = { transfer_id = "transfer_id" }
//!
//! [[sources]]
//! name = "ledger"
//! format = "mongo-change-stream"
//! [sources.file]
//! path = "ledger.jsonl"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use overseer_dal::config::{BusConfig, CatalogConfig, DalSettings, ModelConfig, StoreConfig};

use crate::{Error, Result};

/// The tables of the configuration file that ingestion and the storage it writes read:
/// `[store]`, `[catalog]`, `[bus]`, `[ingest]`, `[dal]`, `[[models]]`, `[[sources]]`. The
/// whole file (with `[prs]` and `[escalation.NAME]`) is assembled by the `overseer` crate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub catalog: CatalogConfig,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub ingest: IngestSettings,
    #[serde(default)]
    pub dal: DalSettings,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

/// `[ingest]`: batching and limits shared by every source.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// A batch (one segment) closes at this many events...
    pub batch_max_events: usize,
    /// ...or this long after its first event, whichever comes first.
    pub batch_max_ms: u64,
    /// Events larger than this are quarantined as oversized.
    pub max_event_bytes: usize,
    /// Capacity of each source's channel into the pipeline (backpressure beyond it).
    pub queue_capacity: usize,
    /// How often sources look for evidence of how far they are complete: the PostgreSQL
    /// probe, the Kafka partitions' ends (see `overseer_ingestion::freshness`).
    pub heartbeat_ms: u64,
    /// Free space, in MiB, below which ingestion waits (not ready) before writing a batch to
    /// a local store or embedded catalog, until space is freed: a disk filled to the last
    /// byte fails the catalog's commit, which stops the process (0: no check).
    pub min_free_mib: u64,
    /// Where `overseer ingest` serves Prometheus `/metrics` and `/ready` ("host:port"; none
    /// if unset). `overseer run` and `prs` serve theirs at `[prs] metrics_addr`.
    pub metrics_addr: Option<String>,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            batch_max_events: 4096,
            batch_max_ms: 20,
            max_event_bytes: 1 << 20,
            queue_capacity: 16_384,
            heartbeat_ms: 1000,
            min_free_mib: 128,
            metrics_addr: None,
        }
    }
}

/// Input formats a consumer can read.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// PostgreSQL logical replication, pgoutput plugin (only from a `postgres` source).
    Pgoutput,
    /// Debezium PostgreSQL connector envelope (JSON, with or without schema/payload).
    DebeziumPostgres,
    /// Debezium MongoDB connector envelope (JSON; documents as extended-JSON strings).
    DebeziumMongo,
    /// Native MongoDB change-stream events as (relaxed or canonical) extended JSON.
    MongoChangeStream,
    /// Native MongoDB change-stream events as raw BSON documents.
    MongoChangeStreamBson,
    /// Protobuf messages described by a configured descriptor set.
    Protobuf,
}

impl Format {
    /// The name used in configs and stored in update records.
    pub fn name(self) -> &'static str {
        match self {
            Format::Pgoutput => "pgoutput",
            Format::DebeziumPostgres => "debezium-postgres",
            Format::DebeziumMongo => "debezium-mongo",
            Format::MongoChangeStream => "mongo-change-stream",
            Format::MongoChangeStreamBson => "mongo-change-stream-bson",
            Format::Protobuf => "protobuf",
        }
    }

    /// Inverse of [`Format::name`].
    pub fn from_name(s: &str) -> Option<Format> {
        [
            Format::Pgoutput,
            Format::DebeziumPostgres,
            Format::DebeziumMongo,
            Format::MongoChangeStream,
            Format::MongoChangeStreamBson,
            Format::Protobuf,
        ]
        .into_iter()
        .find(|f| f.name() == s)
    }
}

/// `[[sources]]`: one input, tied to one consumer (format). Exactly one of `file`,
/// `kafka`, `postgres` is set.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique; part of every update's identity, so never rename a live source.
    pub name: String,
    pub format: Format,
    /// Model of every event of this source; when absent it comes from the event
    /// (Debezium `source.schema/table` or `db/collection`, Mongo `ns`, pgoutput relation).
    #[serde(default)]
    pub model: Option<String>,
    /// Overrides `[ingest].max_event_bytes` for this source.
    #[serde(default)]
    pub max_event_bytes: Option<usize>,
    /// How far out of commit order events may arrive within one lane (a partition, the
    /// file): the watermark trails the newest commit time seen by this much (Flink's
    /// bounded out-of-orderness). 0: each lane delivers in commit order.
    #[serde(default)]
    pub max_out_of_order_ms: u64,
    /// Take "caught up at the transport" (a partition at its end and quiet for
    /// `heartbeat_ms`, a followed file at its end) as "complete up to now". Only for a source with no upstream lag,
    /// whose producer writes at commit time; off by default, when only commit times and
    /// upstream heartbeats move the watermark (see `overseer_ingestion::freshness`).
    /// Not for `postgres` sources, whose server clock is the evidence.
    #[serde(default)]
    pub caught_up_means_now: bool,
    #[serde(default)]
    pub file: Option<FileSourceConfig>,
    #[serde(default)]
    pub kafka: Option<KafkaSourceConfig>,
    #[serde(default)]
    pub postgres: Option<PgSourceConfig>,
    /// Descriptor of `format = "protobuf"` events.
    #[serde(default)]
    pub protobuf: Option<ProtobufFormatConfig>,
}

/// A JSONL (one event per line) or BSON (concatenated documents) file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    pub path: PathBuf,
    /// Keep reading as the file grows (otherwise stop at its end).
    #[serde(default)]
    pub follow: bool,
}

/// Whether a librdkafka property (any case) can carry a credential: passwords, secrets,
/// private keys and their passphrases, JAAS and OAUTHBEARER configurations. Such values
/// never come from the config file and never appear in a message.
pub fn is_secret_property(key: &str) -> bool {
    // Not the file locations (`ssl.key.location`, `ssl.keystore.location`): a path is
    // not a credential.
    const MARKS: [&str; 8] = [
        "password",
        "secret",
        "jaas",
        "key.pem",
        "ssl_key",
        "passphrase",
        "oauthbearer.config",
        "credential",
    ];
    let key = key.to_ascii_lowercase();
    MARKS.iter().any(|m| key.contains(m))
}

/// Kafka topics read through a consumer group.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port,...`
    pub brokers: String,
    pub topics: Vec<String>,
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a group with no committed offset starts: `earliest` or `latest`.
    #[serde(default = "default_offset_reset")]
    pub auto_offset_reset: String,
    /// Extra librdkafka properties. No credentials ([`is_secret_property`]): those go in
    /// `properties_env`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose value is read from an environment variable at start,
    /// e.g. `{ "sasl.password" = "KAFKA_PASSWORD" }`: the value is never in the config
    /// file, and never in a message.
    #[serde(default)]
    pub properties_env: BTreeMap<String, String>,
    /// The connector's heartbeat topic (Debezium `__debezium-heartbeat.<prefix>` with
    /// `heartbeat.interval.ms` set; the MongoDB connector's `heartbeat.topic.name`,
    /// default `__mongodb_heartbeats`): an idle but healthy connector keeps the watermark
    /// moving, and a stopped one does not. Read by every instance from its end, without
    /// committing offsets.
    #[serde(default)]
    pub heartbeat_topic: Option<String>,
}

fn default_group() -> String {
    "overseer-ingest".into()
}

fn default_offset_reset() -> String {
    "earliest".into()
}

/// PostgreSQL logical replication (pgoutput).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PgSourceConfig {
    /// Environment variable holding the connection string (`host=.. port=.. user=..
    /// password=.. dbname=..` or a URL). The password never lives in this file.
    pub url_env: String,
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Create the slot and the publication when they do not exist.
    #[serde(default)]
    pub create: bool,
    /// Tables (`schema.table`) the publication covers when created; empty = all tables.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Status/heartbeat interval.
    #[serde(default = "default_status_ms")]
    pub status_interval_ms: u64,
}

fn default_status_ms() -> u64 {
    1000
}

/// How to read `format = "protobuf"` events.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProtobufFormatConfig {
    /// A serialized `FileDescriptorSet` (`protoc --descriptor_set_out` / protox).
    pub descriptor_set: PathBuf,
    /// Full message name, e.g. `payments.v1.TransferEvent`.
    pub message: String,
    /// Field (dotted path) with the event's commit time (a `google.protobuf.Timestamp`, or
    /// an integer of epoch milliseconds).
    pub time_field: String,
    /// Field with the operation (`c/u/d`, `create/update/delete`, or an enum with such
    /// names); every event is an update of the full record when absent.
    #[serde(default)]
    pub op_field: Option<String>,
    /// Field holding the record itself (the sub-message ids and references are read from);
    /// the whole message when absent.
    #[serde(default)]
    pub record_field: Option<String>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field rules.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let ing = &self.ingest;
        if ing.batch_max_events == 0 || ing.queue_capacity == 0 || ing.max_event_bytes == 0 {
            return bad(
                "ingest.batch_max_events, queue_capacity and max_event_bytes must be > 0".into(),
            );
        }
        self.dal.validate()?;
        let mut models = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.is_empty() || !models.insert(m.name.as_str()) {
                return bad(format!(
                    "models[{i}].name {:?} is empty or repeated",
                    m.name
                ));
            }
            if m.id_field.is_empty() {
                return bad(format!("models[{i}].id_field is empty"));
            }
        }
        let mut names = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}] ({:?})", s.name);
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return bad(format!("{at}: name is empty or repeated"));
            }
            let kinds = [s.file.is_some(), s.kafka.is_some(), s.postgres.is_some()];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return bad(format!(
                    "{at}: set exactly one of [sources.file], [sources.kafka], [sources.postgres]"
                ));
            }
            if (s.format == Format::Pgoutput) != s.postgres.is_some() {
                return bad(format!(
                    "{at}: format \"pgoutput\" goes with [sources.postgres] and only with it"
                ));
            }
            if (s.format == Format::Protobuf) != s.protobuf.is_some() {
                return bad(format!(
                    "{at}: format \"protobuf\" needs [sources.protobuf] (and only it uses it)"
                ));
            }
            if s.format == Format::Protobuf && s.model.is_none() {
                return bad(format!("{at}: format \"protobuf\" needs `model`"));
            }
            if let Some(m) = &s.model
                && !models.contains(m.as_str())
            {
                return bad(format!("{at}: model {m:?} is not in [[models]]"));
            }
            if s.caught_up_means_now && s.postgres.is_some() {
                return bad(format!(
                    "{at}: caught_up_means_now does not apply to a postgres source: its watermark is the server's clock at a WAL position the stream reached"
                ));
            }
            if s.file.as_ref().is_some_and(|f| !f.follow) && s.caught_up_means_now {
                return bad(format!(
                    "{at}: caught_up_means_now needs a followed file (follow = true); a drained file is complete anyway"
                ));
            }
            if let Some(k) = &s.kafka {
                if k.topics.len() != 1 {
                    // Several topics of one source are read by one group member per topic;
                    // against tansu 0.6 such a group sometimes hands one topic's partitions
                    // to the other member. Until that is understood, one topic per source.
                    return bad(format!(
                        "{at}: kafka.topics must name exactly one topic (configure one [[sources]] per topic)"
                    ));
                }
                if !matches!(k.auto_offset_reset.as_str(), "earliest" | "latest") {
                    return bad(format!(
                        "{at}: kafka.auto_offset_reset must be \"earliest\" or \"latest\""
                    ));
                }
                if let Some(h) = &k.heartbeat_topic {
                    if s.caught_up_means_now {
                        return bad(format!(
                            "{at}: kafka.heartbeat_topic and caught_up_means_now together: the opt-in claims now, so the heartbeats would be read for nothing; choose one"
                        ));
                    }
                    if k.topics.contains(h) {
                        return bad(format!(
                            "{at}: kafka.heartbeat_topic {h:?} is also in kafka.topics: heartbeats are not changes"
                        ));
                    }
                    if matches!(s.format, Format::Protobuf) {
                        return bad(format!(
                            "{at}: kafka.heartbeat_topic is read as a Debezium or MongoDB connector's heartbeat; format \"protobuf\" has none"
                        ));
                    }
                }
                if let Some(key) = k.properties.keys().find(|k| is_secret_property(k)) {
                    return bad(format!(
                        "{at}: kafka.properties.{key}: credentials come from the environment \
                         (kafka.properties_env), not the config file"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Which sources feed each model: a source with a fixed `model` feeds that model; one
    /// without (its events name their table or collection) may feed any model.
    pub fn model_sources(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &self.models {
            let feeds = self
                .sources
                .iter()
                .filter(|s| s.model.as_deref().is_none_or(|fixed| fixed == m.name))
                .map(|s| s.name.clone())
                .collect();
            out.insert(m.name.clone(), feeds);
        }
        out
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        let c: Config = toml::from_str(s).map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        let c = parse("").unwrap();
        assert!(matches!(c.store, StoreConfig::Local { .. }));
        assert!(matches!(c.catalog, CatalogConfig::Embedded { .. }));
        assert_eq!(c.ingest, IngestSettings::default());
        assert_eq!(c.dal.cache_mib, 64);
        assert!(c.dal.view_descriptor_sets.is_empty());
    }

    #[test]
    fn dal_table() {
        let c =
            parse("[dal]\ncache_mib = 8\nview_descriptor_sets = ['a.binpb', '/b.binpb']").unwrap();
        assert_eq!(c.dal.cache_bytes(), 8 << 20);
        assert_eq!(
            c.dal.view_descriptor_sets,
            [PathBuf::from("a.binpb"), PathBuf::from("/b.binpb")]
        );
        // the other key keeps its default
        assert_eq!(
            parse("[dal]\ncache_mib = 0")
                .unwrap()
                .dal
                .view_descriptor_sets
                .len(),
            0
        );
        assert_eq!(
            parse("[dal]\nview_descriptor_sets = []")
                .unwrap()
                .dal
                .cache_mib,
            64
        );
        let e = parse("[dal]\ncache_mb = 8").unwrap_err().to_string();
        assert!(e.contains("cache_mb"), "{e}");
        let e = parse("[dal]\ncache_mib = 99999999999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dal.cache_mib"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[ingest]\nbatch_max_event = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_max_event"), "{e}");
        let e = parse(
            "[[models]]\nname='m'\n[[sources]]\nname='s'\nformat='debezium-postgres'\nmodel='x'\n[sources.file]\npath='f'",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("model \"x\" is not in [[models]]"), "{e}");
        let e = parse("[[sources]]\nname='s'\nformat='pgoutput'\n[sources.file]\npath='f'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pgoutput"), "{e}");
        let e = parse("[[sources]]\nname='s'\nformat='json'\n[sources.file]\npath='f'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `json`"), "{e}");
    }

    #[test]
    fn freshness_settings_are_checked_against_the_source_kind() {
        let c = parse(
            "[[sources]]\nname='s'\nformat='mongo-change-stream'\nmax_out_of_order_ms = 5000\ncaught_up_means_now = true\n[sources.file]\npath='f'\nfollow = true",
        )
        .unwrap();
        assert_eq!(c.sources[0].max_out_of_order_ms, 5000);
        assert!(c.sources[0].caught_up_means_now);
        let e = parse(
            "[[sources]]\nname='s'\nformat='pgoutput'\ncaught_up_means_now = true\n[sources.postgres]\nurl_env='U'\nslot='x'\npublication='p'",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("caught_up_means_now does not apply to a postgres source"),
            "{e}"
        );
        let e = parse(
            "[[sources]]\nname='s'\nformat='mongo-change-stream'\ncaught_up_means_now = true\n[sources.file]\npath='f'",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs a followed file"), "{e}");
        let e = parse(
            "[[sources]]\nname='s'\nformat='debezium-postgres'\n[sources.kafka]\nbrokers='b'\ntopics=['t']\nheartbeat_topic='t'",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("heartbeat_topic \"t\" is also in kafka.topics"),
            "{e}"
        );
    }

    /// Credentials are refused in `properties` whatever their case; `properties_env`
    /// names where they come from instead.
    #[test]
    fn credentials_are_refused_in_kafka_properties() {
        let kafka = |props: &str| {
            parse(&format!(
                "[[sources]]\nname='s'\nformat='debezium-postgres'\n[sources.kafka]\nbrokers='b'\ntopics=['t']\n{props}"
            ))
        };
        for key in [
            "SASL.PASSWORD",
            "sasl.password",
            "ssl.key.pem",
            "sasl.jaas.config",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "ssl.keystore.password",
            "Ssl_Key",
        ] {
            let e = kafka(&format!("properties = {{ '{key}' = 'x' }}"))
                .expect_err(key)
                .to_string();
            assert!(e.contains(key) && e.contains("from the environment"), "{e}");
        }
        for key in [
            "sasl.mechanism",
            "sasl.username",
            "ssl.keystore.location",
            "security.protocol",
        ] {
            kafka(&format!("properties = {{ '{key}' = 'x' }}")).expect(key);
        }
        let c = kafka("properties_env = { 'sasl.password' = 'KAFKA_PW' }").unwrap();
        let k = c.sources[0].kafka.as_ref().unwrap();
        assert_eq!(k.properties_env["sasl.password"], "KAFKA_PW");
    }
}
