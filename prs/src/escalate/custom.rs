//! The escape hatch: any async function is a target.

use std::future::Future;

use super::events::AttemptFinished;
use super::{Notice, Notifier};
use crate::Result;

/// Delivers notices by calling an async function. Its errors are classified as it says
/// (build them with [`crate::Error::Escalation`] and the `transient` flag you mean, or
/// [`crate::Error::Throttled`] when the target says it is sent too much).
///
/// ```
/// use overseer_prs::escalate::CustomNotifier;
/// let slack = CustomNotifier::new("slack", |notice| async move {
///     println!("{}", notice.summary);
///     Ok(())
/// });
/// ```
pub struct CustomNotifier<F> {
    /// The policy name (metric label, `describe`).
    name: String,
    f: F,
}

impl<F, Fut> CustomNotifier<F>
where
    F: Fn(Notice) -> Fut + Send + Sync,
    Fut: Future<Output = Result<()>> + Send,
{
    /// A target named `name` that delivers by calling `f`.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        CustomNotifier {
            name: name.into(),
            f,
        }
    }
}

impl<F> std::fmt::Debug for CustomNotifier<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomNotifier")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<F, Fut> Notifier for CustomNotifier<F>
where
    F: Fn(Notice) -> Fut + Send + Sync,
    Fut: Future<Output = Result<()>> + Send,
{
    async fn send(&self, notice: &Notice) -> Result<()> {
        let result = (self.f)(notice.clone()).await;
        AttemptFinished {
            policy: &self.name,
            notice,
            result: &result,
        }
        .emit();
        result
    }

    fn describe(&self) -> String {
        format!("custom {}", self.name)
    }

    fn policy(&self) -> &str {
        &self.name
    }
}
