//! A [`Sink`] that keeps every run record, for tests and tools that inspect verdicts.

use std::sync::Mutex;

use overseer_prs::runner::{RunRecord, Sink};

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
