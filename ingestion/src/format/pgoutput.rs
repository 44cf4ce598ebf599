//! The consumer of pgoutput row changes from PostgreSQL logical replication.
//!
//! The [`postgres`](crate::source::postgres) source hands every row change over as two
//! byte strings, both exactly as the walsender sent them: the `I`/`U`/`D` message itself
//! (`SourceEvent::raw`) and the `R` (Relation) message describing its table as it was when
//! the change was decoded (`SourceEvent::context`). Keeping the Relation bytes beside every
//! change makes each stored update self-describing.
//!
//! The parser of those messages is [`overseer_dal::pgoutput`] (the data access layer folds
//! the same bytes into row images, and must not depend on ingestion); its items are
//! re-exported here. A [`DecodeError`] becomes the event's [`Reject`] reason unchanged.

pub use overseer_dal::pgoutput::{
    Cell, ChangeOp, Column, DecodeError, OldTuple, Relation, RowChange, decode_change,
    decode_relation, relation_id,
};

use super::{Consumer, Decoded, Models, Reject};
use crate::config::Format;
use crate::source::SourceEvent;

impl From<DecodeError> for Reject {
    fn from(e: DecodeError) -> Self {
        Reject(e.0)
    }
}

/// The consumer of `format = "pgoutput"` events.
///
/// Model: the source's fixed `model`, else `namespace.table`. Op: insert → create,
/// update → update, delete → delete. The record id and references are read from the row
/// as a JSON object ([`RowChange::to_json`]) of the new row, or of the old (key) row for
/// deletes. The event time is the transaction's commit time the source attached.
#[derive(Debug)]
pub struct PgoutputConsumer {
    models: Models,
}

impl PgoutputConsumer {
    pub fn new(models: Models) -> Self {
        PgoutputConsumer { models }
    }
}

impl Consumer for PgoutputConsumer {
    fn format(&self) -> Format {
        Format::Pgoutput
    }

    fn decode(&self, ev: &SourceEvent) -> Result<Decoded, Reject> {
        let relation = ev.context.as_deref().ok_or_else(|| {
            Reject::new("pgoutput change without its Relation message (event context)")
        })?;
        let change = decode_change(&ev.raw, relation)?;
        let model = self.models.resolve(Some(&change.qualified_name()))?;
        let image = change.image().ok_or_else(|| {
            Reject::new("pgoutput change has no row image to read the record id from")
        })?;
        let row = change.to_json(image);
        let (record_id, refs) = Models::id_and_refs(model, &row)?;
        let event_time_us = ev
            .commit_time_us
            .ok_or_else(|| Reject::new("pgoutput change without a commit time"))?;
        Ok(Decoded {
            model: model.name.clone(),
            record_id,
            op: change.op.op(),
            event_time_us,
            refs,
            // The transport position (WAL position, Kafka offset) is the identity.
            event_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use bytes::Bytes;
    use overseer_dal::update::Op;
    use overseer_testkit::pgoutput::Msg;

    use overseer_testkit::pgoutput::sample::*;

    fn consumer(fixed: Option<&str>) -> PgoutputConsumer {
        let models = vec![
            ModelConfig {
                name: "payments.transfers".into(),
                id_field: "id".into(),
                references: [("account".to_string(), "account_id".to_string())].into(),
            },
            ModelConfig {
                name: "fixed".into(),
                id_field: "id".into(),
                references: Default::default(),
            },
        ];
        PgoutputConsumer::new(Models::new(&models, fixed.map(str::to_owned)))
    }

    fn event(raw: Vec<u8>, ctx: Option<Vec<u8>>, time: Option<i64>) -> SourceEvent {
        SourceEvent {
            raw: Bytes::from(raw),
            key: None,
            context: ctx.map(Bytes::from),
            position: "0000000001000000/00000000".into(),
            commit_time_us: time,
            ack: None,
            checkpoint: None,
            lane: 0,
        }
    }
    #[test]
    fn consumer_reads_model_id_op_time_refs() {
        let c = consumer(None);
        assert_eq!(c.format(), Format::Pgoutput);
        let d = c
            .decode(&event(insert(), Some(relation()), Some(42)))
            .unwrap();
        assert_eq!(d.model, "payments.transfers");
        assert_eq!(d.record_id, "t1");
        assert_eq!(d.op, Op::Create);
        assert_eq!(d.event_time_us, 42);
        assert_eq!(d.refs, vec![("account".to_string(), "acct-1".to_string())]);

        let d = c
            .decode(&event(update_toast(), Some(relation()), Some(43)))
            .unwrap();
        assert_eq!((d.op, d.record_id.as_str()), (Op::Update, "t1"));
        let d = c
            .decode(&event(delete(), Some(relation()), Some(44)))
            .unwrap();
        assert_eq!((d.op, d.record_id.as_str()), (Op::Delete, "t1"));
        assert!(d.refs.is_empty(), "a key-only old row has no account_id");

        let d = consumer(Some("fixed"))
            .decode(&event(insert(), Some(relation()), Some(1)))
            .unwrap();
        assert_eq!(d.model, "fixed");
    }

    #[test]
    fn consumer_rejects() {
        let c = consumer(None);
        let e = c.decode(&event(insert(), None, Some(1))).unwrap_err();
        assert!(e.0.contains("Relation"), "{e}");
        let e = c
            .decode(&event(insert(), Some(relation()), None))
            .unwrap_err();
        assert!(e.0.contains("commit time"), "{e}");
        let mut rel = Msg::new(b'R')
            .u32(REL)
            .s("public")
            .s("unknown")
            .u8(b'd')
            .u16(4);
        for name in ["id", "a", "b", "c"] {
            rel = rel.u8(0).s(name).u32(25).u32(0);
        }
        let e = c
            .decode(&event(insert(), Some(rel.0), Some(1)))
            .unwrap_err();
        assert!(e.0.contains("public.unknown"), "{e}");
        let null_id = Msg::new(b'I')
            .u32(REL)
            .u8(b'N')
            .tuple(&[Cell::Null, t("a"), t("1"), t("m")])
            .0;
        let e = c
            .decode(&event(null_id, Some(relation()), Some(1)))
            .unwrap_err();
        assert!(e.0.contains("no record id"), "{e}");
    }

    /// Truncations, bit flips and random garbage: always a value or a Reject, never a panic.
    #[test]
    fn never_panics_on_any_bytes() {
        let c = consumer(None);
        fuzz(|raw, ctx| {
            let _ = decode_change(raw, ctx);
            let _ = decode_relation(ctx);
            let _ = relation_id(raw);
            let _ = c.decode(&event(raw.to_vec(), Some(ctx.to_vec()), Some(1)));
        });
        let rel = relation();
        // Huge announced lengths and counts must not allocate or read past the end.
        let huge = huge_length();
        assert!(decode_change(&huge, &rel).is_err());
        let neg = negative_count();
        assert!(
            decode_change(&neg, &rel)
                .unwrap_err()
                .0
                .contains("negative")
        );
    }
}
