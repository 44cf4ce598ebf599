//! `overseer demo`: DESIGN.md's payments example, live, on the embedded default — no servers,
//! no config.
//!
//! ```text
//!  workload (seeded, with known faults)
//!   ├─ payments: Debezium PostgreSQL ─ ReplaySource (caught up) ─┐  ingestion: local store,
//!   └─ ledger: MongoDB change streams ─ ReplaySource (lagging) ──┴> embedded catalog
//!                                                                     │ catalog feed
//!  console <── CustomNotifier <── incidents <── runner (the shipped checks) <──┘
//!  summary <── score against the ground truth <── every run record
//! ```
//!
//! Sources release the generated events at their arrival times, in real time, and heartbeat
//! their watermarks; ingestion and the runner run concurrently as in `overseer run`. Once
//! every event is delivered and every check run it triggered has completed (the runner has
//! committed the feed past the last notification), the demo stops and scores the verdicts
//! against the faults it injected. Under the default freshness-aware strategy it fails
//! (non-zero exit) on a missed fault or a false alarm: it doubles as a smoke test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::workload::live::Clock;
use crate::workload::{FaultKind, Lag, Score, System, Workload, WorkloadConfig};
use overseer::Config;
use overseer_dal::update::{Micros, now_us};
use overseer_ingestion::pipeline::{SourceReport, Storage};
use overseer_prs::config::{CheckSettings, StrategyName};
use overseer_prs::escalate::{Action, CustomNotifier, Notice, Notifier};

use crate::live::{Live, quantile};

/// Execution strategies the demo can run its checks under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DemoStrategy {
    /// Wait until every source is complete up to the evaluation time (the default).
    FreshnessAware,
    /// Run at once on whatever has been ingested: a lagging ledger raises false alarms.
    Immediate,
    /// Run a fixed delay (`--delay-ms`) after the trigger is received.
    FixedDelay,
}

/// `overseer demo` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the demo keeps its data (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Transfers to generate.
    #[arg(long, default_value_t = 2_000)]
    transfers: u64,
    /// Transfers per second, released in real time.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Accounts the transfers move money between (few accounts: hot wallets).
    #[arg(long, default_value_t = 1_000)]
    accounts: u32,
    /// The ledger lags behind its commits by between 0 and this many ms, drifting (0: caught
    /// up).
    #[arg(long, default_value_t = 2_000)]
    lag_ms: u64,
    /// A check triggered at commit time t evaluates the view as of t + grace.
    #[arg(long, default_value_t = 2_000)]
    grace_ms: u64,
    #[arg(long, value_enum, default_value_t = DemoStrategy::FreshnessAware)]
    strategy: DemoStrategy,
    /// With `--strategy fixed-delay`: how long after its trigger a check runs.
    #[arg(long, default_value_t = 2_000)]
    delay_ms: u64,
    /// Fraction of transfers with an injected fault.
    #[arg(long, default_value_t = 0.01)]
    fault_rate: f64,
    /// Fraction of events delivered twice.
    #[arg(long, default_value_t = 0.01)]
    duplicate_rate: f64,
}

/// The shipped checks' names, in the order they are reported.
const CHECKS: [&str; 3] = [
    crate::workload::NETS_TO_ZERO,
    crate::workload::MATCHES_AMOUNT,
    crate::workload::WALLET_BALANCE,
];

/// Incident notices printed before the console goes quiet (the summary counts them all).
const SHOWN_NOTICES: usize = 40;

/// The workload's embedded config in `dir`, with the checks as [`set_checks`] sets them.
pub(crate) fn live_config(
    dir: &Path,
    group: &str,
    grace_ms: u64,
    strategy: DemoStrategy,
    delay_ms: u64,
) -> Result<Config> {
    let mut cfg = crate::workload::config(dir)?;
    set_checks(&mut cfg, group, grace_ms, strategy, delay_ms)?;
    Ok(cfg)
}

/// Sets the runner's `group` and `grace_ms`, and runs every shipped check under
/// `strategy` (`delay_ms`: the fixed delay); validates the result.
pub(crate) fn set_checks(
    cfg: &mut Config,
    group: &str,
    grace_ms: u64,
    strategy: DemoStrategy,
    delay_ms: u64,
) -> Result<()> {
    cfg.prs.group = group.into();
    cfg.prs.grace_ms = grace_ms;
    let strategy = match strategy {
        DemoStrategy::FreshnessAware => StrategyName::FreshnessAware,
        DemoStrategy::Immediate => StrategyName::Immediate,
        DemoStrategy::FixedDelay => StrategyName::FixedDelay,
    };
    for check in CHECKS {
        cfg.prs.checks.insert(
            check.into(),
            CheckSettings {
                strategy: Some(strategy),
                delay_ms: (strategy == StrategyName::FixedDelay).then_some(delay_ms),
                ..CheckSettings::default()
            },
        );
    }
    cfg.validate()?;
    Ok(())
}

/// Prints incident notices as the outbox delivers them.
struct Console {
    clock: Clock,
    /// Time zero of the printed offsets: the workload's first commit.
    start_us: Micros,
    opened: AtomicUsize,
    resolved: AtomicUsize,
}

