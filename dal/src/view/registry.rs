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
    pub const JOIN: &str = "overseer.views.v1.join";
    pub const ID_SEPARATOR: &str = "overseer.views.v1.id_separator";
    pub const LOOKUP_REF: &str = "overseer.views.v1.lookup_ref";
    pub const AGGREGATE: &str = "overseer.views.v1.aggregate";
    /// The message type of an `(aggregate)` field.
    pub const TOTALS: &str = "overseer.views.v1.Totals";
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
    /// The subject field's `(id_separator)`: how the subject's id splits into the parts
    /// multi-field joins match (`None`: no join uses parts).
    pub id_separator: Option<String>,
    /// How many parts the subject's id splits into (the highest `id_part` used + 1; 0 when
    /// no join uses parts).
    pub id_parts: usize,
    /// Repeated fields holding every record of `model` whose references match the subject
    /// (`keys`).
    pub joins: Vec<JoinField>,
    /// Fields holding the record of `model` whose id is the subject's value at `path`.
    pub lookups: Vec<LookupField>,
}

impl Joined {
    /// The message type of the subject field.
    pub fn subject_message(&self) -> MessageDescriptor {
        match self.subject.kind() {
            Kind::Message(m) => m,
            _ => unreachable!("the registry admits only message-typed subject fields"),
        }
    }

    /// Whether the record path `path` is shown by a field of the subject message (by the
    /// fields' source paths, `(from)` or name, descending into nested message fields).
    pub fn subject_shows_path(&self, path: &str) -> bool {
        message_shows_path(&self.subject_message(), path)
    }

    /// The parts of a subject id (split from the right on the separator into `id_parts`
    /// parts, so only the first may contain the separator); `None` if it has fewer parts,
    /// or if no join uses parts.
    pub fn split_id<'a>(&self, id: &'a str) -> Option<Vec<&'a str>> {
        let sep = self.id_separator.as_deref()?;
        if self.id_parts == 0 {
            return None;
        }
        let mut parts: Vec<&str> = id.rsplitn(self.id_parts, sep).collect();
        if parts.len() != self.id_parts {
            return None;
        }
        parts.reverse();
        Some(parts)
    }

    /// The value each key of `join` must have for the members of `subject_id` (in key
    /// order); `None` if the id does not split into the parts the keys need (it can have
    /// no members).
    pub fn key_values<'a>(&self, join: &JoinField, subject_id: &'a str) -> Option<Vec<&'a str>> {
        if join.keys.iter().all(|k| k.id_part.is_none()) {
            return Some(vec![subject_id; join.keys.len()]);
        }
        let parts = self.split_id(subject_id)?;
        join.keys
            .iter()
            .map(|k| k.id_part.map(|p| parts[p]))
            .collect()
    }

    /// The subject id whose members have these values of `join`'s keys (in key order): the
    /// reverse of [`Joined::key_values`], used by selection.
    pub fn subject_id(&self, join: &JoinField, values: &[&str]) -> Option<String> {
        let mut parts: Vec<Option<&str>> = vec![None; self.id_parts.max(1)];
        for (k, v) in join.keys.iter().zip(values) {
            match k.id_part {
                None => return Some((*v).to_owned()),
                Some(p) => parts[p] = Some(v),
            }
        }
        let parts: Option<Vec<&str>> = parts.into_iter().collect();
        Some(parts?.join(self.id_separator.as_deref()?))
    }
}

fn message_shows_path(msg: &MessageDescriptor, path: &str) -> bool {
    msg.fields().any(|f| {
        let src = crate::view::map::source_path(&f);
        if src == path {
            return true;
        }
        let Some(rest) = path
            .strip_prefix(src.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        match f.kind() {
            Kind::Message(m) if !f.is_list() && !f.is_map() => message_shows_path(&m, rest),
            _ => false,
        }
    })
}

/// A field holding the records of `model` that reference the subject (or, with an
/// `aggregate`, their totals).
#[derive(Clone, Debug)]
pub struct JoinField {
    pub field: FieldDescriptor,
    pub model: String,
    /// The references a member must have, as of the view's time; members are found
    /// through the index of the first. One key with `id_part: None` is a `(join_ref)`.
    pub keys: Vec<JoinKey>,
    /// `(aggregate)`: the field holds the members' `Totals`, not the members.
    pub aggregate: Option<Aggregate>,
}

/// A declared aggregate over a join's members (`(aggregate)` in `views.proto`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// Path of the summed integer in a member's state; `None`: members are only counted.
    pub sum: Option<String>,
    /// Path of the field deciding the sign, and the values that add and subtract; `None`:
    /// every member adds.
    pub sign_by: Option<String>,
    pub add: Vec<String>,
    pub subtract: Vec<String>,
}

