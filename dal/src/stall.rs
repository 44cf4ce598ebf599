//! Operations of this process waiting out a transient storage fault now, counted for
//! readiness (`/ready`) and exported as a gauge. Ingestion's storage operations and the
//! runner's steps each keep one [`Stalls`].

use std::sync::atomic::{AtomicI64, Ordering};

/// A count of operations stalled on a storage fault, mirrored in the gauge `gauge`.
#[derive(Debug)]
pub struct Stalls {
    count: AtomicI64,
    gauge: &'static str,
}

impl Stalls {
    /// A counter at 0 whose gauge is named `gauge`.
    pub const fn new(gauge: &'static str) -> Stalls {
        Stalls {
            count: AtomicI64::new(0),
            gauge,
        }
    }

    /// How many are stalled now: 0 when storage holds nothing up.
    pub fn now(&self) -> i64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Counts one operation as stalled until the guard is dropped.
    pub fn enter(&'static self) -> Stalled {
        self.count.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(self.gauge).increment(1.0);
        Stalled(self)
    }
}

/// One operation counted in its [`Stalls`] while it lives.
#[derive(Debug)]
pub struct Stalled(&'static Stalls);

impl Drop for Stalled {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(self.0.gauge).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_a_guard_lives() {
        static S: Stalls = Stalls::new("test_stalled");
        assert_eq!(S.now(), 0);
        let a = S.enter();
        let b = S.enter();
        assert_eq!(S.now(), 2);
        drop(a);
        assert_eq!(S.now(), 1);
        drop(b);
        assert_eq!(S.now(), 0);
    }
}
