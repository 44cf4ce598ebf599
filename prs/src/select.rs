//! Selection: the (check, subject) pairs one update notification triggers.
//!
//! Derived from each check's view unless the check has a custom selection:
//! - an update of the view's **subject model** triggers the check for that record;
//! - an update of a **joined model** (a `join_ref` field of the view) triggers it for every
//!   subject the record has ever referenced through that reference, read from the record's
//!   master document: an entry moved from transfer A to B re-checks both, and a deleted
//!   entry (whose delete event carries no document) still re-checks its transfer;
//! - a **lookup** model (e.g. the asset of a transfer) triggers nothing by default: finding
//!   every transfer of an asset is a scan, not a lookup. Use a custom selection if a change
//!   of the looked-up record must re-check its users.
//!
//! The same selection runs live and in replay, so both trigger the same pairs.

use std::collections::{BTreeMap, BTreeSet};

use overseer_dal::Catalog;
use overseer_dal::update::UpdateNotification;
use overseer_dal::view::{ViewKind, Views};

use crate::check::{CheckSpec, Registry, SelectFn};
use crate::{Error, Result};

/// How one model triggers one check.
enum Trigger {
    /// The record is the subject.
    Subject,
    /// The subjects are the values of this reference in the record's master document.
    Reference(String),
}

/// The selection of a set of checks, precomputed per model.
pub struct Selector {
    /// Model → (check name, how).
    by_model: BTreeMap<String, Vec<(String, Trigger)>>,
    /// Checks with a custom selection see every notification.
    custom: Vec<(String, SelectFn)>,
}

impl Selector {
    /// The selection of the checks of `registry` that `include` admits (live: the enabled
    /// ones; replay: the ones asked for). Every check's view must be known to `views`.
    pub fn new(
        registry: &Registry,
        views: &Views,
        include: impl Fn(&CheckSpec) -> bool,
    ) -> Result<Self> {
        let mut by_model: BTreeMap<String, Vec<(String, Trigger)>> = BTreeMap::new();
        let mut custom = Vec::new();
        for spec in registry.iter().filter(|s| include(s)) {
            let view = views
                .get(&spec.check.view_name())
                .map_err(|e| Error::Config(format!("check {:?}: {e}", spec.name)))?;
            if let Some(f) = &spec.select {
                custom.push((spec.name.clone(), f.clone()));
                continue;
            }
            by_model
                .entry(view.subject_model().to_owned())
                .or_default()
                .push((spec.name.clone(), Trigger::Subject));
            if let ViewKind::Joined(j) = &view.kind {
                for join in &j.joins {
                    by_model.entry(join.model.clone()).or_default().push((
                        spec.name.clone(),
                        Trigger::Reference(join.reference.clone()),
                    ));
                }
            }
        }
        Ok(Selector { by_model, custom })
    }

    /// Whether notifications of `model` can trigger anything (to skip the rest cheaply).
    pub fn triggers(&self, model: &str) -> bool {
        !self.custom.is_empty() || self.by_model.contains_key(model)
    }

    /// The (check, subject) pairs `note` triggers, sorted and unique.
    pub async fn select(
        &self,
        catalog: &dyn Catalog,
        note: &UpdateNotification,
    ) -> Result<Vec<(String, String)>> {
        let mut out = BTreeSet::new();
        for (check, f) in &self.custom {
            for subject in f(note) {
                out.insert((check.clone(), subject));
            }
        }
        if let Some(triggers) = self.by_model.get(&note.model) {
            // One master read per notification, however many checks join this model.
            let mut master = None;
            for (check, how) in triggers {
                match how {
                    Trigger::Subject => {
                        out.insert((check.clone(), note.record_id.clone()));
                    }
                    Trigger::Reference(name) => {
                        if master.is_none() {
                            master = Some(catalog.master(&note.model, &note.record_id).await?);
                        }
                        let refs = master.iter().flatten().flat_map(|m| m.refs.iter());
                        for (n, value) in refs {
                            if n == name {
                                out.insert((check.clone(), value.clone()));
                            }
                        }
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}
