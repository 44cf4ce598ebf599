//! An in-memory notifier that records what it was asked to send.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use overseer_prs::Result;
use overseer_prs::escalate::{Notice, Notifier};

/// One call of [`MemoryNotifier::send`].
#[derive(Clone, Debug)]
pub struct Attempt {
    /// When it was made (Tokio time, so paused-time tests see virtual instants).
    pub at: Instant,
    pub notice: Notice,
    /// Whether it was answered Ok.
    pub delivered: bool,
}

/// Records every notice; succeeds unless failures were scripted with
/// [`MemoryNotifier::fail_next`]. Clones share the record.
#[derive(Clone, Debug, Default)]
pub struct MemoryNotifier {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    attempts: Vec<Attempt>,
    /// Scripted answers for the next attempts.
    faults: VecDeque<Fault>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Transient,
    Definite,
    /// A 429: [`overseer_prs::Error::Throttled`].
    Throttled,
}

impl MemoryNotifier {
    /// A notifier that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` attempts fail, transiently or definitely.
    pub fn fail_next(&self, n: usize, transient: bool) {
        let fault = if transient {
            Fault::Transient
        } else {
            Fault::Definite
        };
        self.state().faults.extend(std::iter::repeat_n(fault, n));
    }

    /// The next `n` attempts are refused as a 429 would be
    /// ([`overseer_prs::Error::Throttled`]).
    pub fn throttle_next(&self, n: usize) {
        self.state()
            .faults
            .extend(std::iter::repeat_n(Fault::Throttled, n));
    }

    /// Every attempt, in order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.state().attempts.clone()
    }

    /// The attempts that were answered Ok, in order.
    pub fn delivered(&self) -> Vec<Attempt> {
        self.state()
            .attempts
            .iter()
            .filter(|a| a.delivered)
            .cloned()
            .collect()
    }
}

#[async_trait::async_trait]
impl Notifier for MemoryNotifier {
    async fn send(&self, notice: &Notice) -> Result<()> {
        let mut state = self.state();
        let fault = state.faults.pop_front();
        state.attempts.push(Attempt {
            at: Instant::now(),
            notice: notice.clone(),
            delivered: fault.is_none(),
        });
        match fault {
            None => Ok(()),
            Some(Fault::Throttled) => Err(overseer_prs::Error::Throttled {
                policy: "memory".to_owned(),
                message: "scripted 429".to_owned(),
            }),
            Some(fault) => {
                let transient = matches!(fault, Fault::Transient);
                Err(overseer_prs::Error::Escalation {
                    policy: "memory".to_owned(),
                    message: format!(
                        "scripted {} failure",
                        if transient { "transient" } else { "definite" }
                    ),
                    transient,
                })
            }
        }
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn policy(&self) -> &str {
        "memory"
    }
}
