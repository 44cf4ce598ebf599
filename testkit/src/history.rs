//! History for tests: update records of real formats, written and indexed as ingestion does.
//!
//! ```text
//! let mut ch = Changes::new("ledger").refs(&["transfer_id"]);
//! let recs = vec![ch.insert("ledger.entries", "e1", t, json!({"transfer_id": "T1", ..}))];
//! write_segment(&*store, &*catalog, recs, vec![]).await?;
//! ```
//!
//! Documents become MongoDB change-stream events (extended JSON), rows become Debezium
//! PostgreSQL envelopes; positions are zero-padded counters, so they sort like the real ones.

use serde_json::{Value, json};

use overseer_dal::catalog::Catalog;
use overseer_dal::keys::segment_key;
use overseer_dal::segment::SegmentBuilder;
use overseer_dal::store::ObjectStore;
use overseer_dal::update::{
    CommitBatch, IndexEntry, Micros, Op, Progress, Reference, UpdateRecord,
};
use overseer_dal::{Error, Result};

/// Builds the update records of one source.
#[derive(Clone, Debug)]
pub struct Changes {
    source: String,
    next: u64,
    /// Fields whose values become references (the model config's `references`, with the
    /// reference named like its field).
    refs: Vec<String>,
}

impl Changes {
    pub fn new(source: &str) -> Self {
        Changes {
            source: source.to_owned(),
            next: 0,
            refs: Vec::new(),
        }
    }

    /// Extract these fields as references wherever an event carries them.
    pub fn refs(mut self, fields: &[&str]) -> Self {
        self.refs = fields.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        model: &str,
        id: &str,
        t: Micros,
        op: Op,
        format: &str,
        raw: &Value,
        doc: Option<&Value>,
    ) -> UpdateRecord {
        self.next += 1;
        let refs = doc
            .map(|d| {
                self.refs
                    .iter()
                    .filter_map(|f| {
                        let v = d.get(f)?;
                        let value = match v {
                            Value::String(s) => s.clone(),
                            Value::Null => return None,
                            other => other.to_string(),
                        };
                        Some(Reference {
                            name: f.clone(),
                            value,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        UpdateRecord {
            source: self.source.clone(),
            position: format!("{:016}", self.next),
            model: model.to_owned(),
            record_id: id.to_owned(),
            op: op as i32,
            event_time_us: t,
            format: format.to_owned(),
            refs,
            raw: serde_json::to_vec(raw).expect("JSON").into(),
            ingest_time_us: t,
            ..Default::default()
        }
    }

    /// A MongoDB change-stream `insert` of `doc` (its `_id` set to `id` if absent).
    pub fn insert(&mut self, model: &str, id: &str, t: Micros, mut doc: Value) -> UpdateRecord {
        if let Value::Object(m) = &mut doc {
            m.entry("_id").or_insert_with(|| json!(id));
        }
        let ev =
            json!({"operationType": "insert", "documentKey": {"_id": id}, "fullDocument": doc});
        self.record(
            model,
            id,
            t,
            Op::Create,
            "mongo-change-stream",
            &ev,
            Some(&doc),
        )
    }

    /// A MongoDB change-stream `update` setting `set` (dotted paths allowed) and removing
    /// `unset`.
    pub fn update(
        &mut self,
        model: &str,
        id: &str,
        t: Micros,
        set: Value,
        unset: &[&str],
    ) -> UpdateRecord {
        let ev = json!({"operationType": "update", "documentKey": {"_id": id},
                        "updateDescription": {"updatedFields": set, "removedFields": unset}});
        self.record(
            model,
            id,
            t,
            Op::Update,
            "mongo-change-stream",
            &ev,
            Some(&set),
        )
    }

    /// A MongoDB change-stream `delete`.
    pub fn delete(&mut self, model: &str, id: &str, t: Micros) -> UpdateRecord {
        let ev = json!({"operationType": "delete", "documentKey": {"_id": id}});
        self.record(model, id, t, Op::Delete, "mongo-change-stream", &ev, None)
    }

    /// A Debezium PostgreSQL row change: `op` is `c`, `r`, `u` or `d`; `row` the new image
    /// (the old one for `d`).
    pub fn row(&mut self, model: &str, id: &str, t: Micros, op: &str, row: Value) -> UpdateRecord {
        let (kind, ev) = match op {
            "d" => (
                Op::Delete,
                json!({"op": "d", "before": row, "after": null, "ts_ms": t / 1000}),
            ),
            "c" | "r" => (
                Op::Create,
                json!({"op": op, "before": null, "after": row, "ts_ms": t / 1000}),
            ),
            _ => (
                Op::Update,
                json!({"op": op, "before": null, "after": row, "ts_ms": t / 1000}),
            ),
        };
        self.record(model, id, t, kind, "debezium-postgres", &ev, Some(&row))
    }
}

/// Writes `records` as one segment and indexes them in one commit (with `progress`), as
/// ingestion does for a batch. Returns the index entries (in `records` order).
pub async fn write_segment(
    store: &dyn ObjectStore,
    catalog: &dyn Catalog,
    records: Vec<UpdateRecord>,
    progress: Vec<Progress>,
) -> Result<Vec<IndexEntry>> {
    let seq = catalog.reserve_segment().await?;
    let mut seg = SegmentBuilder::new(seq, 0);
    let entries: Vec<IndexEntry> = records
        .iter()
        .map(|r| IndexEntry::from_record(r, seg.push(r)))
        .collect();
    store
        .put_create(&segment_key(seq), seg.finish(vec![]))
        .await?;
    let fresh = catalog
        .commit(CommitBatch {
            segment_seq: Some(seq),
            entries: entries.clone(),
            progress,
            quarantined: 0,
            now_us: overseer_dal::update::now_us(),
        })
        .await?;
    if fresh.iter().any(|f| !f) {
        return Err(Error::Invalid {
            what: "test history".into(),
            message: "a record's (source, position) was already indexed".into(),
        });
    }
    Ok(entries)
}
