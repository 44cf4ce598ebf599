//! Native MongoDB change-stream events, as extended JSON ([`ChangeStreamJson`]) or raw BSON
//! ([`ChangeStreamBson`]). The BSON reader converts the document to extended JSON and both
//! share one reading of the event ([`decode_change_event`]), so the two formats can never
//! disagree about an event.
//!
//! What is read from an event:
//! - **op**: `operationType` insert → create, update → update, replace → replace, delete →
//!   delete; other change-stream events (drop, rename, invalidate, ...) are not record
//!   changes and are rejected. Without `operationType` (hand-written events such as the
//!   Overseer post's Toy example) the op is inferred: `updateDescription` → update,
//!   `fullDocument` alone → create.
//! - **model**: `ns.db` + "." + `ns.coll` (unless the source has a fixed model).
//! - **event time**: `wallTime` (a `$date`, millisecond precision) when present, else
//!   `clusterTime` (a `$timestamp`, or a plain number of seconds), else the source's commit
//!   time if it knows one.
//! - **id and references**: read with the model's `id_field` / `references` from the
//!   record's document: `fullDocument` (`fullDocumentBeforeChange` for deletes), overlaid by
//!   `updateDescription.updatedFields` (the fields this very change wrote), overlaid by
//!   `documentKey` (authoritative for `_id` and shard keys). Without `documentKey`, a
//!   top-level `_id` that is a plain id (not a resume token such as `{"_data": ..}`) stands
//!   for the document's `_id`.
//!
//! Checks run in this order, so the reason of a bad event is predictable: bytes (JSON/BSON),
//! shape (a document), op, model, event time, field types, id.
//!
//! Reading the event is the dal's [`overseer_dal::builder::mongo`], the module that also
//! folds these events into a record's state: one reading of each event. What is left here
//! is ingestion's: the models of the config, and reasons as rejects.

use serde_json::Value;

use overseer_dal::builder::mongo::{change_op, change_time, namespace, record_document};
use overseer_dal::builder::{describe, parse_json};
use overseer_dal::update::Micros;

use super::{Consumer, Decoded, Models, Reject};
use crate::config::Format;
use crate::source::SourceEvent;

/// Change-stream events as (relaxed or canonical) extended JSON, one per event.
#[derive(Debug)]
pub struct ChangeStreamJson {
    models: Models,
}

impl ChangeStreamJson {
    pub fn new(models: Models) -> Self {
        ChangeStreamJson { models }
    }
}

impl Consumer for ChangeStreamJson {
    fn format(&self) -> Format {
        Format::MongoChangeStream
    }

    fn decode(&self, ev: &SourceEvent) -> Result<Decoded, Reject> {
        if ev.raw.iter().all(u8::is_ascii_whitespace) {
            return Err(Reject::new("empty event"));
        }
        let v = parse_json(&ev.raw)?;
        decode_change_event(&self.models, &v, ev.commit_time_us)
    }
}

/// Change-stream events as raw BSON documents, one per event.
#[derive(Debug)]
pub struct ChangeStreamBson {
    models: Models,
}

impl ChangeStreamBson {
    pub fn new(models: Models) -> Self {
        ChangeStreamBson { models }
    }
}

impl Consumer for ChangeStreamBson {
    fn format(&self) -> Format {
        Format::MongoChangeStreamBson
    }

    fn decode(&self, ev: &SourceEvent) -> Result<Decoded, Reject> {
        let v = bson_to_extjson(&ev.raw).map_err(|e| Reject::new(format!("invalid BSON: {e}")))?;
        decode_change_event(&self.models, &v, ev.commit_time_us)
    }
}

