//! Replay throughput on the local store: updates/s and runs/s of replaying a window of
//! payments history with the shipped checks into a report, next to baselines measured in
//! the same run: paging the same window through the catalog alone (`updates_in_window`),
//! and reading and decoding every segment of it. Ratios are what to compare between runs:
//! these machines are shared and noisy.
//!
//! `cargo bench -p overseer-benches --bench replay`
//! (`OVERSEER_BENCH_UPDATES=200000` for a smaller history; default 1,000,000)
//!
//! The history is the payments workload (`overseer_sim::workload`: transfers, assets,
//! ledger entries and wallets, 1% of transfers faulty, no duplicates, caught up) ingested
//! through the real pipeline into a local store and an embedded catalog in a temporary
//! directory. Its setup is timed and printed, not measured. Criterion measures a replay
//! of the first ~[`SUB_WINDOW`] updates (and its paging baseline); the summary at the end
//! times one replay of the whole window and both baselines over it, interleaved.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use tokio_util::sync::CancellationToken;

use overseer::Config;
use overseer_benches::MemorySource;
use overseer_dal::Dal;
use overseer_dal::keys::segment_key;
use overseer_dal::segment::decode_segment;
use overseer_dal::update::Micros;
use overseer_ingestion::pipeline::{Ingestor, Storage};
use overseer_prs::check::Registry;
use overseer_prs::replay::{ReplayOptions, ReplaySummary, ReportSink, Window, replay};
use overseer_sim::workload::{Lag, System, Workload, WorkloadConfig};

/// Updates of the history, unless `OVERSEER_BENCH_UPDATES` says otherwise.
const UPDATES: u64 = 1_000_000;
/// Updates in the window criterion measures (a full replay is too long to sample).
const SUB_WINDOW: u64 = 50_000;
const GRACE: Duration = Duration::from_secs(2);
/// Catalog page of the replay and of the paging baseline (replay's default).
const PAGE: usize = 1000;

fn config(dir: &Path) -> Config {
    let cfg = overseer_sim::workload::config(dir).expect("bench config");
    cfg.validate().expect("bench config is valid");
    cfg
}

/// The ingested history.
struct Setup {
    _dir: tempfile::TempDir,
    cfg: Config,
    storage: Storage,
    /// First to last commit.
    window: Window,
    updates: u64,
    transfers: u64,
}

impl Setup {
    /// A fresh DAL (empty read cache) over the history.
    fn dal(&self) -> Dal {
        overseer_ingestion::dal::dal_over(&self.cfg, &self.storage).unwrap()
    }
}

