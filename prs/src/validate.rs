//! Start-up validation: every registered check's view against the configured models.
//!
//! A view that names a model or a reference the configuration does not declare does not
//! fail at run time: its join finds nothing and its selection triggers nothing, silently.
//! [`validate`] finds every such mismatch before anything runs, and names the check, the
//! view field and the model of each:
//! - the `(subject)` model, and the model of every join and lookup, is a configured model;
//! - every `(join_ref)` and every `(join)` key names a reference the joined model declares;
//! - every `(lookup)` path is a field of the subject message;
//! - a lookup with `(lookup_ref)` (a lookup that triggers) names a reference the subject
//!   model declares, for the lookup's path;
//! - every reference a custom selection declares it reads ([`CheckSpec::reads_refs`]) is
//!   declared by its model;
//! - the views registered in code ([`Registry::views`]) decode.
//!
//! It is a pure function of the registry, the views and a plain description of the models
//! ([`Models`]), so a `validate` command can call it as well as the runner's start
//! ([`crate::runner::RunnerOptions::models`]).

use std::collections::BTreeMap;
use std::fmt;

use overseer_dal::view::{ViewDef, ViewKind, Views};

use crate::check::{CheckSpec, Registry};

/// The configured models (`[[models]]`): model name → its declared references (reference
/// name → the field path it is read from, e.g. `asset` → `asset`).
pub type Models = BTreeMap<String, BTreeMap<String, String>>;