/// Reads one change-stream event (extended JSON) into an update's metadata.
pub(super) fn decode_change_event(
    models: &Models,
    ev: &Value,
    fallback_time_us: Option<Micros>,
) -> Result<Decoded, Reject> {
    let obj = ev.as_object().ok_or_else(|| {
        Reject::new(format!(
            "change event is not a JSON object (found {})",
            describe(ev)
        ))
    })?;
    let op = change_op(obj)?;

    let model = match namespace(obj) {
        Ok(name) => models.resolve(name.as_deref())?,
        // A malformed `ns` only matters when the model has to come from it.
        Err(why) => models.resolve(None).map_err(|_| Reject::new(why))?,
    };

    let event_time_us = match change_time(obj)? {
        Some(t) => t,
        None => fallback_time_us.ok_or_else(|| {
            Reject::new("no event time: neither wallTime nor clusterTime is present")
        })?,
    };

    let doc = record_document(obj, op)?;
    let (record_id, refs) = Models::id_and_refs(model, &doc)?;
    // The resume token names the change uniquely within the deployment.
    let event_id = obj
        .get("_id")
        .and_then(|t| t.get("_data"))
        .and_then(Value::as_str)
        .map(|t| format!("rt:{t}"));
    Ok(Decoded {
        model: model.name.clone(),
        record_id,
        op,
        event_time_us,
        refs,
        event_id,
    })
}

