//! `overseer bench`: the generated payments workload through the real pipeline, measured.
//!
//! Three phases, each on a fresh store and catalog, each its own live run
//! ([`crate::live::run`]: ingestion per source, the runner with the shipped checks):
//!
//! - **throughput**: `--updates` updates offered as fast as the pipeline takes them (or at
//!   `--rate`), sources in sync. Sustained ingest rate (every update stored, indexed and
//!   notified) and end-to-end rate (every triggered check run done), with the baselines
//!   measured in the same run on the same bytes: a sequential write of the raw events to
//!   the same disk with the same number of fsyncs as the pipeline's segments, and a JSON
//!   decode of each event alone.
//! - **latency**: `--paced-secs` of traffic at `--paced-rate`, sources in sync, grace
//!   `--sync-grace-ms`,
//!   freshness-aware: time to detect (verdict − source commit) of the injected faults, and
//!   the same for every run.
//! - **accuracy**: the same paced traffic with the ledger lagging (`--lag`, `--lag-ms`)
//!   and the checks' `--grace-ms`, once per `--strategy`, on identical traffic: recall and
//!   false alarms against the ground truth, and time to detect.
//!
//! Each phase reports its peak RSS (the peak is reset before it; the generated events are
//! held in memory and included) and updates per object-store PUT.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::workload::live::Clock;
use crate::workload::{Lag, Score, System, Workload, WorkloadConfig};
use overseer_dal::update::{Micros, now_us};
use overseer_ingestion::pipeline::Storage;
use overseer_prs::escalate::{CustomNotifier, Notice, Notifier};

use crate::bench_real::Stack;
use crate::demo::DemoStrategy;
use crate::live::quantile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    Throughput,
    Latency,
    Accuracy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// In-process sources, a local directory store, the embedded catalog: no servers.
    Embedded,
    /// The broker (tansu), the S3 server (garage) and a PostgreSQL catalog, started
    /// locally from `scripts/` (install them with `scripts/install-test-deps.sh`).
    Real,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LagKind {
    /// The same lag for every ledger event.
    Constant,
    /// Between 0 and `--lag-ms`, drifting.
    Jitter,
}

/// `overseer bench` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    pub(crate) mode: Mode,
    /// The server scripts of real mode (default: the repository's `scripts/`).
    #[arg(long)]
    scripts: Option<PathBuf>,
    /// Where the phases keep their data (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Phases to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Phase::Throughput, Phase::Latency, Phase::Accuracy])]
    phases: Vec<Phase>,
    /// Updates in the throughput phase.
    #[arg(long, default_value_t = 1_000_000)]
    updates: u64,
    /// Updates per second offered in the throughput phase; 0: as fast as the pipeline
    /// takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Updates per second offered in the latency and accuracy phases.
    #[arg(long, default_value_t = 5_000.0)]
    paced_rate: f64,
    /// Seconds of traffic in the latency and accuracy phases.
    #[arg(long, default_value_t = 10.0)]
    paced_secs: f64,
    /// Strategies the accuracy phase compares, on the same traffic (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [DemoStrategy::Immediate, DemoStrategy::FixedDelay, DemoStrategy::FreshnessAware])]
    strategy: Vec<DemoStrategy>,
    /// The ledger's lag in the accuracy phase, ms (the maximum, when jittered).
    #[arg(long, default_value_t = 1_000)]
    lag_ms: u64,
    #[arg(long, value_enum, default_value_t = LagKind::Jitter)]
    lag: LagKind,
    /// Partitions of the ledger's topic in the accuracy phase: each record's events go to
    /// one by its id.
    #[arg(long, default_value_t = 1)]
    ledger_partitions: u32,
    /// How much later than the others the last of the ledger's partitions delivers in the
    /// accuracy phase, ms (with `--ledger-partitions` above 1).
    #[arg(long, default_value_t = 0)]
    skew_ms: u64,
    /// The checks' grace in the accuracy phase, ms.
    #[arg(long, default_value_t = 2_000)]
    grace_ms: u64,
    /// The checks' grace in the throughput and latency phases (sources in sync), ms: a
    /// transfer's ledger entries commit up to 14 ms after it is created (complete 2–8 ms
    /// after creation, ledger 1–5 ms after that), so a check that looks sooner sees them
    /// missing.
    #[arg(long, default_value_t = 20)]
    sync_grace_ms: u64,
    /// With the fixed-delay strategy: how long after its trigger a check runs, ms
    /// (default: the grace).
    #[arg(long)]
    delay_ms: Option<u64>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Accounts the transfers move money between.
    #[arg(long, default_value_t = 10_000)]
    accounts: u32,
    /// Fraction of transfers with an injected fault.
    #[arg(long, default_value_t = 0.01)]
    fault_rate: f64,
    /// Fraction of events delivered twice.
    #[arg(long, default_value_t = 0.01)]
    duplicate_rate: f64,
    /// Budget of the maintained record states, MiB (`[dal] state_mib`; 0: every read folds
    /// the record's history, as before they existed).
    #[arg(long, default_value_t = overseer_dal::state::DEFAULT_STATE_BYTES >> 20)]
    state_mib: u64,
    /// A snapshot every this many updates of a record (`[dal] snapshot_every`; 0: none).
    #[arg(long, default_value_t = overseer_dal::snapshot::DEFAULT_SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// Also write the results as one JSON document to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Args {
    pub(crate) fn scripts_dir(&self) -> PathBuf {
        self.scripts
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts"))
    }
}