impl Console {
    fn print(&self, n: &Notice) {
        let (label, count) = match n.action {
            Action::Trigger => ("OPEN", &self.opened),
            Action::Resolve => ("RESOLVED", &self.resolved),
        };
        count.fetch_add(1, Ordering::SeqCst);
        let shown = self.opened.load(Ordering::SeqCst) + self.resolved.load(Ordering::SeqCst);
        let at = (self.clock.now_us() - self.start_us) as f64 / 1e6;
        if shown <= SHOWN_NOTICES {
            let what = match n.action {
                Action::Trigger => match n.details["message"].as_str() {
                    Some(m) => format!(": {m}"),
                    None => format!(": {}", n.summary),
                },
                Action::Resolve => String::new(),
            };
            println!("[{at:>6.3}s] {label:<8}  {} {}{what}", n.check, n.subject);
        } else if shown == SHOWN_NOTICES + 1 {
            println!("[{at:>6.3}s] (more incident notices: counted in the summary, not shown)");
        }
    }
}

fn secs(us: Micros) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let (dir, _tmp) = crate::live::data_dir(args.dir.as_deref())?;
    println!(
        "overseer demo — live payments reconciliation on the embedded default (data in {})",
        dir.display()
    );
    let cfg = live_config(&dir, "demo", args.grace_ms, args.strategy, args.delay_ms)?;
    let storage = Storage::open(&cfg).await?;
    if !storage.catalog.source_states().await?.is_empty() {
        bail!(
            "{} already holds a demo's data: use an empty --dir",
            dir.display()
        );
    }
    // The traffic starts half a second from now, and plays in real time.
    let clock = Clock::starting_at(now_us());
    let start_us = (clock.origin_us / 1000 + 500) * 1000;
    let lag = Duration::from_millis(args.lag_ms);
    let workload = Arc::new(Workload::generate(WorkloadConfig {
        seed: args.seed,
        start_us,
        transfers: args.transfers,
        fault_rate: args.fault_rate,
        duplicate_rate: args.duplicate_rate,
        ledger_lag: if lag.is_zero() {
            Lag::None
        } else {
            Lag::Jitter { max: lag }
        },
        transfers_per_sec: args.rate,
        accounts: args.accounts,
        ..WorkloadConfig::default()
    })?);
    print_workload(&workload, &args);

    let console = Arc::new(Console {
        clock,
        start_us,
        opened: AtomicUsize::new(0),
        resolved: AtomicUsize::new(0),
    });
    let printer = console.clone();
    let notifier: Arc<dyn Notifier> = Arc::new(CustomNotifier::new("console", move |n: Notice| {
        let printer = printer.clone();
        async move {
            printer.print(&n);
            Ok(())
        }
    }));
    // Every evaluation is due by the last commit + grace (+ delay), once the lagging
    // ledger's watermark passes it; then some slack.
    let patience = Duration::from_millis(args.grace_ms + args.delay_ms + 20_000)
        + Duration::from_micros(workload.max_lag_us(System::Ledger) as u64);
    let live = {
        let feeds = crate::live::in_process(&workload, clock);
        crate::live::run(
            &cfg,
            &storage,
            workload.clone(),
            clock,
            feeds,
            notifier,
            patience,
        )
        .await?
    };
    let drained_us = live.drained_us;

    let at = |us: Micros| secs(us - start_us);
    match live.delivered_us {
        Some(d) => println!(
            "\nall events delivered at +{}; every check run done at +{}",
            at(d),
            at(drained_us)
        ),
        None => println!("\nnot every event was delivered by +{}", at(drained_us)),
    }
    let score = Score::of_verdicts(&workload, &live.verdicts);
    let mut problems = summarize(&args, &workload, &score, &live, &console);
    if let Some(why) = &live.timed_out {
        problems.push(why.clone());
    }
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("demo: {p}");
    }
    bail!("the demo found {} problem(s)", problems.len())
}

fn print_workload(w: &Workload, args: &Args) {
    let c = &w.config;
    let count = |s: System| w.events(s).iter().filter(|e| !e.duplicate).count();
    let assets: Vec<String> = c.assets.iter().map(|(s, d)| format!("{s}/{d}")).collect();
    println!(
        "workload (seed {}): {} transfers at {}/s between {} accounts, assets {}",
        c.seed,
        c.transfers,
        c.transfers_per_sec,
        c.accounts,
        assets.join(" ")
    );
    println!(
        "  payments  Debezium PostgreSQL     {:>6} events  caught up",
        count(System::Payments)
    );
    let lag = match c.ledger_lag {
        Lag::None => "caught up".to_owned(),
        Lag::Constant(d) => format!("lagging {:.1} s", d.as_secs_f64()),
        Lag::Jitter { max } => format!("lagging 0–{:.1} s (drifting)", max.as_secs_f64()),
    };
    println!(
        "  ledger    MongoDB change streams  {:>6} events  {lag}",
        count(System::Ledger)
    );
    let by_kind: Vec<String> = w
        .faults_by_kind()
        .iter()
        .map(|(k, n)| format!("{n} {}", k.name()))
        .collect();
    println!(
        "  faults: {} transfers ({}); {} events delivered twice",
        w.faults_by_kind().values().sum::<usize>(),
        by_kind.join(", "),
        w.duplicates()
    );
    let strategy = match args.strategy {
        DemoStrategy::FreshnessAware => "freshness-aware".to_owned(),
        DemoStrategy::Immediate => "immediate".to_owned(),
        DemoStrategy::FixedDelay => format!("fixed-delay {} ms", args.delay_ms),
    };
    println!(
        "checks: {}; grace {} ms; strategy {strategy}\n",
        CHECKS.join(", "),
        args.grace_ms
    );
}

