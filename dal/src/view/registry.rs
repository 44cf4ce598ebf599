//! The view registry: which messages are views, of which models, joined how.
//!
//! Built from descriptors (the built-in `overseer.views.v1` set plus any the user adds), by
//! reading the options of `views.proto`. Every definition is checked when the registry is
//! built, so a mistake in a .proto is one error naming the message and field, at start.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};

use crate::{Error, Result};

/// Option names, as declared in `views.proto`.
pub mod options {
    pub const MODEL: &str = "overseer.views.v1.model";
    pub const SUBJECT: &str = "overseer.views.v1.subject";
    pub const JOIN_REF: &str = "overseer.views.v1.join_ref";
    pub const LOOKUP: &str = "overseer.views.v1.lookup";
}

/// How a view message is filled.
#[derive(Clone, Debug)]
pub enum ViewKind {
    /// One record of `model`.
    Record { model: String },
    /// A subject record joined with related records.
    Joined(Joined),
}

/// A joined view: the subject and its related records, all as of the same time.
#[derive(Clone, Debug)]
pub struct Joined {
    /// The field holding the subject record, and the subject's model.
    pub subject: FieldDescriptor,
    pub subject_model: String,
    /// Repeated fields holding every record of `model` that references the subject
    /// through `reference`.
    pub joins: Vec<JoinField>,
    /// Fields holding the record of `model` whose id is the subject's value at `path`.
    pub lookups: Vec<LookupField>,
}

#[derive(Clone, Debug)]
pub struct JoinField {
    pub field: FieldDescriptor,
    pub model: String,
    pub reference: String,
}

#[derive(Clone, Debug)]
pub struct LookupField {
    pub field: FieldDescriptor,
    pub model: String,
    pub path: String,
}

/// One view: a message and how to fill it.
#[derive(Clone, Debug)]
pub struct ViewDef {
    pub message: MessageDescriptor,
    pub kind: ViewKind,
}

impl ViewDef {
    /// Full name of the message, e.g. `overseer.views.v1.Transfer`.
    pub fn name(&self) -> &str {
        self.message.full_name()
    }

    /// The model whose records are this view's subjects (what `--id` names).
    pub fn subject_model(&self) -> &str {
        match &self.kind {
            ViewKind::Record { model } => model,
            ViewKind::Joined(j) => &j.subject_model,
        }
    }