/// p50/p90/p99/max of a latency, µs.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Quantiles {
    count: usize,
    p50_us: Micros,
    p90_us: Micros,
    p99_us: Micros,
    max_us: Micros,
}

impl Quantiles {
    fn of(mut v: Vec<Micros>) -> Option<Quantiles> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(Quantiles {
            count: v.len(),
            p50_us: quantile(&v, 0.5),
            p90_us: quantile(&v, 0.9),
            p99_us: quantile(&v, 0.99),
            max_us: quantile(&v, 1.0),
        })
    }

    fn text(q: &Option<Quantiles>) -> String {
        match q {
            Some(q) => format!(
                "p50 {} p90 {} p99 {} max {}",
                ms(q.p50_us),
                ms(q.p90_us),
                ms(q.p99_us),
                ms(q.max_us)
            ),
            None => "-".into(),
        }
    }
}

fn ms(us: Micros) -> String {
    if us.abs() < 10_000_000 {
        format!("{:.0} ms", us as f64 / 1e3)
    } else {
        format!("{:.1} s", us as f64 / 1e6)
    }
}

/// The traffic of a phase.
#[derive(Clone, Debug, Serialize)]
struct Traffic {
    transfers: u64,
    /// Distinct updates (events minus redeliveries).
    updates: u64,
    /// Events delivered, redeliveries included.
    deliveries: u64,
    raw_bytes: u64,
    /// Updates per second offered; None: as fast as the pipeline takes them.
    offered_per_s: Option<f64>,
    ledger_lag: String,
    grace_ms: u64,
}

/// One phase's live run, measured.
#[derive(Clone, Debug, Serialize)]
struct Measured {
    /// Real mode: the run's name (topics `NAME-payments`, `NAME-ledger`; catalog schema
    /// `bench_NAME`; S3 prefix `bench/NAME`).
    run: Option<String>,
    phase: Phase,
    strategy: String,
    traffic: Traffic,
    /// First arrival to every update stored, indexed and notified.
    ingest_s: Option<f64>,
    ingest_updates_per_s: Option<f64>,
    /// First arrival to every triggered check run done.
    end_to_end_s: f64,
    end_to_end_updates_per_s: f64,
    runs: u64,
    runs_per_s: f64,
    /// Faults: first failing verdict − first triggering source commit.
    ttd: Option<Quantiles>,
    /// Every run: verdict − first triggering source commit.
    run_latency: Option<Quantiles>,
    expected_failures: usize,
    detected: usize,
    recall: f64,
    false_alarms: usize,
    /// A few false alarms: check, subject, message.
    false_alarm_examples: Vec<String>,
    stale_runs: usize,
    error_runs: usize,
    duplicates_ignored: u64,
    /// Segments written = object-store PUTs (the catalog is not in the store).
    segments: u64,
    updates_per_put: f64,
    segment_bytes: u64,
    /// Peak RSS during the phase (reset before it), MiB; None where unsupported.
    peak_rss_mib: Option<f64>,
    /// RSS when the phase's run started, MiB: mostly the generated traffic, which the
    /// sources hold in memory for the whole run.
    start_rss_mib: Option<f64>,
    incidents_opened: u64,
    /// How the runner's reads went.
    reads: Reads,
    problems: Vec<String>,
}

