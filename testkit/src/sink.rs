//! A [`Sink`] that keeps every run record, for tests and tools that inspect verdicts, and
//! [`verdicts`] to compare the verdicts of two runs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use overseer_dal::update::Micros;
use overseer_prs::runner::{Outcome, RunRecord, Sink};

/// Collects every run record it is given, in order.
#[derive(Debug, Default)]
pub struct CollectSink(Mutex<Vec<RunRecord>>);

impl CollectSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// The records so far.
    pub fn runs(&self) -> Vec<RunRecord> {
        self.0.lock().expect("sink lock").clone()
    }

    /// How many records so far.
    pub fn len(&self) -> usize {
        self.0.lock().expect("sink lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl Sink for CollectSink {
    async fn record(&self, run: &RunRecord) -> overseer_prs::Result<()> {
        self.0.lock().expect("sink lock").push(run.clone());
        Ok(())
    }
}

/// A run's verdict as text, comparable across runs and instances: `pass`, `fail: <message>`,
/// or the outcome's debug form.
pub fn verdict(r: &RunRecord) -> String {
    match &r.outcome {
        Outcome::Pass => "pass".into(),
        Outcome::Fail { message, .. } => format!("fail: {message}"),
        other => format!("{other:?}"),
    }
}

/// Every (check, subject, evaluation time) run → its [`verdict`]. Panics if one of them
/// was given two different verdicts (a view as of a time is the same however often and
/// wherever it is built, once the history up to it is written).
pub fn verdicts(runs: &[RunRecord]) -> BTreeMap<(String, String, Micros), String> {
    let mut all = BTreeMap::new();
    for r in runs {
        let v = verdict(r);
        let prev = all.insert((r.check.clone(), r.subject.clone(), r.eval_us), v.clone());
        assert!(
            prev.as_ref().is_none_or(|p| *p == v),
            "{} {} as of {}: {prev:?} then {v}",
            r.check,
            r.subject,
            r.eval_us
        );
    }
    all
}