    /// Every model the view reads, subject first, each once: the sources a check on this
    /// view depends on.
    pub fn models(&self) -> Vec<String> {
        let mut out = vec![self.subject_model().to_owned()];
        if let ViewKind::Joined(j) = &self.kind {
            let more = j.joins.iter().map(|f| &f.model);
            for m in more.chain(j.lookups.iter().map(|f| &f.model)) {
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        }
        out
    }
}

/// Every view known to a DAL, by message full name.
#[derive(Clone, Debug)]
pub struct Views {
    pool: DescriptorPool,
    defs: BTreeMap<String, Arc<ViewDef>>,
}

impl Views {
    /// The built-in views (`overseer.views.v1`: Toy, Transfer, Asset, LedgerEntry, Wallet,
    /// TransferWithLedger).
    pub fn builtin() -> Self {
        static BUILTIN: OnceLock<Views> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let pool = DescriptorPool::decode(overseer_protos::DESCRIPTOR_SET)
                    .expect("the built-in descriptor set decodes");
                Views::from_pool(pool).expect("the built-in views are well-defined")
            })
            .clone()
    }

    /// The built-in views plus those of an encoded `FileDescriptorSet` (`protoc
    /// --include_imports --descriptor_set_out`, or protox). `what` names it in errors.
    pub fn with_descriptor_set(&self, bytes: &[u8], what: &str) -> Result<Self> {
        let mut pool = self.pool.clone();
        pool.decode_file_descriptor_set(bytes)
            .map_err(|e| Error::invalid(what, format!("not a usable FileDescriptorSet: {e}")))?;
        Views::from_pool(pool)
    }

    /// Reads every view definition of a pool.
    pub fn from_pool(pool: DescriptorPool) -> Result<Self> {
        let ext = |name: &str| pool.get_extension_by_name(name);
        let opts = Opts {
            model: ext(options::MODEL),
            subject: ext(options::SUBJECT),
            join_ref: ext(options::JOIN_REF),
            lookup: ext(options::LOOKUP),
        };
        let mut defs = BTreeMap::new();
        for m in pool.all_messages() {
            if let Some(kind) = opts.kind_of(&m)? {
                let def = ViewDef { message: m, kind };
                defs.insert(def.name().to_owned(), Arc::new(def));
            }
        }
        Ok(Views { pool, defs })
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// A view by full name, or by short name when that is unambiguous
    /// (`TransferWithLedger`). The error lists the known views.
    pub fn get(&self, name: &str) -> Result<Arc<ViewDef>> {
        if let Some(d) = self.defs.get(name) {
            return Ok(d.clone());
        }
        let short: Vec<_> = self
            .defs
            .values()
            .filter(|d| d.message.name() == name)
            .collect();
        match short.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::view(
                name,
                format!("no such view (known: {})", self.names().join(", ")),
            )),
            many => Err(Error::view(
                name,
                format!(
                    "ambiguous, use a full name: {}",
                    many.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// The record view of a model (the first by name if several messages view it).
    pub fn record_view(&self, model: &str) -> Option<Arc<ViewDef>> {
        self.defs
            .values()
            .find(|d| matches!(&d.kind, ViewKind::Record { model: m } if m == model))
            .cloned()
    }

    /// Full names of every view, sorted.
    pub fn names(&self) -> Vec<String> {
        self.defs.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ViewDef>> {
        self.defs.values()
    }
}

impl Default for Views {
    fn default() -> Self {
        Views::builtin()
    }
}

/// The option extensions, where the pool has them (a pool without `views.proto` has no
/// views).
struct Opts {
    model: Option<ExtensionDescriptor>,
    subject: Option<ExtensionDescriptor>,
    join_ref: Option<ExtensionDescriptor>,
    lookup: Option<ExtensionDescriptor>,
}

fn string_opt(options: &DynamicMessage, ext: &Option<ExtensionDescriptor>) -> Option<String> {
    let ext = ext.as_ref()?;
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).as_ref() {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn bool_opt(options: &DynamicMessage, ext: &Option<ExtensionDescriptor>) -> bool {
    let Some(ext) = ext.as_ref() else {
        return false;
    };
    options.has_extension(ext) && matches!(options.get_extension(ext).as_ref(), Value::Bool(true))
}

impl Opts {
    fn model_of(&self, m: &MessageDescriptor) -> Option<String> {
        string_opt(&m.options(), &self.model)
    }

    fn kind_of(&self, m: &MessageDescriptor) -> Result<Option<ViewKind>> {
        let bad = |field: &FieldDescriptor, msg: String| {
            Err(Error::view(
                m.full_name(),
                format!("field {}: {msg}", field.name()),
            ))
        };
        let own_model = self.model_of(m);
        let mut subject: Option<(FieldDescriptor, String)> = None;
        let mut joins = Vec::new();
        let mut lookups = Vec::new();
        for f in m.fields() {
            let o = f.options();
            let is_subject = bool_opt(&o, &self.subject);
            let join = string_opt(&o, &self.join_ref);
            let lookup = string_opt(&o, &self.lookup);
            let roles = usize::from(is_subject)
                + usize::from(join.is_some())
                + usize::from(lookup.is_some());
            if roles == 0 {
                continue;
            }
            if roles > 1 {
                return bad(
                    &f,
                    "only one of subject, join_ref and lookup may be set".into(),
                );
            }
            let Kind::Message(target) = f.kind() else {
                return bad(&f, "must be a message type with a (model) option".into());
            };
            let Some(model) = self.model_of(&target) else {
                return bad(
                    &f,
                    format!("its type {} has no (model) option", target.full_name()),
                );
            };
            if f.is_map() {
                return bad(&f, "must not be a map".into());
            }
            if let Some(reference) = join {
                if !f.is_list() {
                    return bad(&f, "a join_ref field must be repeated".into());
                }
                joins.push(JoinField {
                    field: f,
                    model,
                    reference,
                });
            } else if f.is_list() {
                return bad(&f, "only join_ref fields may be repeated".into());
            } else if let Some(path) = lookup {
                lookups.push(LookupField {
                    field: f,
                    model,
                    path,
                });
            } else if let Some((prev, _)) = &subject {
                return bad(
                    &f,
                    format!("a second subject (the first is {})", prev.name()),
                );
            } else {
                subject = Some((f, model));
            }
        }
        match (own_model, subject) {
            (Some(model), None) if joins.is_empty() && lookups.is_empty() => {
                Ok(Some(ViewKind::Record { model }))
            }
            (Some(_), _) => Err(Error::view(
                m.full_name(),
                "a message with a (model) option views one record; it cannot also have \
                 subject, join_ref or lookup fields",
            )),
            (None, Some((subject, subject_model))) => Ok(Some(ViewKind::Joined(Joined {
                subject,
                subject_model,
                joins,
                lookups,
            }))),
            (None, None) if joins.is_empty() && lookups.is_empty() => Ok(None),
            (None, None) => Err(Error::view(
                m.full_name(),
                "join_ref and lookup fields need a (subject) field",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_views() {
        let v = Views::builtin();
        let t = v.get("overseer.views.v1.Transfer").unwrap();
        assert!(matches!(&t.kind, ViewKind::Record { model } if model == "payments.transfers"));
        let j = v.get("TransferWithLedger").unwrap();
        assert_eq!(j.subject_model(), "payments.transfers");
        assert_eq!(
            j.models(),
            ["payments.transfers", "ledger.entries", "payments.assets"]
        );
        let ViewKind::Joined(joined) = &j.kind else {
            panic!("joined")
        };
        assert_eq!(joined.joins[0].reference, "transfer_id");
        assert_eq!(joined.lookups[0].path, "asset");
        assert_eq!(
            v.record_view("ledger.entries").unwrap().name(),
            "overseer.views.v1.LedgerEntry"
        );
        assert!(v.record_view("nope").is_none());
        let e = v.get("Nope").unwrap_err().to_string();
        assert!(
            e.contains("no such view") && e.contains("overseer.views.v1.Toy"),
            "{e}"
        );
        // Enums, nested and option messages are not views.
        assert!(v.get("google.protobuf.Timestamp").is_err());
    }
}