/// How the runner's record and join reads went (see `overseer_dal::state`).
#[derive(Clone, Debug, Default, Serialize)]
struct Reads {
    /// Record reads from a maintained fold / from a snapshot / by folding the history (of
    /// those, stale).
    records_maintained: u64,
    records_from_snapshot: u64,
    records_folded: u64,
    records_stale: u64,
    updates_folded: u64,
    /// Join reads from kept members / reading every member (of those, stale).
    joins_maintained: u64,
    joins_read_all: u64,
    joins_stale: u64,
    /// Member records read by join reads.
    join_members_read: u64,
    /// Snapshots written.
    snapshots_written: u64,
}

impl Reads {
    fn of(s: &overseer_dal::state::StateStats) -> Self {
        Reads {
            records_maintained: s.extended,
            records_from_snapshot: s.snapshots.read,
            records_folded: s.folded,
            records_stale: s.stale,
            updates_folded: s.updates_folded,
            joins_maintained: s.joins.extended,
            joins_read_all: s.joins.built,
            joins_stale: s.joins.stale,
            join_members_read: s.joins.members_read,
            snapshots_written: s.snapshots.written,
        }
    }
}

/// Baselines on the throughput phase's bytes and disk.
#[derive(Clone, Debug, Serialize)]
struct Baselines {
    /// Sequential write of every raw event to one file in the data directory, with as
    /// many fsyncs as the pipeline wrote segments.
    disk_write_updates_per_s: f64,
    disk_write_mib_per_s: f64,
    /// `serde_json::from_slice` of every raw event to a `Value`, one core.
    json_decode_updates_per_s: f64,
    /// Real mode: a consumer that only reads the ledger's topic (no decode, no storage),
    /// messages per second.
    broker_consume_only_per_s: Option<f64>,
}

#[derive(Serialize)]
struct Results {
    mode: &'static str,
    machine: Machine,
    seed: u64,
    phases: Vec<Measured>,
    baselines: Option<Baselines>,
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    os: &'static str,
    version: &'static str,
}

/// Where a phase's runs happen.
struct Env<'a> {
    stack: Option<&'a Stack>,
    /// Names each real-mode run (topics, schema, prefix, groups).
    runs: std::cell::Cell<u32>,
    state_mib: u64,
    snapshot_every: u64,
}