/// Raw BSON as extended JSON: the data access layer's converter, so ingestion and the
/// builders read a BSON event the same way (int64 as `$numberLong`, UUIDs as `$uuid`).
pub(super) use overseer_dal::builder::mongo::bson_to_extjson;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use bson::{Bson, doc, oid::ObjectId, spec::BinarySubtype};
    use bytes::Bytes;
    use overseer_dal::update::Op;
    use serde_json::json;

    fn models(fixed: Option<&str>) -> Models {
        Models::new(
            &[
                ModelConfig {
                    name: "ledger.entries".into(),
                    id_field: "_id".into(),
                    references: [("transfer_id".to_string(), "transfer_id".to_string())].into(),
                },
                ModelConfig {
                    name: "test.toys".into(),
                    id_field: "_id".into(),
                    references: [("kind".to_string(), "type".to_string())].into(),
                },
            ],
            fixed.map(str::to_owned),
        )
    }

    fn event(raw: impl Into<Bytes>) -> SourceEvent {
        SourceEvent {
            raw: raw.into(),
            key: None,
            context: None,
            position: "0".into(),
            commit_time_us: None,
            ack: None,
            checkpoint: None,
            lane: 0,
        }
    }

    fn json_decode(fixed: Option<&str>, v: &Value) -> Result<Decoded, Reject> {
        ChangeStreamJson::new(models(fixed)).decode(&event(v.to_string()))
    }

    fn reason(r: Result<Decoded, Reject>) -> String {
        r.expect_err("should be rejected").0
    }

    #[test]
    fn relaxed_insert_with_wall_time() {
        let v = json!({
            "_id": {"_data": "8265E1F1C0000000012B022C0100296E5A1004"},
            "operationType": "insert",
            "clusterTime": {"$timestamp": {"t": 1709294400, "i": 1}},
            "wallTime": {"$date": "2024-03-01T12:00:00.123Z"},
            "ns": {"db": "ledger", "coll": "entries"},
            "documentKey": {"_id": {"$oid": "65e1f1c0a1b2c3d4e5f60001"}},
            "fullDocument": {"_id": {"$oid": "65e1f1c0a1b2c3d4e5f60001"}, "transfer_id": "t-1001",
                "amount_minor": 50000000, "decimals": 8}
        });
        let d = json_decode(None, &v).unwrap();
        assert_eq!(
            d,
            Decoded {
                model: "ledger.entries".into(),
                record_id: "65e1f1c0a1b2c3d4e5f60001".into(),
                op: Op::Create,
                event_time_us: 1_709_294_400_123_000,
                refs: vec![("transfer_id".into(), "t-1001".into())],
                event_id: Some("rt:8265E1F1C0000000012B022C0100296E5A1004".into()),
            }
        );
    }

    #[test]
    fn canonical_update_refs_from_updated_fields_and_cluster_time() {
        let v = json!({
            "_id": {"_data": "82"},
            "operationType": "update",
            "clusterTime": {"$timestamp": {"t": {"$numberLong": "x"}, "i": 1}},
            "wallTime": {"$date": {"$numberLong": "1709294401500"}},
            "ns": {"db": "ledger", "coll": "entries"},
            "documentKey": {"_id": {"$oid": "65e1f1c0a1b2c3d4e5f60002"}},
            "updateDescription": {"updatedFields": {"transfer_id": "t-1002",
                "amount_minor": {"$numberLong": "7"}}, "removedFields": []}
        });
        let d = json_decode(None, &v).unwrap();
        assert_eq!(d.op, Op::Update);
        assert_eq!(d.event_time_us, 1_709_294_401_500_000);
        assert_eq!(d.record_id, "65e1f1c0a1b2c3d4e5f60002");
        assert_eq!(d.refs, vec![("transfer_id".into(), "t-1002".into())]);

        // Only clusterTime: second precision.
        let mut v2 = v.clone();
        v2.as_object_mut().unwrap().remove("wallTime");
        v2["clusterTime"] = json!({"$timestamp": {"t": 1709294402, "i": 3}});
        assert_eq!(
            json_decode(None, &v2).unwrap().event_time_us,
            1_709_294_402_000_000
        );
    }

    #[test]
    fn replace_and_delete() {
        let v = json!({"operationType": "replace", "ns": {"db": "ledger", "coll": "entries"},
            "clusterTime": 1709294403, "documentKey": {"_id": "e-3"},
            "fullDocument": {"_id": "e-3", "transfer_id": {"$oid": "65e1f1c0a1b2c3d4e5f6ffff"}}});
        let d = json_decode(None, &v).unwrap();
        assert_eq!((d.op, d.record_id.as_str()), (Op::Replace, "e-3"));
        assert_eq!(
            d.refs,
            vec![("transfer_id".into(), "65e1f1c0a1b2c3d4e5f6ffff".into())]
        );

        let v = json!({"operationType": "delete", "ns": {"db": "ledger", "coll": "entries"},
            "clusterTime": 1709294404, "documentKey": {"_id": "e-3"}});
        let d = json_decode(None, &v).unwrap();
        assert_eq!(
            (d.op, d.record_id.as_str(), d.refs.len()),
            (Op::Delete, "e-3", 0)
        );

        // With a pre-image, a delete still knows its references.
        let v = json!({"operationType": "delete", "ns": {"db": "ledger", "coll": "entries"},
            "clusterTime": 1709294404, "documentKey": {"_id": "e-3"},
            "fullDocumentBeforeChange": {"_id": "e-3", "transfer_id": "t-9"}});
        assert_eq!(
            json_decode(None, &v).unwrap().refs,
            vec![("transfer_id".into(), "t-9".into())]
        );
    }

    /// The Toy pair from the Overseer post: no operationType, no documentKey, no ns, and
    /// clusterTime as a plain number of seconds.
    #[test]
    fn overseer_toy_example() {
        let first = json!({"_id": 1, "fullDocument": {"type": "watergun", "color": "blue"},
            "clusterTime": 1658224073});
        let second = json!({"_id": 1, "updateDescription": {"updatedFields": {"type": "balloon"}},
            "clusterTime": 1658224074});
        let a = json_decode(Some("test.toys"), &first).unwrap();
        let b = json_decode(Some("test.toys"), &second).unwrap();
        assert_eq!(
            a,
            Decoded {
                model: "test.toys".into(),
                record_id: "1".into(),
                op: Op::Create,
                event_time_us: 1_658_224_073_000_000,
                refs: vec![("kind".into(), "watergun".into())],
                event_id: None,
            }
        );
        assert_eq!((b.op, b.record_id.as_str()), (Op::Update, "1"));
        assert_eq!(b.event_time_us, 1_658_224_074_000_000);
        assert_eq!(b.refs, vec![("kind".into(), "balloon".into())]);
        // Without a fixed model the event names none.
        assert!(reason(json_decode(None, &first)).contains("no `model` configured"));
        // A resume token is never an id.
        let tok =
            json!({"_id": {"_data": "8262D6"}, "fullDocument": {"type": "x"}, "clusterTime": 1});
        assert!(reason(json_decode(Some("test.toys"), &tok)).starts_with("no record id"));
    }

    #[test]
    fn rejects_say_why() {
        let ns = json!({"db": "ledger", "coll": "entries"});
        let base = |op: Value| {
            json!({"operationType": op, "ns": ns, "clusterTime": 1,
            "documentKey": {"_id": "e"}})
        };
        assert_eq!(
            reason(json_decode(None, &base(json!("drop")))),
            "unsupported operationType \"drop\": not a change to one document"
        );
        assert_eq!(
            reason(json_decode(None, &base(json!("x")))),
            "unknown operationType \"x\""
        );
        assert_eq!(
            reason(json_decode(None, &base(json!(42)))),
            "operationType is not a string (found number 42)"
        );
        let m = ChangeStreamJson::new(models(None));
        assert_eq!(
            reason(m.decode(&event(r#"{"operationType": insert}"#))),
            "invalid JSON at line 1 column 19: expected value"
        );
        assert_eq!(
            reason(m.decode(&event(r#"{"operationType": "insert""#))),
            "invalid JSON at line 1 column 26: EOF while parsing an object"
        );
        assert_eq!(reason(m.decode(&event("  "))), "empty event");
        assert_eq!(
            reason(m.decode(&event("[1]"))),
            "change event is not a JSON object (found an array)"
        );
        let mut v = base(json!("insert"));
        v.as_object_mut().unwrap().remove("clusterTime");
        assert_eq!(
            reason(json_decode(None, &v)),
            "no event time: neither wallTime nor clusterTime is present"
        );
        v["wallTime"] = json!({"$date": "yesterday"});
        assert!(reason(json_decode(None, &v)).starts_with(
            "no event time: wallTime {\"$date\":\"yesterday\"} is not a valid ISO-8601 date"
        ));
        let mut v = base(json!("insert"));
        v["fullDocument"] = json!("oops");
        assert_eq!(
            reason(json_decode(None, &v)),
            "fullDocument is not a document (found a string)"
        );
        let mut v = base(json!("update"));
        v["updateDescription"] = json!({"updatedFields": [1]});
        assert_eq!(
            reason(json_decode(None, &v)),
            "updateDescription.updatedFields is not a document (found an array)"
        );
        let mut v = base(json!("insert"));
        v["documentKey"] = json!({"_id": [1, 2]});
        assert_eq!(
            reason(json_decode(None, &v)),
            "no record id: field \"_id\" missing, null or not a scalar"
        );
        let mut v = base(json!("insert"));
        v["ns"] = json!({"db": "other", "coll": "things"});
        assert_eq!(
            reason(json_decode(None, &v)),
            "model \"other.things\" is not configured in [[models]]"
        );
        v["ns"] = json!("ledger.entries");
        assert_eq!(
            reason(json_decode(None, &v)),
            "ns is not a document (found a string)"
        );
        // ...which does not matter when the source fixes the model.
        assert!(json_decode(Some("ledger.entries"), &v).is_ok());
    }

    #[test]
    fn source_commit_time_is_the_fallback() {
        let v = json!({"operationType": "insert", "ns": {"db": "ledger", "coll": "entries"},
            "documentKey": {"_id": "e"}});
        let mut ev = event(v.to_string());
        ev.commit_time_us = Some(42);
        let d = ChangeStreamJson::new(models(None)).decode(&ev).unwrap();
        assert_eq!(d.event_time_us, 42);
    }

    #[test]
    fn uuid_ids_read_as_text() {
        // v2 and legacy `$binary` forms of subtype 4.
        let u = "ASNFZ4mrze8BI0VniavN7w==";
        for id in [
            json!({"$binary": {"base64": u, "subType": "04"}}),
            json!({"$binary": u, "$type": "04"}),
        ] {
            let v = json!({"operationType": "delete", "ns": {"db": "ledger", "coll": "entries"},
                "clusterTime": 1, "documentKey": {"_id": id}});
            assert_eq!(
                json_decode(None, &v).unwrap().record_id,
                "01234567-89ab-cdef-0123-456789abcdef"
            );
        }
    }

    fn bson_bytes(d: &bson::Document) -> Vec<u8> {
        let mut out = Vec::new();
        d.to_writer(&mut out).unwrap();
        out
    }

    /// A change event built as the server sends it, as raw BSON.
    #[test]
    fn bson_change_stream_event() {
        let oid = ObjectId::parse_str("65e1f1c0a1b2c3d4e5f60001").unwrap();
        let d = doc! {
            "_id": {"_data": "8265E1F1C0000000012B022C0100296E5A1004"},
            "operationType": "insert",
            "clusterTime": Bson::Timestamp(bson::Timestamp { time: 1709294400, increment: 1 }),
            "wallTime": bson::DateTime::from_millis(1_709_294_400_123),
            "ns": {"db": "ledger", "coll": "entries"},
            "documentKey": {"_id": oid},
            "fullDocument": {
                "_id": oid,
                "transfer_id": "t-1001",
                "amount_minor": 50_000_000_i64,
                "decimals": 8_i32,
                "price": bson::Decimal128::from_bytes([0; 16]),
                "raw": bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
                "tags": ["a", 1.5, Bson::Null],
            },
        };
        let consumer = ChangeStreamBson::new(models(None));
        assert_eq!(consumer.format(), Format::MongoChangeStreamBson);
        let got = consumer.decode(&event(bson_bytes(&d))).unwrap();
        assert_eq!(
            got,
            Decoded {
                model: "ledger.entries".into(),
                record_id: "65e1f1c0a1b2c3d4e5f60001".into(),
                op: Op::Create,
                event_time_us: 1_709_294_400_123_000,
                refs: vec![("transfer_id".into(), "t-1001".into())],
                event_id: Some("rt:8265E1F1C0000000012B022C0100296E5A1004".into()),
            }
        );
        // Same event as extended JSON: same reading.
        let ext = bson_to_extjson(&bson_bytes(&d)).unwrap();
        assert_eq!(
            ext["wallTime"],
            json!({"$date": {"$numberLong": "1709294400123"}})
        );
        assert_eq!(
            ext["fullDocument"]["raw"],
            json!({"$binary": {"base64": "AQI=", "subType": "00"}})
        );
        assert_eq!(json_decode(None, &ext).unwrap(), got);

        // UUID ids.
        let u = bson::Binary {
            subtype: BinarySubtype::Uuid,
            bytes: (0u8..16).collect(),
        };
        let d = doc! {"operationType": "delete", "ns": {"db": "ledger", "coll": "entries"},
        "clusterTime": Bson::Timestamp(bson::Timestamp { time: 5, increment: 0 }),
        "documentKey": {"_id": u}};
        let got = consumer.decode(&event(bson_bytes(&d))).unwrap();
        assert_eq!(got.record_id, "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(got.event_time_us, 5_000_000);
    }

    #[test]
    fn invalid_bson_is_rejected_never_panics() {
        let consumer = ChangeStreamBson::new(models(None));
        let good = bson_bytes(
            &doc! {"operationType": "delete", "ns": {"db": "ledger", "coll": "entries"},
            "clusterTime": 1_i64, "documentKey": {"_id": "e"}, "x": {"y": [1, {"z": "w"}]}},
        );
        assert!(consumer.decode(&event(good.clone())).is_ok());
        let r = reason(consumer.decode(&event(&b"{\"json\": 1}"[..])));
        assert!(r.starts_with("invalid BSON: "), "{r}");
        assert!(reason(consumer.decode(&event(Bytes::new()))).starts_with("invalid BSON: "));
        // Every truncation and every single-byte corruption: a reject or a decode, no panic.
        for n in 0..good.len() {
            let _ = consumer.decode(&event(good[..n].to_vec()));
            for b in [0x00, 0x01, 0x03, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[n] = b;
                let _ = consumer.decode(&event(bad));
            }
        }
        // Deep nesting is refused, not recursed into.
        let mut d = doc! {"leaf": 1};
        for _ in 0..150 {
            d = doc! {"n": d};
        }
        let r = reason(consumer.decode(&event(bson_bytes(&d))));
        assert!(r.contains("nested deeper than"), "{r}");
    }
}
