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

fn check_spec(spec: &CheckSpec, views: &Views, models: &Models, out: &mut Vec<Problem>) {
    let view_name = spec.check.view_name();
    let problem = |field: Option<&str>, model: Option<&str>, message: String| Problem {
        check: spec.name.clone(),
        view: Some(view_name.clone()),
        field: field.map(str::to_owned),
        model: model.map(str::to_owned),
        message,
    };
    let not_configured = |model: &str| {
        format!(
            "{model:?}, which no [[models]] entry configures (configured: {})",
            {
                let names: Vec<&str> = models.keys().map(String::as_str).collect();
                names.join(", ")
            }
        )
    };
    // A reference `model` must declare: `what` says where the view names it.
    let undeclared = |model: &str, reference: &str, what: String| {
        format!("{what} on reference {reference:?}, which [[models]] {model:?} does not declare")
    };

    match views.get(&view_name) {
        Err(e) => out.push(problem(None, None, format!("is not a known view: {e}"))),
        Ok(def) => check_view(&def, models, out, &problem, &not_configured, &undeclared),
    }

    for (model, reference) in &spec.reads {
        let p = |message| Problem {
            check: spec.name.clone(),
            view: None,
            field: None,
            model: Some(model.clone()),
            message,
        };
        match models.get(model) {
            None => out.push(p(format!(
                "custom selection reads model {}",
                not_configured(model)
            ))),
            Some(refs) if !refs.contains_key(reference) => out.push(p(format!(
                "custom selection reads reference {reference:?} of {model}, which [[models]] \
                 {model:?} does not declare"
            ))),
            Some(_) => {}
        }
    }
}

fn check_view(
    def: &ViewDef,
    models: &Models,
    out: &mut Vec<Problem>,
    problem: &dyn Fn(Option<&str>, Option<&str>, String) -> Problem,
    not_configured: &dyn Fn(&str) -> String,
    undeclared: &dyn Fn(&str, &str, String) -> String,
) {
    let j = match &def.kind {
        ViewKind::Record { model } => {
            if !models.contains_key(model) {
                out.push(problem(
                    None,
                    Some(model),
                    format!("views model {}", not_configured(model)),
                ));
            }
            return;
        }
        ViewKind::Joined(j) => j,
    };
    let subject_field = j.subject.name();
    let subject_refs = models.get(&j.subject_model);
    if subject_refs.is_none() {
        out.push(problem(
            Some(subject_field),
            Some(&j.subject_model),
            format!(
                "is the subject, of model {}",
                not_configured(&j.subject_model)
            ),
        ));
    }
    for join in &j.joins {
        let field = join.field.name();
        let Some(refs) = models.get(&join.model) else {
            out.push(problem(
                Some(field),
                Some(&join.model),
                format!("joins model {}", not_configured(&join.model)),
            ));
            continue;
        };
        for key in &join.keys {
            if !refs.contains_key(&key.reference) {
                out.push(problem(
                    Some(field),
                    Some(&join.model),
                    undeclared(&join.model, &key.reference, format!("joins {}", join.model)),
                ));
            }
        }
    }
    for lookup in &j.lookups {
        let field = lookup.field.name();
        if !models.contains_key(&lookup.model) {
            out.push(problem(
                Some(field),
                Some(&lookup.model),
                format!("looks up model {}", not_configured(&lookup.model)),
            ));
        }
        if !j.subject_shows_path(&lookup.path) {
            out.push(problem(
                Some(field),
                Some(&j.subject_model),
                format!(
                    "looks up path {:?}, which is not a field of the subject message {} \
                     (of {})",
                    lookup.path,
                    j.subject_message().full_name(),
                    j.subject_model
                ),
            ));
        }
        let (Some(reference), Some(refs)) = (&lookup.reference, subject_refs) else {
            continue;
        };
        match refs.get(reference) {
            None => out.push(problem(
                Some(field),
                Some(&j.subject_model),
                undeclared(
                    &j.subject_model,
                    reference,
                    format!(
                        "triggers on changes of {} through {}",
                        lookup.model, j.subject_model
                    ),
                ),
            )),
            Some(path) if *path != lookup.path => out.push(problem(
                Some(field),
                Some(&j.subject_model),
                format!(
                    "triggers on changes of {} through reference {reference:?} of {}, which \
                     [[models]] {:?} reads from field {path:?}, not the lookup path {:?}",
                    lookup.model, j.subject_model, j.subject_model, lookup.path
                ),
            )),
            Some(_) => {}
        }
    }
}
