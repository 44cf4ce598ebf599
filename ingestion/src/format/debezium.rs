//! Debezium change-event envelopes, PostgreSQL ([`DebeziumPostgres`]) and MongoDB
//! ([`DebeziumMongo`]) connectors, as written by Kafka Connect's JSON converter with or
//! without the `{schema, payload}` wrapper.
//!
//! Both read:
//! - **op**: `c` create, `r` snapshot read (a create: the record's first sight), `u` update,
//!   `d` delete. Truncates (`t`), logical messages (`m`), tombstones (null value, the Kafka
//!   compaction marker after a delete) and anything else are rejected with the reason.
//! - **event time**: the source's commit time: `source.ts_us` (or `ts_ns`, or `ts_ms`);
//!   the envelope's own `ts_*` (when the connector processed the event) only if `source`
//!   has none, then the source's commit time if it knows one.
//! - **id and references** from the record's document, with the model's `id_field` and
//!   `references`; fields missing from it are taken from the Kafka key (the primary key for
//!   PostgreSQL, the document's `_id` for MongoDB), so deletes without a row image still
//!   have an id.
//!
//! PostgreSQL: the document is `after` (`before` for deletes); the model is
//! `source.schema` + "." + `source.table`.
//!
//! MongoDB: `after`, `before`, `patch`, `filter` and `updateDescription.updatedFields` are
//! JSON *strings* of extended JSON. The document is `after` (`before` for deletes), overlaid
//! by the fields an update wrote (`updateDescription.updatedFields` from change-stream
//! connectors, `patch` — `$set`, a `$v: 2` diff, or a whole replacement — from oplog ones),
//! then any `_id` still missing from `before`, `filter`, or the key's `id` (a string of
//! extended JSON). The model is `source.db` + "." + `source.collection`.
//!
//! Checks run in this order: tombstone, JSON, envelope, op, model, event time, document,
//! id.
//!
//! Reading the envelope is the dal's [`overseer_dal::builder::debezium`], the module that
//! also folds these events into a record's state: one reading of each event. What is left
//! here is ingestion's: the models of the config, and reasons as rejects.

use serde_json::Value;

use overseer_dal::builder::debezium::{Envelope, KeyDoc};

use super::{Consumer, Decoded, Models, Reject};
use crate::config::{Format, ModelConfig};
use crate::source::SourceEvent;

/// The Debezium PostgreSQL connector's envelope.
#[derive(Debug)]
pub struct DebeziumPostgres {
    models: Models,
}

impl DebeziumPostgres {
    pub fn new(models: Models) -> Self {
        DebeziumPostgres { models }
    }
}

impl Consumer for DebeziumPostgres {
    fn format(&self) -> Format {
        Format::DebeziumPostgres
    }

    fn decode(&self, ev: &SourceEvent) -> Result<Decoded, Reject> {
        let mut env = Envelope::read(&ev.raw)?;
        let model = self.models.resolve(env.postgres_model()?.as_deref())?;
        let event_time_us = env.time(ev.commit_time_us)?;
        let key = KeyDoc::read(ev.key.as_deref());
        let row = Value::Object(env.take_postgres_row(&key)?);
        let (record_id, refs) = id_and_refs(model, &row, &key)?;
        let event_id = env.postgres_event_id(&model.name, &record_id);
        Ok(Decoded {
            model: model.name.clone(),
            record_id,
            op: env.op,
            event_time_us,
            refs,
            event_id,
        })
    }
}

/// The Debezium MongoDB connector's envelope.
#[derive(Debug)]
pub struct DebeziumMongo {
    models: Models,
}

impl DebeziumMongo {
    pub fn new(models: Models) -> Self {
        DebeziumMongo { models }
    }
}

impl Consumer for DebeziumMongo {
    fn format(&self) -> Format {
        Format::DebeziumMongo
    }

    fn decode(&self, ev: &SourceEvent) -> Result<Decoded, Reject> {
        let env = Envelope::read(&ev.raw)?;
        let model = self.models.resolve(env.mongo_model()?.as_deref())?;
        let event_time_us = env.time(ev.commit_time_us)?;
        let key = KeyDoc::read(ev.key.as_deref());
        let doc = env.mongo_document(&key)?;
        let (record_id, refs) = id_and_refs(model, &doc, &key)?;
        let event_id = env.mongo_event_id(&model.name, &record_id);
        Ok(Decoded {
            model: model.name.clone(),
            record_id,
            op: env.op,
            event_time_us,
            refs,
            event_id,
        })
    }
}