pub(crate) async fn run(args: Args, stack: Option<Stack>) -> Result<()> {
    if args.strategy.is_empty() {
        bail!("--strategy: name at least one strategy");
    }
    if !(args.paced_rate > 0.0 && args.paced_secs > 0.0) {
        bail!("--paced-rate and --paced-secs must be > 0");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be ≥ 0 (0: as fast as the pipeline takes them)");
    }
    if args.ledger_partitions == 0 {
        bail!("--ledger-partitions must be ≥ 1");
    }
    if args.ledger_partitions > 1 && matches!(args.mode, Mode::Real) {
        bail!(
            "--ledger-partitions: real mode publishes the ledger to a topic of one partition \
             (the partition-skew profile is embedded only)"
        );
    }
    if args.skew_ms > 0 && args.ledger_partitions < 2 {
        bail!("--skew-ms needs --ledger-partitions of 2 or more (one partition behind the others)");
    }
    let (dir, _tmp) = crate::live::data_dir(args.dir.as_deref())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mode = match (&args.mode, &stack) {
        (Mode::Embedded, _) => {
            println!(
                "overseer bench — embedded mode: in-process sources, local store, embedded \
                 catalog; {cpus} CPUs; data in {}",
                dir.display()
            );
            "embedded"
        }
        (Mode::Real, Some(_)) => {
            println!(
                "overseer bench — real mode: payments through PostgreSQL's WAL (pgoutput), the \
                 ledger through the local tansu broker, garage S3 store, PostgreSQL catalog; \
                 {cpus} CPUs"
            );
            "real"
        }
        (Mode::Real, None) => bail!("real mode needs its servers started"),
    };
    let env = Env {
        stack: stack.as_ref(),
        runs: std::cell::Cell::new(0),
        state_mib: args.state_mib,
        snapshot_every: args.snapshot_every,
    };
    let per_transfer = updates_per_transfer(&args)?;
    let mut results = Results {
        mode,
        machine: Machine {
            cpus,
            os: std::env::consts::OS,
            version: env!("CARGO_PKG_VERSION"),
        },
        seed: args.seed,
        phases: Vec::new(),
        baselines: None,
    };
    for (i, phase) in args.phases.iter().enumerate() {
        let phase_dir = dir.join(format!("{i}-{phase:?}").to_lowercase());
        match phase {
            Phase::Throughput => {
                let transfers = (args.updates as f64 / per_transfer).ceil() as u64;
                let tps = if args.rate > 0.0 {
                    args.rate / per_transfer
                } else {
                    UNPACED_TRANSFERS_PER_S
                };
                let w = workload(&args, transfers, tps, Lag::None);
                let (m, w) = measure(
                    &env,
                    &phase_dir.join("pipeline"),
                    &RunSpec {
                        phase: *phase,
                        strategy: DemoStrategy::FreshnessAware,
                        grace_ms: args.sync_grace_ms,
                        delay_ms: 0,
                        offered_per_s: (args.rate > 0.0).then_some(args.rate),
                    },
                    &w,
                )
                .await?;
                print_measured(&m);
                let mut b = baselines(&phase_dir.join("baseline"), &w, m.segments)?;
                if let (Some(stack), Some(run)) = (env.stack, &m.run) {
                    let (brokers, run) = (stack.brokers().to_owned(), run.clone());
                    let n = w.events(System::Ledger).len() as u64;
                    b.broker_consume_only_per_s = Some(
                        tokio::task::spawn_blocking(move || {
                            crate::bench_real::consume_only(&brokers, &run, n)
                        })
                        .await??,
                    );
                }
                print_baselines(&b, &m);
                results.baselines = Some(b);
                results.phases.push(m);
            }
            Phase::Latency => {
                let (transfers, tps) = paced(&args, per_transfer);
                let w = workload(&args, transfers, tps, Lag::None);
                let (m, _) = measure(
                    &env,
                    &phase_dir,
                    &RunSpec {
                        phase: *phase,
                        strategy: DemoStrategy::FreshnessAware,
                        grace_ms: args.sync_grace_ms,
                        delay_ms: 0,
                        offered_per_s: Some(args.paced_rate),
                    },
                    &w,
                )
                .await?;
                print_measured(&m);
                results.phases.push(m);
            }
            Phase::Accuracy => {
                let (transfers, tps) = paced(&args, per_transfer);
                let lag = Duration::from_millis(args.lag_ms);
                let lag = match args.lag {
                    _ if lag.is_zero() => Lag::None,
                    LagKind::Constant => Lag::Constant(lag),
                    LagKind::Jitter => Lag::Jitter { max: lag },
                };
                let w = WorkloadConfig {
                    ledger_partitions: args.ledger_partitions,
                    partition_skew: Duration::from_millis(args.skew_ms),
                    ..workload(&args, transfers, tps, lag)
                };
                for (k, strategy) in args.strategy.iter().enumerate() {
                    let (m, _) = measure(
                        &env,
                        &phase_dir.join(format!("{k}")),
                        &RunSpec {
                            phase: *phase,
                            strategy: *strategy,
                            grace_ms: args.grace_ms,
                            delay_ms: args.delay_ms.unwrap_or(args.grace_ms),
                            offered_per_s: Some(args.paced_rate),
                        },
                        &w,
                    )
                    .await?;
                    print_measured(&m);
                    results.phases.push(m);
                }
                print_accuracy(&results.phases);
            }
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    let problems: Vec<String> = results
        .phases
        .iter()
        .flat_map(|m| {
            m.problems
                .iter()
                .map(move |p| format!("{:?} {}: {p}", m.phase, m.strategy))
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("bench: {p}");
    }
    bail!("the bench found {} problem(s)", problems.len())
}

/// Transfers per second of commit time when the throughput phase is unpaced: every
/// event's arrival is due at once, and sources deliver as fast as ingestion accepts.
const UNPACED_TRANSFERS_PER_S: f64 = 1e6;

/// Distinct updates one transfer generates, on average (from a sample of the traffic).
fn updates_per_transfer(args: &Args) -> Result<f64> {
    let w = Workload::generate(workload(args, 2_000, 1_000.0, Lag::None))?;
    Ok(w.unique_events() as f64 / 2_000.0)
}

/// Transfers and transfers/s of the paced phases.
fn paced(args: &Args, per_transfer: f64) -> (u64, f64) {
    let tps = args.paced_rate / per_transfer;
    (((tps * args.paced_secs).ceil() as u64).max(1), tps)
}

fn workload(args: &Args, transfers: u64, tps: f64, lag: Lag) -> WorkloadConfig {
    WorkloadConfig {
        seed: args.seed,
        // Replaced per run: the traffic starts when the run does.
        start_us: 0,
        transfers,
        accounts: args.accounts,
        fault_rate: args.fault_rate,
        duplicate_rate: args.duplicate_rate,
        ledger_lag: lag,
        transfers_per_sec: tps,
        ..WorkloadConfig::default()
    }
}

/// How one live run of a phase is set up.
struct RunSpec {
    phase: Phase,
    strategy: DemoStrategy,
    grace_ms: u64,
    /// The fixed delay (fixed-delay strategy).
    delay_ms: u64,
    /// Updates per second offered; None: as fast as taken.
    offered_per_s: Option<f64>,
}

/// Runs the traffic of `w` live in a fresh `dir` under `strategy`, and measures it.
async fn measure(
    env: &Env<'_>,
    dir: &Path,
    spec: &RunSpec,
    w: &WorkloadConfig,
) -> Result<(Measured, Arc<Workload>)> {
    let &RunSpec {
        phase,
        strategy,
        grace_ms,
        delay_ms,
        offered_per_s,
    } = spec;
    std::fs::create_dir_all(dir)?;
    let run_name = env.stack.map(|_| {
        env.runs.set(env.runs.get() + 1);
        format!("b{}x{}", std::process::id(), env.runs.get())
    });
    let cfg = match (env.stack, &run_name) {
        (Some(stack), Some(run)) => {
            let mut cfg = stack.config(run)?;
            crate::demo::set_checks(&mut cfg, "bench", grace_ms, strategy, delay_ms)?;
            stack.prepare(run).await?;
            cfg
        }
        _ => crate::demo::live_config(dir, "bench", grace_ms, strategy, delay_ms)?,
    };
    let mut cfg = cfg;
    cfg.ingestion.dal.state_mib = env.state_mib;
    cfg.ingestion.dal.snapshot_every = env.snapshot_every;
    let storage = Storage::open(&cfg).await?;
    if !storage.catalog.source_states().await?.is_empty() {
        bail!("{} already holds data: use an empty --dir", dir.display());
    }
    // The same traffic (same seed and shape), starting half a second from now.
    let clock = Clock::starting_at(now_us());
    let start_us = (clock.origin_us / 1000 + 500) * 1000;
    let w = Arc::new(Workload::generate(WorkloadConfig {
        start_us,
        ..w.clone()
    })?);
    let opened = Arc::new(AtomicU64::new(0));
    let counter = opened.clone();
    let notifier: Arc<dyn Notifier> = Arc::new(CustomNotifier::new("count", move |n: Notice| {
        if n.action == overseer_prs::escalate::Action::Trigger {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        async { Ok(()) }
    }));
    let patience = Duration::from_millis(grace_ms + delay_ms + 600_000)
        + Duration::from_micros(w.max_lag_us(System::Ledger) as u64);
    let rss_reset = reset_peak_rss();
    let start_rss_mib = status_mib("VmRSS:");
    let mut producers = tokio::task::JoinSet::new();
    // The connector heartbeats of real mode go on until the run is measured.
    let stop_producers = tokio_util::sync::CancellationToken::new();
    let feeds = match (env.stack, &run_name) {
        (Some(stack), Some(run)) => {
            let mut feeds = Vec::new();
            for system in System::ALL {
                let src = cfg
                    .sources
                    .iter()
                    .find(|s| s.name == system.name())
                    .context("a real-mode source")?;
                let delivered = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let paced = offered_per_s.is_some();
                match system {
                    System::Payments => {
                        producers.spawn(crate::bench_real::write_payments(
                            w.clone(),
                            clock,
                            paced,
                            delivered.clone(),
                        ));
                    }
                    System::Ledger => {
                        producers.spawn(crate::bench_real::produce(
                            stack.brokers().to_owned(),
                            crate::bench_real::topic(run, system),
                            w.clone(),
                            system,
                            clock,
                            paced,
                            delivered.clone(),
                            stop_producers.clone(),
                        ));
                    }
                }
                feeds.push(crate::live::Feed {
                    system,
                    source: overseer_ingestion::source::build(src)?,
                    delivered,
                });
            }
            feeds
        }
        _ => crate::live::in_process(&w, clock),
    };
    let mut live =
        crate::live::run(&cfg, &storage, w.clone(), clock, feeds, notifier, patience).await?;
    stop_producers.cancel();
    while let Some(p) = producers.join_next().await {
        p.context("a producer task")?
            .context("producing to the broker")?;
    }
    let peak_rss_mib = if rss_reset {
        status_mib("VmHWM:")
    } else {
        None
    };

    let updates = w.unique_events() as u64;
    let secs = |until: Micros| (until - start_us).max(1) as f64 / 1e6;
    let score = Score::of_verdicts(&w, &live.verdicts);
    let total = |f: fn(&overseer_ingestion::pipeline::SourceReport) -> u64| {
        live.reports.values().map(f).sum::<u64>()
    };
    let (ingested, dups, quarantined, segments, bytes) = (
        total(|r| r.updates),
        total(|r| r.duplicates),
        total(|r| r.quarantined),
        total(|r| r.segments),
        total(|r| r.bytes),
    );
    let mut problems = Vec::new();
    // Real mode writes the payments to PostgreSQL, whose WAL does not redeliver.
    let redelivered = if env.stack.is_some() {
        w.events(System::Ledger)
            .iter()
            .filter(|e| e.duplicate)
            .count()
    } else {
        w.duplicates()
    } as u64;
    if ingested != updates || dups != redelivered || quarantined != 0 {
        problems.push(format!(
            "ingestion kept {ingested} updates, ignored {dups} duplicates and quarantined \
             {quarantined}; the traffic has {updates} distinct events and {redelivered} \
             redeliveries"
        ));
    }
    problems.extend(live.timed_out.clone());
    if !score.errors.is_empty() {
        problems.push(format!(
            "{} check runs ended in an error",
            score.errors.len()
        ));
    }
    if strategy == DemoStrategy::FreshnessAware {
        if !score.missed.is_empty() {
            problems.push(format!("{} injected faults missed", score.missed.len()));
        }
        if !score.false_alarms.is_empty() {
            problems.push(format!(
                "{} false alarms under the freshness-aware strategy",
                score.false_alarms.len()
            ));
        }
    }
    let runs = live.verdicts.runs();
    let e2e = secs(live.drained_us);
    let ingest_s = live.ingested_us.map(secs);
    let mut lag = match w.config.ledger_lag {
        Lag::None => "in sync".to_owned(),
        Lag::Constant(d) => format!("ledger {} ms behind", d.as_millis()),
        Lag::Jitter { max } => format!("ledger 0–{} ms behind, drifting", max.as_millis()),
    };
    if w.config.ledger_partitions > 1 {
        lag.push_str(&format!(
            "; {} ledger partitions, the last {} ms behind the others",
            w.config.ledger_partitions,
            w.config.partition_skew.as_millis()
        ));
    }
    let m = Measured {
        run: run_name,
        phase,
        strategy: strategy_name(strategy, delay_ms),
        traffic: Traffic {
            transfers: w.config.transfers,
            updates,
            deliveries: w.deliveries() as u64,
            raw_bytes: raw_bytes(&w),
            offered_per_s,
            ledger_lag: lag,
            grace_ms,
        },
        ingest_s,
        ingest_updates_per_s: ingest_s.map(|s| updates as f64 / s),
        end_to_end_s: e2e,
        end_to_end_updates_per_s: updates as f64 / e2e,
        runs,
        runs_per_s: runs as f64 / e2e,
        ttd: Quantiles::of(score.detected.values().copied().collect()),
        run_latency: Quantiles::of(std::mem::take(&mut live.verdicts.latencies_us)),
        expected_failures: score.expected,
        detected: score.detected.len(),
        recall: score.recall(),
        false_alarms: score.false_alarms.len(),
        false_alarm_examples: score
            .false_alarms
            .iter()
            .take(3)
            .map(|((c, s), m)| format!("{c} {s}: {m}"))
            .collect(),
        stale_runs: score.stale.len(),
        error_runs: score.errors.len(),
        duplicates_ignored: dups,
        segments,
        updates_per_put: if segments == 0 {
            0.0
        } else {
            ingested as f64 / segments as f64
        },
        segment_bytes: bytes,
        peak_rss_mib,
        start_rss_mib,
        incidents_opened: opened.load(Ordering::Relaxed),
        reads: Reads::of(&live.dal),
        problems,
    };
    Ok((m, w))
}

fn strategy_name(s: DemoStrategy, delay_ms: u64) -> String {
    match s {
        DemoStrategy::FreshnessAware => "freshness-aware".into(),
        DemoStrategy::Immediate => "immediate".into(),
        DemoStrategy::FixedDelay => format!("fixed-delay {delay_ms} ms"),
    }
}

fn raw_bytes(w: &Workload) -> u64 {
    System::ALL
        .iter()
        .flat_map(|s| w.events(*s))
        .map(|e| e.raw.len() as u64)
        .sum()
}

/// The baselines on `w`'s bytes, in `dir` (the same disk as the pipeline's data).
fn baselines(dir: &Path, w: &Workload, segments: u64) -> Result<Baselines> {
    std::fs::create_dir_all(dir)?;
    let events: Vec<&[u8]> = System::ALL
        .iter()
        .flat_map(|s| w.events(*s))
        .filter(|e| !e.duplicate)
        .map(|e| &e.raw[..])
        .collect();
    let n = events.len().max(1);
    let per_sync = n.div_ceil(segments.max(1) as usize);
    let path = dir.join("raw-events");
    let t = Instant::now();
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let mut bytes = 0u64;
    for (i, e) in events.iter().enumerate() {
        f.write_all(e)?;
        f.write_all(b"\n")?;
        bytes += e.len() as u64 + 1;
        if (i + 1) % per_sync == 0 || i + 1 == n {
            f.flush()?;
            f.get_ref().sync_data()?;
        }
    }
    let write_s = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;

    let t = Instant::now();
    let mut fields = 0usize;
    for e in &events {
        let v: serde_json::Value = serde_json::from_slice(e).context("decoding a raw event")?;
        fields += v.as_object().map_or(0, |o| o.len());
    }
    let decode_s = t.elapsed().as_secs_f64();
    std::hint::black_box(fields);
    Ok(Baselines {
        disk_write_updates_per_s: n as f64 / write_s,
        disk_write_mib_per_s: bytes as f64 / write_s / (1 << 20) as f64,
        json_decode_updates_per_s: n as f64 / decode_s,
        broker_consume_only_per_s: None,
    })
}

fn print_measured(m: &Measured) {
    let t = &m.traffic;
    let offered = match t.offered_per_s {
        Some(r) => format!("{r:.0} updates/s offered"),
        None => "offered as fast as taken".into(),
    };
    println!(
        "\n{:?} — {}: {} updates ({} transfers, {} deliveries, {:.1} MiB), {offered}; {}; grace {} ms",
        m.phase,
        m.strategy,
        t.updates,
        t.transfers,
        t.deliveries,
        t.raw_bytes as f64 / (1 << 20) as f64,
        t.ledger_lag,
        t.grace_ms
    );
    if let (Some(s), Some(r)) = (m.ingest_s, m.ingest_updates_per_s) {
        println!(
            "  ingest        {r:>10.0} updates/s  ({s:.1} s to store, index and notify every update)"
        );
    }
    println!(
        "  end to end    {:>10.0} updates/s  ({:.1} s to every check run done; {} runs, {:.0} runs/s)",
        m.end_to_end_updates_per_s, m.end_to_end_s, m.runs, m.runs_per_s
    );
    println!("  time to detect   {}", Quantiles::text(&m.ttd));
    println!("  every run        {}", Quantiles::text(&m.run_latency));
    println!(
        "  accuracy      recall {:.2} ({}/{}), {} false alarms, {} stale, {} errors; {} incidents opened",
        m.recall,
        m.detected,
        m.expected_failures,
        m.false_alarms,
        m.stale_runs,
        m.error_runs,
        m.incidents_opened
    );
    let rss = match (m.peak_rss_mib, m.start_rss_mib) {
        (Some(p), Some(s)) => {
            format!("{p:.0} MiB ({s:.0} MiB at the start: the generated traffic)")
        }
        (Some(p), None) => format!("{p:.0} MiB"),
        _ => "-".into(),
    };
    println!(
        "  storage       {} segments (PUTs), {:.0} updates per PUT; peak RSS {rss}",
        m.segments, m.updates_per_put
    );
    let r = &m.reads;
    println!(
        "  reads         records: {} from maintained folds, {} from snapshots, {} folded ({} \
         stale), {} updates folded, {} snapshots written; joins: {} from kept members, {} read \
         whole ({} stale), {} member reads",
        r.records_maintained,
        r.records_from_snapshot,
        r.records_folded,
        r.records_stale,
        r.updates_folded,
        r.snapshots_written,
        r.joins_maintained,
        r.joins_read_all,
        r.joins_stale,
        r.join_members_read
    );
    for f in &m.false_alarm_examples {
        println!("  false alarm   {f}");
    }
    for p in &m.problems {
        println!("  PROBLEM       {p}");
    }
}

fn print_baselines(b: &Baselines, m: &Measured) {
    let ingest = m.ingest_updates_per_s.unwrap_or(0.0);
    println!(
        "  baseline      disk write of the same bytes {:.0} updates/s ({:.0} MiB/s, same fsyncs): \
         ingest is {:.1}% of it",
        b.disk_write_updates_per_s,
        b.disk_write_mib_per_s,
        100.0 * ingest / b.disk_write_updates_per_s
    );
    println!(
        "  baseline      JSON decode alone {:.0} updates/s (one core): ingest is {:.1}% of it",
        b.json_decode_updates_per_s,
        100.0 * ingest / b.json_decode_updates_per_s
    );
    if let Some(c) = b.broker_consume_only_per_s {
        println!(
            "  baseline      broker consume-only {c:.0} messages/s (the ledger's topic, no \
             decode or storage): ingest is {:.1}% of it",
            100.0 * ingest / c
        );
    }
}

fn print_accuracy(phases: &[Measured]) {
    let rows: Vec<&Measured> = phases
        .iter()
        .filter(|m| m.phase == Phase::Accuracy)
        .collect();
    if rows.len() < 2 {
        return;
    }
    println!("\naccuracy on the same traffic, side by side");
    println!(
        "  {:<24} {:>7} {:>12} {:>8} {:>10} {:>10}",
        "strategy", "recall", "false alarms", "runs", "TTD p50", "TTD p99"
    );
    for m in rows {
        let (p50, p99) = m
            .ttd
            .map_or(("-".into(), "-".into()), |q| (ms(q.p50_us), ms(q.p99_us)));
        println!(
            "  {:<24} {:>7.2} {:>12} {:>8} {:>10} {:>10}",
            m.strategy, m.recall, m.false_alarms, m.runs, p50, p99
        );
    }
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `/proc/self/status` memory line (`VmHWM:`, `VmRSS:`), MiB.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