/// Generates a workload of about `updates` updates and ingests it.
async fn setup(updates: u64) -> Setup {
    // Updates per transfer, from a small workload of the same shape.
    let shape = |transfers: u64| WorkloadConfig {
        transfers,
        // About the demo's wallet history depth (2,000 transfers over 1,000 accounts).
        accounts: (transfers / 2).max(1000) as u32,
        duplicate_rate: 0.0,
        ledger_lag: Lag::None,
        ..WorkloadConfig::default()
    };
    let probe = Workload::generate(shape(1000)).unwrap();
    let per_transfer = probe.unique_events() as f64 / 1000.0;
    let transfers = ((updates as f64 / per_transfer).round() as u64).max(1);
    let workload = Workload::generate(shape(transfers)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let storage = Storage::open(&cfg).await.unwrap();
    let ing = Ingestor::new(storage.clone(), cfg.ingest.clone());
    let mut ingested = 0;
    for system in System::ALL {
        let src = cfg
            .sources
            .iter()
            .find(|s| s.name == system.name())
            .unwrap();
        let consumer = overseer_ingestion::format::build(src, &cfg.ingestion).unwrap();
        let events = workload
            .events(system)
            .iter()
            .map(|e| e.source_event())
            .collect();
        let r = ing
            .run_source(
                src,
                consumer,
                Box::new(MemorySource(events)),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.quarantined, 0);
        ingested += r.updates;
    }
    assert_eq!(ingested, workload.unique_events() as u64);
    let first_us = workload
        .payments
        .iter()
        .chain(&workload.ledger)
        .map(|e| e.commit_us)
        .min()
        .unwrap();
    Setup {
        _dir: dir,
        cfg,
        storage,
        window: Window::new(first_us, workload.last_commit_us()).unwrap(),
        updates: ingested,
        transfers,
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    overseer_checks::register(&mut r);
    for spec in r.iter().map(|s| s.name.clone()).collect::<Vec<_>>() {
        r.get_mut(&spec).expect("registered").grace(GRACE);
    }
    r
}

/// One replay of `window` with the shipped checks into a report.
async fn replay_once(s: &Setup, reg: &Registry, window: Window) -> (Duration, ReplaySummary) {
    let dal = s.dal();
    let sink = ReportSink::new(reg, |c| c.enabled, window, None);
    let options = ReplayOptions {
        page: PAGE,
        ..ReplayOptions::default()
    };
    let t = Instant::now();
    let summary = replay(
        &dal,
        reg,
        |c| c.enabled,
        window,
        &options,
        &sink,
        &mut |_| {},
    )
    .await
    .unwrap();
    std::hint::black_box(sink.report(&summary));
    (t.elapsed(), summary)
}

/// Baseline: the window paged through the catalog, nothing else. Returns the entries read
/// and the segments they live in.
async fn page_once(s: &Setup, window: Window) -> (Duration, u64, BTreeSet<u64>) {
    let catalog = s.storage.catalog.clone();
    let t = Instant::now();
    let (mut n, mut segs, mut after) = (0, BTreeSet::new(), None);
    loop {
        let page = catalog
            .updates_in_window(window.from_us, window.to_us, after.take(), PAGE)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((
            last.event_time_us,
            last.source.clone(),
            last.position.clone(),
        ));
        n += page.len() as u64;
        segs.extend(page.iter().map(|e| e.loc.segment_seq));
        if page.len() < PAGE {
            break;
        }
    }
    (t.elapsed(), n, segs)
}

/// Baseline: every segment read whole and decoded (each record protobuf-decoded).
async fn read_segments_once(s: &Setup, segs: &BTreeSet<u64>) -> (Duration, u64) {
    let t = Instant::now();
    let mut n = 0;
    for &seq in segs {
        let key = segment_key(seq);
        let bytes = s.storage.store.get(&key).await.unwrap().unwrap();
        n += std::hint::black_box(decode_segment(&bytes, &key).unwrap())
            .records
            .len() as u64;
    }
    (t.elapsed(), n)
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let target: u64 = std::env::var("OVERSEER_BENCH_UPDATES")
        .ok()
        .map(|v| v.parse().expect("OVERSEER_BENCH_UPDATES: a number"))
        .unwrap_or(UPDATES);
    let t = Instant::now();
    let s = rt.block_on(setup(target));
    println!(
        "\nreplay setup: {} updates ({} transfers) generated and ingested in {:.1} s",
        s.updates,
        s.transfers,
        t.elapsed().as_secs_f64()
    );
    let reg = registry();

    // Criterion: the first ~SUB_WINDOW updates (commit times are about evenly spread).
    let w = s.window;
    let span = (w.to_us - w.from_us) as f64;
    let sub_to = w.from_us + (span * (SUB_WINDOW as f64 / s.updates as f64).min(1.0)) as Micros;
    let sub = Window::new(w.from_us, sub_to).unwrap();
    let (_, sub_n, _) = rt.block_on(page_once(&s, sub));
    let mut g = c.benchmark_group("replay_local");
    g.throughput(Throughput::Elements(sub_n));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("replay_sub_window", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(replay_once(&s, &reg, sub)).0)
                .sum()
        })
    });
    g.bench_function("page_sub_window", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(page_once(&s, sub)).0).sum())
    });
    g.finish();

    // The whole window once, with its baselines right before and after (same load).
    let (page_t, paged, segs) = rt.block_on(page_once(&s, w));
    let (read_t, decoded) = rt.block_on(read_segments_once(&s, &segs));
    let before_mb = peak_rss_mb();
    let reset = reset_peak_rss();
    let (replay_t, summary) = rt.block_on(replay_once(&s, &reg, w));
    let replay_peak_mb = peak_rss_mb();
    let (page_t2, _, _) = rt.block_on(page_once(&s, w));
    let (read_t2, _) = rt.block_on(read_segments_once(&s, &segs));
    assert_eq!(paged, s.updates);
    assert_eq!(decoded, s.updates);
    assert_eq!(summary.updates, s.updates);
    let page_t = page_t.min(page_t2).as_secs_f64();
    let read_t = read_t.min(read_t2).as_secs_f64();
    let rt_s = replay_t.as_secs_f64();
    let n = s.updates as f64;
    println!(
        "\nreplay_local summary ({} updates, {} segments, {} triggers, {} runs):\n  \
         replay         {:>8.1} s  {:>10.0} updates/s  {:>10.0} runs/s\n  \
         page window    {:>8.1} s  {:>10.0} updates/s   (replay / page = {:.1}x slower)\n  \
         read+decode    {:>8.1} s  {:>10.0} updates/s   (replay / read+decode = {:.1}x slower)",
        s.updates,
        segs.len(),
        summary.triggers,
        summary.runs,
        rt_s,
        n / rt_s,
        summary.runs as f64 / rt_s,
        page_t,
        n / page_t,
        rt_s / page_t,
        read_t,
        n / read_t,
        rt_s / read_t,
    );
    if let Some(t) = summary.timeline {
        println!(
            "  timeline       {} record reads from it, {} from the catalog; {} updates folded \
             into it, {} bases read, {} records evicted, peak {} MiB",
            t.reads,
            t.missed,
            t.updates_applied,
            t.bases_read,
            t.evicted,
            t.peak_bytes >> 20
        );
    }
    if let Some(mb) = before_mb {
        println!(
            "  peak RSS (VmHWM) before the whole-window replay {mb:.0} MB (setup: the generated workload included)"
        );
    }
    if let (true, Some(mb)) = (reset, replay_peak_mb) {
        println!(
            "  peak RSS (VmHWM) during the whole-window replay {mb:.0} MB (peak reset right before it)"
        );
    }
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