/// The largest magnitude of one member's value: 2^96, so that no join of fewer than 2^31
/// members can overflow the 128-bit sum, whatever order members are added and removed in
/// (reads that take different paths give the same sum or the same error).
pub const MAX_AGGREGATE_VALUE: i128 = 1 << 96;

impl Aggregate {
    /// What a member with this state adds to the sum; the error says what was wrong
    /// with its value. A member without the value (or null) adds nothing; one whose sign
    /// field is missing or null adds nothing; one whose sign field has a value that is
    /// neither in `add` nor in `subtract` is an error (as an unknown enum value is in a
    /// listed view). Sign values match the listed ones ignoring ASCII case and an enum
    /// prefix: `credit`, `CREDIT` and `DIRECTION_CREDIT` all match `credit`.
    pub fn contribution(&self, state: &crate::builder::State) -> std::result::Result<i128, String> {
        let Some(path) = &self.sum else {
            return Ok(0);
        };
        let value = match crate::builder::path::get(state, path) {
            None | Some(serde_json::Value::Null) => return Ok(0),
            Some(v) => crate::view::map::integer(v)
                .ok_or_else(|| format!("{path} is {v}, not an integer"))?,
        };
        if value.unsigned_abs() > MAX_AGGREGATE_VALUE.unsigned_abs() {
            return Err(format!(
                "{path} is {value}, beyond the ±2^96 an aggregate sums"
            ));
        }
        let Some(by) = &self.sign_by else {
            return Ok(value);
        };
        let sign = match crate::builder::path::get(state, by) {
            None | Some(serde_json::Value::Null) => return Ok(0),
            Some(v) => crate::builder::scalar_text(v)
                .ok_or_else(|| format!("{by} is {v}, not a value to sign by"))?,
        };
        // Exact (ignoring case) matches first, in both lists, then prefixed ones: with
        // `add: credit, subtract: reversal_credit`, "REVERSAL_CREDIT" subtracts.
        let exact = |l: &[String]| l.iter().any(|a| sign.eq_ignore_ascii_case(a));
        let prefixed = |l: &[String]| l.iter().any(|a| sign_matches(&sign, a));
        if exact(&self.add) {
            Ok(value)
        } else if exact(&self.subtract) {
            Ok(-value)
        } else if prefixed(&self.add) {
            Ok(value)
        } else if prefixed(&self.subtract) {
            Ok(-value)
        } else {
            Err(format!(
                "{by} is {sign:?}, which the aggregate neither adds ({}) nor subtracts ({})",
                self.add.join(", "),
                self.subtract.join(", ")
            ))
        }
    }
}

/// Whether a sign field's value names `listed`: equal ignoring ASCII case, or ending in
/// `_` + `listed` (an enum value name with its prefix, `DIRECTION_CREDIT`; any prefix
/// ending in `_` counts, so list the longer names when one ends another).
fn sign_matches(value: &str, listed: &str) -> bool {
    if value.eq_ignore_ascii_case(listed) {
        return true;
    }
    value.len() > listed.len()
        && value.is_char_boundary(value.len() - listed.len() - 1)
        && value[value.len() - listed.len() - 1..]
            .strip_prefix('_')
            .is_some_and(|tail| tail.eq_ignore_ascii_case(listed))
}

/// One reference of a join and the subject-id part it must equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinKey {
    /// A reference name the joined model declares (e.g. `account_id`).
    pub reference: String,
    /// Which part of the subject's id (split on the subject's `(id_separator)`) the
    /// reference equals; `None`: the whole id (`(join_ref)`).
    pub id_part: Option<usize>,
}

/// A field holding the record of `model` whose id is the subject's value at `path`.
#[derive(Clone, Debug)]
pub struct LookupField {
    pub field: FieldDescriptor,
    pub model: String,
    pub path: String,
    /// `(lookup_ref)`: the subject model's reference holding the same value as `path`; set,
    /// a change of a looked-up record re-checks the subjects that reference it.
    pub reference: Option<String>,
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