/// Prints the summary; returns what makes the run a failure.
fn summarize(
    args: &Args,
    w: &Workload,
    score: &Score,
    live: &Live,
    console: &Console,
) -> Vec<String> {
    let Live {
        reports,
        verdicts,
        by_outcome,
        failing_now,
        ..
    } = live;
    let mut problems = Vec::new();
    let total = |f: fn(&SourceReport) -> u64| reports.values().map(f).sum::<u64>();
    let (events, updates, dups, quarantined) = (
        total(|r| r.events),
        total(|r| r.updates),
        total(|r| r.duplicates),
        total(|r| r.quarantined),
    );
    println!("summary");
    println!(
        "  ingested     {events} events: {updates} updates, {dups} duplicates ignored \
         (of {} delivered twice), {quarantined} quarantined",
        w.duplicates()
    );
    if updates != w.unique_events() as u64 || dups != w.duplicates() as u64 || quarantined != 0 {
        problems.push(format!(
            "ingestion kept {updates} updates and ignored {dups} duplicates; the workload has \
             {} distinct events and {} redeliveries",
            w.unique_events(),
            w.duplicates()
        ));
    }
    let outcomes: Vec<String> = by_outcome.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "  check runs   {} ({})",
        by_outcome.values().sum::<u64>(),
        outcomes.join(", ")
    );
    println!(
        "  incidents    {} opened, {} resolved",
        console.opened.load(Ordering::SeqCst),
        console.resolved.load(Ordering::SeqCst)
    );
    println!("  faults           transfers  must fail  detected  time to detect p50 / max");
    let truth = w.expected_failures();
    for kind in FaultKind::ALL {
        let pairs: BTreeSet<(String, String)> = w
            .faults
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| (f.check.to_owned(), f.subject.clone()))
            .collect();
        let mut ttd: Vec<Micros> = pairs
            .iter()
            .filter_map(|k| score.detected.get(k).copied())
            .collect();
        ttd.sort_unstable();
        let times = match (ttd.first(), ttd.last()) {
            (Some(_), Some(max)) => format!("{} / {}", secs(quantile(&ttd, 0.5)), secs(*max)),
            _ => "-".into(),
        };
        println!(
            "    {:<15} {:>9}  {:>9}  {:>8}  {times}",
            kind.name(),
            w.faults_by_kind().get(&kind).copied().unwrap_or(0),
            pairs.len(),
            ttd.len(),
        );
    }
    let (p50, p99) = (score.ttd_quantile_us(0.5), score.ttd_quantile_us(0.99));
    if let (Some(p50), Some(p99)) = (p50, p99) {
        println!(
            "  time to detect  p50 {}, p99 {} (verdict − first triggering commit; includes \
             the {} ms grace)",
            secs(p50),
            secs(p99),
            args.grace_ms
        );
    }
    let mut latency = verdicts.latencies_us.clone();
    latency.sort_unstable();
    if !latency.is_empty() {
        println!(
            "  every run       p50 {}, p99 {}, max {} (verdict − first triggering commit)",
            secs(quantile(&latency, 0.5)),
            secs(quantile(&latency, 0.99)),
            secs(quantile(&latency, 1.0))
        );
    }
    for (check, subject) in &score.missed {
        println!("  MISSED       {check} {subject}");
    }
    if !score.false_alarms.is_empty() {
        let resolved = score
            .false_alarms
            .keys()
            .filter(|k| !failing_now.contains(*k))
            .count();
        println!(
            "  false alarms {} ({resolved} resolved by later runs), e.g.:",
            score.false_alarms.len()
        );
        for ((check, subject), message) in score.false_alarms.iter().take(10) {
            println!("    {check} {subject}: {message}");
        }
    }
    for (what, list) in [("stale", &score.stale), ("error", &score.errors)] {
        for (check, subject, message) in list.iter().take(5) {
            println!("  {what:<12} {check} {subject}: {message}");
        }
    }
    println!(
        "result: recall {:.2} ({}/{} detected, {} missed), {} false alarms",
        score.recall(),
        score.detected.len(),
        truth.len(),
        score.missed.len(),
        score.false_alarms.len()
    );
    if !score.errors.is_empty() {
        problems.push(format!(
            "{} check runs ended in an error",
            score.errors.len()
        ));
    }
    if args.strategy == DemoStrategy::FreshnessAware {
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
    problems
}
