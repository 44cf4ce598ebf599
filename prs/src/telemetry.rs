//! Metric names of the runner, and the events that update them (low-cardinality labels:
//! check names and source names, never subjects).

use overseer_dal::update::Micros;

use crate::runner::RunRecord;

/// Check runs by check and outcome (`pass`, `fail`, `stale`, `error`, `no_subject`).
pub const CHECK_RUNS: &str = "overseer_check_runs_total";
/// Time to detect: source commit of the earliest trigger → verdict, seconds, by check.
pub const TTD_SECONDS: &str = "overseer_time_to_detect_seconds";
/// Wall-clock age of each source's watermark, seconds.
pub const WATERMARK_AGE_SECONDS: &str = "overseer_watermark_age_seconds";
/// Runs waiting in the scheduler.
pub const PENDING_CHECKS: &str = "overseer_pending_checks";
/// Stale runs re-armed, waiting for their sources to be complete.
pub const REARMED_CHECKS: &str = "overseer_rearmed_checks";

/// A run finished.
pub fn run_finished(rec: &RunRecord) {
    metrics::counter!(CHECK_RUNS, "check" => rec.check.clone(), "outcome" => rec.outcome.label())
        .increment(1);
    if let crate::runner::Outcome::Error { message } = &rec.outcome {
        tracing::warn!(check = %rec.check, subject = %rec.subject, eval_us = rec.eval_us,
            error = %message, "check run failed");
    }
    let ttd = (rec.finished_us - rec.first_event_us).max(0) as f64 / 1e6;
    metrics::histogram!(TTD_SECONDS, "check" => rec.check.clone()).record(ttd);
}

/// A source's watermark was read.
pub fn watermark_age(source: &str, age_us: Micros) {
    metrics::gauge!(WATERMARK_AGE_SECONDS, "source" => source.to_owned())
        .set(age_us.max(0) as f64 / 1e6);
}

/// How the DAL's record reads went (cumulative): from maintained folds extended by the
/// updates since, or by folding the history (nothing kept, an older time than the kept
/// fold, or a stale one); the updates folded in all; what the maintained folds hold. And
/// its join reads: from kept members (reading again only the records changed) or reading
/// every member; the member records read in all; what the kept joins hold.
pub fn dal_states(s: &overseer_dal::state::StateStats) {
    for (path, n) in [
        ("maintained", s.extended),
        ("snapshot", s.snapshots.read),
        ("history", s.folded.saturating_sub(s.stale)),
        ("history_stale", s.stale),
    ] {
        metrics::counter!("overseer_dal_record_reads_total", "path" => path).absolute(n);
    }
    let sn = &s.snapshots;
    metrics::counter!("overseer_dal_snapshots_written_total").absolute(sn.written);
    metrics::counter!("overseer_dal_snapshots_stale_total").absolute(sn.stale);
    metrics::counter!("overseer_dal_snapshots_dropped_total").absolute(sn.dropped);
    metrics::counter!("overseer_dal_updates_folded_total").absolute(s.updates_folded);
    metrics::gauge!("overseer_dal_state_bytes").set(s.bytes as f64);
    metrics::gauge!("overseer_dal_state_entries").set(s.entries as f64);
    let j = &s.joins;
    for (path, n) in [
        ("maintained", j.extended),
        ("read_all", j.built.saturating_sub(j.stale)),
        ("read_all_stale", j.stale),
    ] {
        metrics::counter!("overseer_dal_join_reads_total", "path" => path).absolute(n);
    }
    metrics::counter!("overseer_dal_join_members_read_total").absolute(j.members_read);
    metrics::gauge!("overseer_dal_join_bytes").set(j.bytes as f64);
    metrics::gauge!("overseer_dal_join_entries").set(j.entries as f64);
}

/// The scheduler's size after a step: runs pending, and re-armed stale runs.
pub fn pending(n: usize, rearmed: usize) {
    metrics::gauge!(PENDING_CHECKS).set(n as f64);
    metrics::gauge!(REARMED_CHECKS).set(rearmed as f64);
}