    /// Whether the record path `path` is shown by a field of this view's message (by the
    /// fields' source paths, `(from)` or name, descending into nested message fields).
    pub fn shows_path(&self, path: &str) -> bool {
        message_shows_path(&self.message, path)
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

    /// The (model, reference name) each of its joins finds members by (the first key):
    /// the reference updates a reader of this view asks the catalog to keep
    /// ([`crate::catalog::UpdateIndex::keep_ref_updates`]).
    pub fn join_refs(&self) -> Vec<(String, String)> {
        match &self.kind {
            ViewKind::Joined(j) => j
                .joins
                .iter()
                .filter_map(|f| Some((f.model.clone(), f.keys.first()?.reference.clone())))
                .collect(),
            ViewKind::Record { .. } => Vec::new(),
        }
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
    /// TransferWithLedger, WalletWithEntries, WalletWithTotals).
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

    /// These views plus those of several encoded `FileDescriptorSet`s (e.g. the sets a
    /// team's crate embeds and registers in code, `overseer_prs::Registry::views`), read in
    /// one pass. Files already known (such as an imported `overseer/views.proto`) are
    /// skipped when identical. With no sets, a clone of `self`.
    pub fn with_descriptor_sets<'a>(
        &self,
        sets: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self> {
        let mut pool = self.pool.clone();
        let mut any = false;
        for (i, bytes) in sets.into_iter().enumerate() {
            pool.decode_file_descriptor_set(bytes).map_err(|e| {
                Error::invalid(
                    format!("registered descriptor set #{}", i + 1),
                    format!("not a usable FileDescriptorSet: {e}"),
                )
            })?;
            any = true;
        }
        if !any {
            return Ok(self.clone());
        }
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
            join: ext(options::JOIN),
            id_separator: ext(options::ID_SEPARATOR),
            lookup_ref: ext(options::LOOKUP_REF),
            aggregate: ext(options::AGGREGATE),
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
    join: Option<ExtensionDescriptor>,
    id_separator: Option<ExtensionDescriptor>,
    lookup_ref: Option<ExtensionDescriptor>,
    aggregate: Option<ExtensionDescriptor>,
}

/// The `(aggregate)` option of a field, if set; the error says what is wrong with it.
fn aggregate_opt(
    options: &DynamicMessage,
    ext: &Option<ExtensionDescriptor>,
) -> std::result::Result<Option<(String, Aggregate)>, String> {
    let Some(ext) = ext.as_ref() else {
        return Ok(None);
    };
    if !options.has_extension(ext) {
        return Ok(None);
    }
    let value = options.get_extension(ext);
    let Value::Message(m) = value.as_ref() else {
        return Err("(aggregate) is not an Aggregate".into());
    };
    let text = |name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let list = |name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let Some(model) = text("model") else {
        return Err("(aggregate) names no model (the joined records' model)".into());
    };
    let agg = Aggregate {
        sum: text("sum"),
        sign_by: text("sign_by"),
        add: list("add"),
        subtract: list("subtract"),
    };
    match (&agg.sign_by, agg.add.is_empty() && agg.subtract.is_empty()) {
        (Some(by), true) => {
            return Err(format!(
                "(aggregate) signs by {by:?} but lists no add or subtract values"
            ));
        }
        (None, false) => {
            return Err("(aggregate) lists add or subtract values but no sign_by field".into());
        }
        _ => {}
    }
    if agg.sign_by.is_some() && agg.sum.is_none() {
        return Err("(aggregate) signs a sum but names no sum field".into());
    }
    if agg.add.iter().chain(&agg.subtract).any(String::is_empty) {
        return Err("(aggregate) lists an empty add or subtract value".into());
    }
    if let Some(both) = agg
        .add
        .iter()
        .find(|a| agg.subtract.iter().any(|s| s.eq_ignore_ascii_case(a)))
    {
        return Err(format!("(aggregate) both adds and subtracts {both:?}"));
    }
    Ok(Some((model, agg)))
}

/// The `(join)` keys of a field's options: (reference, id_part) in declaration order.
fn join_keys(
    options: &DynamicMessage,
    ext: &Option<ExtensionDescriptor>,
) -> std::result::Result<Vec<JoinKey>, String> {
    let Some(ext) = ext.as_ref() else {
        return Ok(Vec::new());
    };
    if !options.has_extension(ext) {
        return Ok(Vec::new());
    }
    let value = options.get_extension(ext);
    let Value::List(items) = value.as_ref() else {
        return Err("(join) is not a repeated JoinKey".into());
    };
    items
        .iter()
        .map(|item| {
            let Value::Message(m) = item else {
                return Err("(join) is not a repeated JoinKey".to_owned());
            };
            let reference = match m.get_field_by_name("reference").as_deref() {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => return Err("a (join) key has no reference".to_owned()),
            };
            let id_part = match m.get_field_by_name("id_part").as_deref() {
                Some(Value::U32(p)) => *p as usize,
                _ => 0,
            };
            Ok(JoinKey {
                reference,
                id_part: Some(id_part),
            })
        })
        .collect()
}

/// A join's keys name each reference once.
fn distinct_references(keys: &[JoinKey]) -> std::result::Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    match keys.iter().find(|k| !seen.insert(&k.reference)) {
        Some(k) => Err(format!("joins on reference {:?} twice", k.reference)),
        None => Ok(()),
    }
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
        let mut id_separator = None;
        let mut joins = Vec::new();
        let mut lookups = Vec::new();
        for f in m.fields() {
            let o = f.options();
            let is_subject = bool_opt(&o, &self.subject);
            let join_ref = string_opt(&o, &self.join_ref);
            let multi = match join_keys(&o, &self.join) {
                Ok(keys) => keys,
                Err(e) => return bad(&f, e),
            };
            let lookup = string_opt(&o, &self.lookup);
            let separator = string_opt(&o, &self.id_separator);
            let lookup_ref = string_opt(&o, &self.lookup_ref);
            let aggregate = match aggregate_opt(&o, &self.aggregate) {
                Ok(a) => a,
                Err(e) => return bad(&f, e),
            };
            let roles = usize::from(is_subject)
                + usize::from(join_ref.is_some())
                + usize::from(!multi.is_empty())
                + usize::from(lookup.is_some());
            if separator.is_some() && !is_subject {
                return bad(&f, "id_separator belongs on the (subject) field".into());
            }
            if lookup_ref.is_some() && lookup.is_none() {
                return bad(&f, "lookup_ref belongs on a (lookup) field".into());
            }
            // The join's keys: one `(join_ref)` (the whole subject id), or the `(join)` keys.
            let keys = match join_ref {
                Some(reference) => vec![JoinKey {
                    reference,
                    id_part: None,
                }],
                None => multi,
            };
            if let Err(e) = distinct_references(&keys) {
                return bad(&f, e);
            }
            if let Some((model, agg)) = aggregate {
                if keys.is_empty() {
                    return bad(&f, "an (aggregate) needs join_ref or join keys".into());
                }
                if roles > 1 {
                    return bad(
                        &f,
                        "an (aggregate) field has one join (join_ref or join keys) and is \
                         not a subject or lookup"
                            .into(),
                    );
                }
                let is_totals =
                    matches!(f.kind(), Kind::Message(m) if m.full_name() == options::TOTALS);
                if !is_totals || f.is_list() {
                    return bad(
                        &f,
                        format!("an (aggregate) field must be a single {}", options::TOTALS),
                    );
                }
                joins.push(JoinField {
                    field: f,
                    model,
                    keys,
                    aggregate: Some(agg),
                });
                continue;
            }
            if roles == 0 {
                continue;
            }
            if roles > 1 {
                return bad(
                    &f,
                    "only one of subject, join_ref, join and lookup may be set".into(),
                );
            }
            let Kind::Message(target) = f.kind() else {
                return bad(&f, "must be a message type with a (model) option".into());
            };
            if target.full_name() == options::TOTALS {
                return bad(
                    &f,
                    "a Totals field needs an (aggregate) option saying what it counts and sums"
                        .into(),
                );
            }
            let Some(model) = self.model_of(&target) else {
                return bad(
                    &f,
                    format!("its type {} has no (model) option", target.full_name()),
                );
            };
            if f.is_map() {
                return bad(&f, "must not be a map".into());
            }
            if !keys.is_empty() {
                if !f.is_list() {
                    return bad(&f, "a join_ref or join field must be repeated".into());
                }
                joins.push(JoinField {
                    field: f,
                    model,
                    keys,
                    aggregate: None,
                });
            } else if f.is_list() {
                return bad(&f, "only join_ref and join fields may be repeated".into());
            } else if let Some(path) = lookup {
                lookups.push(LookupField {
                    field: f,
                    model,
                    path,
                    reference: lookup_ref,
                });
            } else if let Some((prev, _)) = &subject {
                return bad(
                    &f,
                    format!("a second subject (the first is {})", prev.name()),
                );
            } else {
                id_separator = separator;
                subject = Some((f, model));
            }
        }
        // Multi-field joins: every join using id parts covers each part of the subject's
        // id exactly once (so an update of a member names exactly one subject), and the
        // subject says how its id splits.
        let id_parts = joins
            .iter()
            .flat_map(|j| j.keys.iter().filter_map(|k| k.id_part))
            .max()
            .map_or(0, |p| p + 1);
        for j in &joins {
            let parts: Vec<usize> = j.keys.iter().filter_map(|k| k.id_part).collect();
            if parts.is_empty() {
                continue;
            }
            let mut sorted = parts.clone();
            sorted.sort_unstable();
            if sorted != (0..id_parts).collect::<Vec<_>>() {
                return bad(
                    &j.field,
                    format!(
                        "its (join) keys use id parts {parts:?}; each of the subject id's \
                         {id_parts} parts (0..{id_parts}) must be used exactly once"
                    ),
                );
            }
            if id_separator.is_none() {
                return bad(
                    &j.field,
                    "its (join) keys use parts of the subject's id, but the (subject) field \
                     declares no (id_separator)"
                        .into(),
                );
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
                id_separator,
                id_parts,
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
        assert_eq!(
            joined.joins[0].keys,
            [JoinKey {
                reference: "transfer_id".into(),
                id_part: None
            }]
        );
        assert_eq!(joined.lookups[0].path, "asset");
        // The shipped view does not opt its asset lookup into triggering.
        assert_eq!(joined.lookups[0].reference, None);
        assert_eq!(joined.key_values(&joined.joins[0], "T1"), Some(vec!["T1"]));
        assert_eq!(
            joined.subject_id(&joined.joins[0], &["T1"]).as_deref(),
            Some("T1")
        );

        // The wallet: entries whose (account_id, asset) are the parts of `account:asset`.
        let w = v.get("WalletWithEntries").unwrap();
        assert_eq!(w.models(), ["ledger.wallets", "ledger.entries"]);
        let ViewKind::Joined(w) = &w.kind else {
            panic!("joined")
        };
        let key = |r: &str, p| JoinKey {
            reference: r.into(),
            id_part: Some(p),
        };
        assert_eq!(w.joins[0].keys, [key("account_id", 0), key("asset", 1)]);
        assert_eq!((w.id_separator.as_deref(), w.id_parts), (Some(":"), 2));
        assert_eq!(
            w.key_values(&w.joins[0], "acc:1:BTC"),
            Some(vec!["acc:1", "BTC"]),
            "only the first part may hold the separator"
        );
        assert_eq!(w.key_values(&w.joins[0], "no-separator"), None);
        assert_eq!(
            w.subject_id(&w.joins[0], &["acc:1", "BTC"]).as_deref(),
            Some("acc:1:BTC")
        );
        // The wallet's totals: the same join, declared as an aggregate.
        let t = v.get("WalletWithTotals").unwrap();
        assert_eq!(t.models(), ["ledger.wallets", "ledger.entries"]);
        let ViewKind::Joined(t) = &t.kind else {
            panic!("joined")
        };
        assert_eq!(t.joins[0].keys, [key("account_id", 0), key("asset", 1)]);
        assert_eq!(
            t.joins[0].aggregate,
            Some(Aggregate {
                sum: Some("amount_minor".into()),
                sign_by: Some("direction".into()),
                add: vec!["credit".into()],
                subtract: vec!["debit".into()],
            })
        );
        assert_eq!(w.joins[0].aggregate, None);
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

    #[test]
    fn aggregate_contributions() {
        let agg = Aggregate {
            sum: Some("m.amount".into()),
            sign_by: Some("dir".into()),
            add: vec!["credit".into()],
            subtract: vec!["debit".into()],
        };
        let of = |doc: serde_json::Value| {
            let serde_json::Value::Object(st) = doc else {
                panic!()
            };
            agg.contribution(&st)
        };
        use serde_json::json;
        assert_eq!(of(json!({"m": {"amount": 5}, "dir": "credit"})), Ok(5));
        assert_eq!(of(json!({"m": {"amount": "7"}, "dir": "debit"})), Ok(-7));
        let big = json!({"m": {"amount": {"$numberLong": "9223372036854775807"}}, "dir": "credit"});
        assert_eq!(of(big), Ok(i128::from(i64::MAX)));
        // Exact past 64 bits, from text.
        assert_eq!(
            of(json!({"m": {"amount": "100000000000000000000"}, "dir": "debit"})),
            Ok(-100_000_000_000_000_000_000)
        );
        // Past 2^96 (down to i128::MIN, whose negation would overflow): refused.
        let min = i128::MIN.to_string();
        assert_eq!(
            of(json!({"m": {"amount": min}, "dir": "debit"})),
            Err(format!(
                "m.amount is {min}, beyond the ±2^96 an aggregate sums"
            ))
        );
        let edge = MAX_AGGREGATE_VALUE.to_string();
        assert_eq!(
            of(json!({"m": {"amount": edge}, "dir": "debit"})),
            Ok(-MAX_AGGREGATE_VALUE)
        );
        // Sign values as enum names: any case, with a prefix.
        for dir in ["CREDIT", "Credit", "DIRECTION_CREDIT", "direction_credit"] {
            assert_eq!(of(json!({"m": {"amount": 5}, "dir": dir})), Ok(5), "{dir}");
        }
        assert_eq!(
            of(json!({"m": {"amount": 5}, "dir": "DIRECTION_DEBIT"})),
            Ok(-5)
        );
        // A value neither listed: an error naming it (not a silent 0).
        assert_eq!(
            of(json!({"m": {"amount": 5}, "dir": "reversal"})),
            Err(
                "dir is \"reversal\", which the aggregate neither adds (credit) nor \
                 subtracts (debit)"
                    .into()
            )
        );
        assert!(of(json!({"m": {"amount": 5}, "dir": "XCREDIT"})).is_err());
        // An exact match in either list wins over a prefixed one.
        let rev = Aggregate {
            subtract: vec!["reversal_credit".into()],
            ..agg.clone()
        };
        let st = json!({"m": {"amount": 5}, "dir": "REVERSAL_CREDIT"});
        assert_eq!(rev.contribution(st.as_object().unwrap()), Ok(-5));
        let st = json!({"m": {"amount": 5}, "dir": "DIRECTION_CREDIT"});
        assert_eq!(rev.contribution(st.as_object().unwrap()), Ok(5));
        assert!(of(json!({"m": {"amount": 5}, "dir": ["credit"]})).is_err());
        // No sign: nothing.
        assert_eq!(of(json!({"m": {"amount": 5}})), Ok(0));
        assert_eq!(of(json!({"m": {"amount": 5}, "dir": null})), Ok(0));
        // Missing or null value: nothing.
        assert_eq!(of(json!({"dir": "credit"})), Ok(0));
        assert_eq!(of(json!({"m": {"amount": null}, "dir": "credit"})), Ok(0));
        // Not an integer: what and where.
        assert_eq!(
            of(json!({"m": {"amount": 1.5}, "dir": "credit"})),
            Err("m.amount is 1.5, not an integer".into())
        );
        assert_eq!(
            of(json!({"m": {"amount": "1e3"}, "dir": "credit"})),
            Err("m.amount is \"1e3\", not an integer".into())
        );
        // Without a sign, every member adds; without a sum, nothing is summed.
        let plain = Aggregate {
            sign_by: None,
            add: vec![],
            subtract: vec![],
            ..agg.clone()
        };
        let st = json!({"m": {"amount": -3}});
        assert_eq!(plain.contribution(st.as_object().unwrap()), Ok(-3));
        let count = Aggregate { sum: None, ..plain };
        assert_eq!(count.contribution(st.as_object().unwrap()), Ok(0));
    }
}