/// One mismatch between a check and the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The check (empty for a problem of the registry itself, e.g. undecodable views).
    pub check: String,
    /// Full name of the check's view, if it has one.
    pub view: Option<String>,
    /// The view field concerned (`None`: the view as a whole, or a custom selection).
    pub field: Option<String>,
    /// The model concerned, if any.
    pub model: Option<String>,
    /// What is wrong, reading on from the check, view and field.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.check.is_empty() {
            write!(f, "registered views: ")?;
        } else {
            write!(f, "check {:?}: ", self.check)?;
        }
        if let Some(view) = &self.view {
            write!(f, "view {view} ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field {field:?} ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem of every check of `registry` against `models`, with `views` (plus the
/// views registered in the registry) as the known views. Empty: all is well. Never stops
/// at the first problem.
pub fn validate(registry: &Registry, views: &Views, models: &Models) -> Vec<Problem> {
    validate_checks(registry, views, models, |_| true)
}

/// [`validate`] for the checks `include` admits.
pub(crate) fn validate_checks(
    registry: &Registry,
    views: &Views,
    models: &Models,
    include: impl Fn(&CheckSpec) -> bool,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let merged = match views.with_descriptor_sets(registry.descriptor_sets().iter().copied()) {
        Ok(v) => v,
        Err(e) => {
            out.push(Problem {
                check: String::new(),
                view: None,
                field: None,
                model: None,
                message: e.to_string(),
            });
            views.clone()
        }
    };
    for spec in registry.iter().filter(|s| include(s)) {
        check_spec(spec, &merged, models, &mut out);
    }
    out
}

/// Where problems of one check are reported.
struct Ctx<'a> {
    check: &'a str,
    view: &'a str,
    views: &'a Views,
    models: &'a Models,
    out: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn push(&mut self, field: Option<&str>, model: &str, message: String) {
        self.out.push(Problem {
            check: self.check.to_owned(),
            view: Some(self.view.to_owned()),
            field: field.map(str::to_owned),
            model: Some(model.to_owned()),
            message,
        });
    }

    /// The tail of a message about a model that is not configured.
    fn not_configured(&self, model: &str) -> String {
        let names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        format!(
            "{model:?}, which no [[models]] entry configures (configured: {})",
            names.join(", ")
        )
    }
}

/// A reference `model` does not declare; `what` says where the view names it.
fn undeclared(model: &str, reference: &str, what: String) -> String {
    format!("{what} on reference {reference:?}, which [[models]] {model:?} does not declare")
}

fn check_spec(spec: &CheckSpec, views: &Views, models: &Models, out: &mut Vec<Problem>) {
    let view_name = spec.check.view_name();
    match views.get(&view_name) {
        Err(e) => out.push(Problem {
            check: spec.name.clone(),
            view: Some(view_name.clone()),
            field: None,
            model: None,
            message: format!("is not a known view: {e}"),
        }),
        Ok(def) => check_view(
            &def,
            &mut Ctx {
                check: &spec.name,
                view: &view_name,
                views,
                models,
                out,
            },
        ),
    }

    for (model, reference) in &spec.reads {
        let message = match models.get(model) {
            None => {
                let names: Vec<&str> = models.keys().map(String::as_str).collect();
                format!(
                    "custom selection reads model {model:?}, which no [[models]] entry \
                     configures (configured: {})",
                    names.join(", ")
                )
            }
            Some(refs) if !refs.contains_key(reference) => format!(
                "custom selection reads reference {reference:?} of {model}, which [[models]] \
                 {model:?} does not declare"
            ),
            Some(_) => continue,
        };
        out.push(Problem {
            check: spec.name.clone(),
            view: None,
            field: None,
            model: Some(model.clone()),
            message,
        });
    }
}

fn check_view(def: &ViewDef, cx: &mut Ctx<'_>) {
    let models = cx.models;
    let j = match &def.kind {
        ViewKind::Record { model } => {
            if !models.contains_key(model) {
                let m = format!("views model {}", cx.not_configured(model));
                cx.push(None, model, m);
            }
            return;
        }
        ViewKind::Joined(j) => j,
    };
    let subject_refs = models.get(&j.subject_model);
    if subject_refs.is_none() {
        let m = format!(
            "is the subject, of model {}",
            cx.not_configured(&j.subject_model)
        );
        cx.push(Some(j.subject.name()), &j.subject_model, m);
    }
    for join in &j.joins {
        let field = Some(join.field.name());
        // A declared aggregate's paths, against the joined model's record view (when it has
        // one): a misspelt path would sum nothing, silently.
        let records: Vec<_> = cx
            .views
            .iter()
            .filter(|d| matches!(&d.kind, ViewKind::Record { model } if *model == join.model))
            .collect();
        if let (Some(agg), false) = (&join.aggregate, records.is_empty()) {
            for (what, path) in [("sum", &agg.sum), ("sign_by", &agg.sign_by)] {
                let Some(path) = path else { continue };
                if !records.iter().any(|r| r.shows_path(path)) {
                    let names: Vec<&str> = records.iter().map(|r| r.name()).collect();
                    let m = format!(
                        "(aggregate) {what} {path:?}: no field of {}'s record view ({}) shows \
                         that record path",
                        join.model,
                        names.join(", ")
                    );
                    cx.push(field, &join.model, m);
                }
            }
        }
        let Some(refs) = models.get(&join.model) else {
            let m = format!("joins model {}", cx.not_configured(&join.model));
            cx.push(field, &join.model, m);
            continue;
        };
        for key in &join.keys {
            if !refs.contains_key(&key.reference) {
                let what = format!("joins {}", join.model);
                cx.push(
                    field,
                    &join.model,
                    undeclared(&join.model, &key.reference, what),
                );
            }
        }
    }
    for lookup in &j.lookups {
        let field = Some(lookup.field.name());
        if !models.contains_key(&lookup.model) {
            let m = format!("looks up model {}", cx.not_configured(&lookup.model));
            cx.push(field, &lookup.model, m);
        }
        if !j.subject_shows_path(&lookup.path) {
            let m = format!(
                "looks up path {:?}, which is not a field of the subject message {} (of {})",
                lookup.path,
                j.subject_message().full_name(),
                j.subject_model
            );
            cx.push(field, &j.subject_model, m);
        }
        let (Some(reference), Some(refs)) = (&lookup.reference, subject_refs) else {
            continue;
        };
        let m = match refs.get(reference) {
            None => undeclared(
                &j.subject_model,
                reference,
                format!(
                    "triggers on changes of {} through {}",
                    lookup.model, j.subject_model
                ),
            ),
            Some(path) if *path != lookup.path => format!(
                "triggers on changes of {} through reference {reference:?} of {}, which \
                 [[models]] {:?} reads from field {path:?}, not the lookup path {:?}",
                lookup.model, j.subject_model, j.subject_model, lookup.path
            ),
            Some(_) => continue,
        };
        cx.push(field, &j.subject_model, m);
    }
}
