//! Selection: the (check, subject) pairs one update notification triggers.
//!
//! Derived from each check's view unless the check has a custom selection:
//! - an update of the view's **subject model** triggers the check for that record;
//! - an update of a **joined model** (a `join_ref` field of the view) triggers it for every
//!   subject the record has ever referenced through that reference, read from the record's
//!   master document: an entry moved from transfer A to B re-checks both, and a deleted
//!   entry (whose delete event carries no document) still re-checks its transfer;
//! - a **multi-field join** (`(join)` keys matching parts of the subject's id) triggers it
//!   for the subject id its references form (`account_id` and `asset` of an entry name the
//!   wallet `account:asset`), from the master document too: every combination of the
//!   values each reference ever had (usually one), so a moved entry re-checks both wallets;
//! - a **lookup** model (e.g. the asset of a transfer) triggers nothing by default: finding
//!   every transfer of an asset is an index read with a large fan-out. A lookup with
//!   `(lookup_ref)` opts in: a change of the looked-up record triggers the check for every
//!   subject that ever referenced it through that reference of the subject model
//!   (`records_by_ref(payments.transfers, asset, "BTC")`) and was settled at the change
//!   (existed, and had no change of its own within the check's grace of it: those are left
//!   to their own triggers, which see the change): one index read per change, a master
//!   read per subject (a range read for the few changed near it), one run per subject
//!   (every transfer in the asset).
//!
//! The same selection runs live and in replay, so both trigger the same pairs (with the
//! one exception of lookup triggers documented at [`settled_at`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use overseer_dal::Catalog;
use overseer_dal::update::{Micros, UpdateNotification};
use overseer_dal::view::registry::Joined;
use overseer_dal::view::{ViewKind, Views};

use crate::check::{CheckSpec, Registry, SelectFn};
use crate::{Error, Result};

/// How one model triggers one check.
enum Trigger {
    /// The record is the subject.
    Subject,
    /// The subjects are formed by the values the record's master document holds for the
    /// keys of join `join` of the view (one reference: its values).
    Join { view: Arc<Joined>, join: usize },
    /// The record is looked up by the subjects that reference it through `reference` of
    /// `subject_model` (an opted-in lookup trigger).
    LookedUp {
        subject_model: String,
        reference: String,
        /// The check's grace, µs: subjects with changes of their own this close to the
        /// looked-up record's change are left to their own triggers.
        grace_us: Micros,
    },
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
                let joined = Arc::new(j.clone());
                for (i, join) in j.joins.iter().enumerate() {
                    by_model.entry(join.model.clone()).or_default().push((
                        spec.name.clone(),
                        Trigger::Join {
                            view: joined.clone(),
                            join: i,
                        },
                    ));
                }
                for lookup in &j.lookups {
                    if let Some(reference) = &lookup.reference {
                        by_model.entry(lookup.model.clone()).or_default().push((
                            spec.name.clone(),
                            Trigger::LookedUp {
                                subject_model: j.subject_model.clone(),
                                reference: reference.clone(),
                                grace_us: Micros::try_from(spec.grace.as_micros())
                                    .unwrap_or(Micros::MAX),
                            },
                        ));
                    }
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
            // One master read per notification, however many checks join this model, and
            // its references listed once.
            let joins = triggers
                .iter()
                .any(|(_, how)| matches!(how, Trigger::Join { .. }));
            let master = if joins {
                catalog.master(&note.model, &note.record_id).await?
            } else {
                None
            };
            let refs: Vec<(&str, &str)> = master
                .iter()
                .flat_map(|m| m.refs.iter())
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            for (check, how) in triggers {
                match how {
                    Trigger::Subject => {
                        out.insert((check.clone(), note.record_id.clone()));
                    }
                    Trigger::Join { view, join } => {
                        for subject in join_subjects(view, *join, &refs) {
                            out.insert((check.clone(), subject));
                        }
                    }
                    Trigger::LookedUp {
                        subject_model,
                        reference,
                        grace_us,
                    } => {
                        // The fan-out of a lookup trigger: every subject that ever referenced
                        // the changed record and is settled at the change (re-checked as of
                        // the change).
                        let ids = catalog
                            .records_by_ref(subject_model, reference, &note.record_id)
                            .await?;
                        for id in ids {
                            let settled = settled_at(
                                catalog,
                                subject_model,
                                &id,
                                note.event_time_us,
                                *grace_us,
                            )
                            .await?;
                            if settled {
                                out.insert((check.clone(), id));
                            }
                        }
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// Whether a lookup-triggered re-check of `subject` as of `change_us` (+ grace) is due: the
/// subject existed at the change, and has no change of its own within the grace either
/// side of it. A subject created later, or changed that close to the change, is checked by
/// its own trigger, whose evaluation time (its change + grace) is at or past the looked-up
/// change, so that run already sees it; evaluating it at the looked-up change instead
/// would catch it between its own change and what other systems make of that (a
/// completed transfer whose ledger entries are still within the grace).
///
/// Decided on what the catalog holds when the notification is selected: live, a change of
/// the subject within the grace *after* the looked-up change that is not yet ingested does
/// not hold the re-check back (replay, seeing it, does).
async fn settled_at(
    catalog: &dyn Catalog,
    model: &str,
    subject: &str,
    change_us: Micros,
    grace_us: Micros,
) -> Result<bool> {
    let Some(master) = catalog.master(model, subject).await? else {
        return Ok(false);
    };
    if master.first_event_us > change_us {
        return Ok(false);
    }
    let from = change_us.saturating_sub(grace_us);
    if master.last_event_us < from {
        return Ok(true);
    }
    let to = change_us.saturating_add(grace_us);
    let own = catalog.record_updates(model, subject, to).await?;
    Ok(!own.iter().any(|e| e.event_time_us >= from))
}

/// The subjects a joined record names through join `join` of `view`, given every
/// (reference, value) its master document holds: each combination of one value per key
/// (a reference that changed value contributes each), formed into a subject id.
fn join_subjects(view: &Joined, join: usize, refs: &[(&str, &str)]) -> Vec<String> {
    let keys = &view.joins[join].keys;
    let values: Vec<Vec<&str>> = keys
        .iter()
        .map(|k| {
            let mut vs: Vec<&str> = refs
                .iter()
                .filter(|(n, _)| *n == k.reference)
                .map(|(_, v)| *v)
                .collect();
            vs.sort_unstable();
            vs.dedup();
            vs
        })
        .collect();
    // The cartesian product of the keys' values (empty if a key has none).
    let mut combos: Vec<Vec<&str>> = vec![Vec::new()];
    for vs in &values {
        combos = combos
            .iter()
            .flat_map(|c| {
                vs.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push(*v);
                    c
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .filter_map(|c| view.subject_id(&view.joins[join], &c))
        .collect()
}