/// [`Models::id_and_refs`], with the reject saying what the key offered.
fn id_and_refs(
    model: &ModelConfig,
    doc: &Value,
    key: &KeyDoc,
) -> Result<(String, Vec<(String, String)>), Reject> {
    Models::id_and_refs(model, doc)
        .map_err(|r| Reject::new(format!("{} in the record, and {}", r.0, key.why_not())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use overseer_dal::update::Op;
    use serde_json::json;

    fn models() -> Models {
        Models::new(
            &[
                ModelConfig {
                    name: "public.customers".into(),
                    id_field: "id".into(),
                    references: [("email".to_string(), "email".to_string())].into(),
                },
                ModelConfig {
                    name: "payments.transfers".into(),
                    id_field: "id".into(),
                    references: [("account_id".to_string(), "account_id".to_string())].into(),
                },
                ModelConfig {
                    name: "inventory.customers".into(),
                    id_field: "_id".into(),
                    references: [("email".to_string(), "email".to_string())].into(),
                },
            ],
            None,
        )
    }

    fn event(raw: impl Into<Bytes>, key: Option<&str>) -> SourceEvent {
        SourceEvent {
            raw: raw.into(),
            key: key.map(|k| Bytes::from(k.to_owned())),
            context: None,
            position: "0".into(),
            commit_time_us: None,
            ack: None,
            checkpoint: None,
            lane: 0,
        }
    }

    fn pg(v: &Value, key: Option<&str>) -> Result<Decoded, Reject> {
        DebeziumPostgres::new(models()).decode(&event(v.to_string(), key))
    }

    fn mongo(v: &Value, key: Option<&str>) -> Result<Decoded, Reject> {
        DebeziumMongo::new(models()).decode(&event(v.to_string(), key))
    }

    fn reason(r: Result<Decoded, Reject>) -> String {
        r.expect_err("should be rejected").0
    }

    /// The documentation's PostgreSQL `source` block.
    fn pg_source(ts_us: i64) -> Value {
        json!({"version": "2.7.0.Final", "connector": "postgresql", "name": "PostgreSQL_server",
            "ts_ms": ts_us / 1000, "ts_us": ts_us, "ts_ns": ts_us * 1000, "snapshot": false,
            "db": "postgres", "sequence": "[\"24023119\",\"24023128\"]", "schema": "public",
            "table": "customers", "txId": 555, "lsn": 24023128, "xmin": null})
    }

    /// The create event of the Debezium PostgreSQL documentation, schema included.
    #[test]
    fn pg_documentation_create_with_schema() {
        let v = json!({
            "schema": {"type": "struct", "fields": [
                {"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}],
                 "optional": true, "name": "PostgreSQL_server.inventory.customers.Value", "field": "before"}
            ], "optional": false, "name": "PostgreSQL_server.inventory.customers.Envelope"},
            "payload": {
                "before": null,
                "after": {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
                "source": pg_source(1559033904863123_i64),
                "op": "c", "ts_ms": 1559033904863_i64, "ts_us": 1559033904863841_i64, "ts_ns": 1559033904863841257_i64
            }
        });
        let d = pg(&v, None).unwrap();
        assert_eq!(
            d,
            Decoded {
                model: "public.customers".into(),
                record_id: "1".into(),
                op: Op::Create,
                // source.ts_us (commit), not the envelope's ts_us (processing).
                event_time_us: 1559033904863123_i64,
                refs: vec![("email".into(), "annek@noanswer.org".into())],
                event_id: Some("dbz-pg:00000000000024023128:c:public.customers:1".into()),
            }
        );
    }

    #[test]
    fn pg_update_delete_snapshot_without_wrapper() {
        let mut v = json!({"before": {"id": 1},
            "after": {"id": 1, "first_name": "Anne Marie", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
            "source": pg_source(1559033904863769_i64), "op": "u", "ts_ms": 1465584025523_i64});
        let d = pg(&v, None).unwrap();
        assert_eq!(
            (d.op, d.record_id.as_str(), d.event_time_us),
            (Op::Update, "1", 1559033904863769_i64)
        );

        v["op"] = json!("r");
        assert_eq!(pg(&v, None).unwrap().op, Op::Create);

        let del = json!({"before": {"id": 1}, "after": null, "source": pg_source(1559033904863852_i64),
            "op": "d", "ts_ms": 1465581902461_i64});
        let d = pg(&del, None).unwrap();
        assert_eq!(
            (d.op, d.record_id.as_str(), d.refs.len()),
            (Op::Delete, "1", 0)
        );
    }

    #[test]
    fn pg_time_precedence() {
        let mut src = pg_source(1_000_000_123);
        src.as_object_mut().unwrap().remove("ts_us");
        let v = json!({"after": {"id": 1}, "source": src, "op": "c", "ts_ms": 5});
        assert_eq!(pg(&v, None).unwrap().event_time_us, 1_000_000_123); // ts_ns / 1000
        let mut src = pg_source(0);
        let s = src.as_object_mut().unwrap();
        s.remove("ts_us");
        s.remove("ts_ns");
        s.insert("ts_ms".into(), json!(1559033904863_i64));
        let v = json!({"after": {"id": 1}, "source": src, "op": "c", "ts_ms": 5});
        assert_eq!(pg(&v, None).unwrap().event_time_us, 1559033904863000_i64);
        // The envelope's ts_ms only when source has no time at all.
        let v = json!({"after": {"id": 1}, "source": {"schema": "public", "table": "customers"},
            "op": "c", "ts_ms": 7});
        assert_eq!(pg(&v, None).unwrap().event_time_us, 7000);
        let v = json!({"after": {"id": 1}, "source": {"schema": "public", "table": "customers"}, "op": "c"});
        assert_eq!(
            reason(pg(&v, None)),
            "no event time: neither source.ts_ms nor ts_ms is present"
        );
        let v = json!({"after": {"id": 1}, "source": {"schema": "public", "table": "customers", "ts_ms": "soon"}, "op": "c"});
        assert_eq!(
            reason(pg(&v, None)),
            "no event time: source.ts_ms is not an integer (found a string)"
        );
    }

    #[test]
    fn pg_id_from_the_kafka_key() {
        // REPLICA IDENTITY NOTHING-like delete: no before image; the key has the primary key.
        let del = json!({"before": null, "after": null, "source": pg_source(1), "op": "d"});
        let key = r#"{"schema": {"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}], "optional": false, "name": "PostgreSQL_server.public.customers.Key"}, "payload": {"id": 1}}"#;
        assert_eq!(pg(&del, Some(key)).unwrap().record_id, "1");
        assert_eq!(pg(&del, Some(r#"{"id": "t-9"}"#)).unwrap().record_id, "t-9");
        assert_eq!(
            reason(pg(&del, None)),
            "no record id: field \"id\" missing, null or not a scalar in the record, and there is no Kafka key"
        );
        assert_eq!(
            reason(pg(&del, Some(r#"{"other": 1}"#))),
            "no record id: field \"id\" missing, null or not a scalar in the record, and the Kafka key does not have it either"
        );
        assert!(reason(pg(&del, Some("{nope"))).ends_with(
            "in the record, and the Kafka key is not JSON: key must be a string at line 1 column 2"
        ));
        // A null column counts as missing.
        let del = json!({"before": {"id": null}, "after": null, "source": pg_source(1), "op": "d"});
        assert_eq!(pg(&del, Some(r#"{"id": 5}"#)).unwrap().record_id, "5");
        // The row's own id wins over the key's.
        let c = json!({"after": {"id": 2}, "source": pg_source(1), "op": "c"});
        assert_eq!(pg(&c, Some(r#"{"id": 1}"#)).unwrap().record_id, "2");
    }

    #[test]
    fn pg_rejects() {
        let src = pg_source(1);
        let d = DebeziumPostgres::new(models());
        assert_eq!(
            reason(d.decode(&event("", None))),
            "tombstone (empty value): Kafka's compaction marker after a delete, not a change"
        );
        assert!(reason(d.decode(&event("null", None))).starts_with("tombstone (null value)"));
        assert!(
            reason(pg(&json!({"schema": {}, "payload": null}), None))
                .starts_with("tombstone (null payload)")
        );
        assert_eq!(
            reason(d.decode(&event("{\"op\": c}", None))),
            "invalid JSON at line 1 column 8: expected value"
        );
        let truncate = json!({"schema": {}, "payload": {"source": src, "op": "t", "ts_ms": 1}});
        assert!(reason(pg(&truncate, None)).starts_with("truncate event (op \"t\")"));
        let msg =
            json!({"source": src, "op": "m", "message": {"prefix": "foo", "content": "Ymfy"}});
        assert!(reason(pg(&msg, None)).starts_with("logical decoding message (op \"m\")"));
        assert_eq!(
            reason(pg(
                &json!({"after": {"id": 1}, "source": src, "op": "x"}),
                None
            )),
            "unknown op \"x\""
        );
        assert_eq!(
            reason(pg(
                &json!({"after": {"id": 1}, "source": src, "op": 1}),
                None
            )),
            "`op` is not a string (found number 1)"
        );
        assert_eq!(
            reason(pg(&json!({"after": {"id": 1}}), None)),
            "not a Debezium envelope: no `op`"
        );
        assert_eq!(
            reason(pg(&json!({"after": null, "source": src, "op": "u"}), None)),
            "no row image: `after` is missing or null in an op \"u\" event"
        );
        let mut other = src.clone();
        other["table"] = json!("nope");
        assert_eq!(
            reason(pg(
                &json!({"after": {"id": 1}, "source": other, "op": "c"}),
                None
            )),
            "model \"public.nope\" is not configured in [[models]]"
        );
    }

    fn mongo_source() -> Value {
        json!({"version": "2.7.0.Final", "connector": "mongodb", "name": "fulfillment",
            "ts_ms": 1558965508000_i64, "snapshot": false, "db": "inventory", "rs": "rs0",
            "collection": "customers", "ord": 31, "h": 1546547425148721999_i64})
    }

    /// The create event of the Debezium MongoDB documentation.
    #[test]
    fn mongo_documentation_create() {
        let v = json!({"schema": {"type": "struct", "fields": [], "optional": false,
                "name": "dbserver1.inventory.customers.Envelope"},
            "payload": {
                "after": "{\"_id\" : {\"$numberLong\" : \"1004\"},\"first_name\" : \"Anne\",\"last_name\" : \"Kretchmar\",\"email\" : \"annek@noanswer.org\"}",
                "source": mongo_source(), "op": "c", "ts_ms": 1558965515240_i64}});
        let d = mongo(&v, None).unwrap();
        assert_eq!(
            d,
            Decoded {
                model: "inventory.customers".into(),
                record_id: "1004".into(),
                op: Op::Create,
                event_time_us: 1558965508000000_i64,
                refs: vec![("email".into(), "annek@noanswer.org".into())],
                event_id: Some(
                    "dbz-mongo:00000001558965508000:0000000031:c:inventory.customers:1004".into()
                ),
            }
        );
    }

    /// Change-stream capture mode: `updateDescription.updatedFields` is a string.
    #[test]
    fn mongo_documentation_update_and_delete() {
        let upd = json!({"op": "u", "ts_ms": 1465491461815_i64,
            "before": "{\"_id\": {\"$numberLong\": \"1004\"},\"first_name\": \"unknown\",\"email\": \"annek@noanswer.org\"}",
            "after": "{\"_id\": {\"$numberLong\": \"1004\"},\"first_name\": \"Anne Marie\",\"email\": \"annek@noanswer.org\"}",
            "updateDescription": {"removedFields": null, "updatedFields": "{\"email\": \"anne@new.org\"}", "truncatedArrays": null},
            "source": mongo_source()});
        let d = mongo(&upd, None).unwrap();
        assert_eq!((d.op, d.record_id.as_str()), (Op::Update, "1004"));
        // The fields this change wrote win over the looked-up `after`.
        assert_eq!(d.refs, vec![("email".into(), "anne@new.org".into())]);

        // Default capture mode: no after; the id comes from the key.
        let upd = json!({"op": "u", "updateDescription": {"removedFields": ["x"],
            "updatedFields": "{\"email\": \"b@c.d\"}"}, "source": mongo_source()});
        let key = r#"{"schema": {"type": "struct", "name": "fulfillment.inventory.customers.Key", "optional": false, "fields": [{"field": "id", "type": "string", "optional": false}]}, "payload": {"id": "1004"}}"#;
        let d = mongo(&upd, Some(key)).unwrap();
        assert_eq!((d.record_id.as_str(), d.refs.len()), ("1004", 1));
        assert!(reason(mongo(&upd, None)).starts_with("no record id"));

        let del = json!({"op": "d", "ts_ms": 1465495462115_i64,
            "before": "{\"_id\": {\"$numberLong\": \"1004\"},\"first_name\": \"Anne Marie\",\"email\": \"annek@noanswer.org\"}",
            "source": mongo_source()});
        let d = mongo(&del, None).unwrap();
        assert_eq!(
            (d.op, d.record_id.as_str(), d.refs.len()),
            (Op::Delete, "1004", 1)
        );
    }

    /// Oplog capture mode (older connectors): `patch` and `filter` strings.
    #[test]
    fn mongo_legacy_patch_and_filter() {
        let upd = json!({"op": "u", "patch": "{\"$set\" : {\"email\" : \"x@y.z\"}}",
            "filter": "{\"_id\" : {\"$oid\" : \"596e275826f08b2730779e1f\"}}", "source": mongo_source()});
        let d = mongo(&upd, None).unwrap();
        assert_eq!(d.record_id, "596e275826f08b2730779e1f");
        assert_eq!(d.refs, vec![("email".into(), "x@y.z".into())]);
        let upd = json!({"op": "u", "patch": "{\"$v\": 2, \"diff\": {\"u\": {\"email\": \"d@i.ff\"}}}",
            "filter": "{\"_id\" : 7}", "source": mongo_source()});
        assert_eq!(
            mongo(&upd, None).unwrap().refs,
            vec![("email".into(), "d@i.ff".into())]
        );
        let del = json!({"op": "d", "filter": "{\"_id\" : \"abc\"}", "source": mongo_source()});
        assert_eq!(mongo(&del, None).unwrap().record_id, "abc");
    }

    /// Key ids are extended JSON in a string: `"1234"`, `"\"1234\""`, `{"$oid": ..}`, UUIDs.
    #[test]
    fn mongo_key_ids() {
        let del = json!({"op": "d", "source": mongo_source()});
        for (key_id, want) in [
            ("1234", "1234"),
            ("\"1234\"", "1234"),
            (
                "{\"$oid\" : \"596e275826f08b2730779e1f\"}",
                "596e275826f08b2730779e1f",
            ),
            (
                "{\"$binary\" : \"ASNFZ4mrze8BI0VniavN7w==\", \"$type\" : \"04\"}",
                "01234567-89ab-cdef-0123-456789abcdef",
            ),
            ("not json", "not json"),
        ] {
            let key = json!({"id": key_id}).to_string();
            assert_eq!(mongo(&del, Some(&key)).unwrap().record_id, want, "{key_id}");
        }
        let key = json!({"id": "{\"hi\" : \"kafka\"}"}).to_string();
        assert!(reason(mongo(&del, Some(&key))).starts_with("no record id"));
    }

    #[test]
    fn mongo_rejects() {
        let v = json!({"op": "c", "after": "{\"_id\": 1", "source": mongo_source()});
        assert_eq!(
            reason(mongo(&v, None)),
            "`after` is not valid extended JSON at line 1 column 9: EOF while parsing an object"
        );
        let v = json!({"op": "c", "after": 5, "source": mongo_source()});
        assert_eq!(
            reason(mongo(&v, None)),
            "`after` is not a string of extended JSON (found number 5)"
        );
        let v = json!({"op": "c", "after": "[1]", "source": mongo_source()});
        assert_eq!(
            reason(mongo(&v, None)),
            "`after` does not hold a document (found an array)"
        );
        let v = json!({"op": "u", "updateDescription": {"updatedFields": "{"}, "source": mongo_source()});
        assert!(
            reason(mongo(&v, None))
                .starts_with("updateDescription.`updatedFields` is not valid extended JSON")
        );
        let v = json!({"op": "t", "source": mongo_source()});
        assert!(reason(mongo(&v, None)).starts_with("truncate event"));
    }

    #[test]
    fn never_panics_on_truncations() {
        let v = json!({"schema": {}, "payload": {"before": null, "after": {"id": 1, "email": "a"},
            "source": pg_source(5), "op": "c"}})
        .to_string();
        for n in 0..v.len() {
            let _ =
                DebeziumPostgres::new(models()).decode(&event(v[..n].to_owned(), Some(&v[..n])));
            let _ = DebeziumMongo::new(models()).decode(&event(v[..n].to_owned(), Some(&v[..n])));
        }
    }
}
