//! Ingestion into the local store: updates/s through the whole pipeline (decode, dedupe,
//! segment write with fsync, embedded catalog commit, notification), next to the baseline
//! of writing the same raw bytes sequentially to the same disk with the same number of
//! fsyncs (one per segment), measured in the same run. The ratio is printed at the end.
//!
//! `cargo bench -p overseer-benches --bench ingest`

use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use tokio_util::sync::CancellationToken;

use overseer_benches::{MemorySource, ledger_config, ledger_events};
use overseer_ingestion::pipeline::{Ingestor, Storage};

const EVENTS: usize = 50_000;

fn pipeline_once(
    rt: &tokio::runtime::Runtime,
    events: &[overseer_ingestion::source::SourceEvent],
) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ledger_config(dir.path());
    rt.block_on(async {
        let storage = Storage::open(&cfg).await.unwrap();
        let ing = Ingestor::new(storage, cfg.ingest.clone());
        let consumer = overseer_ingestion::format::build(&cfg.sources[0], &cfg).unwrap();
        let src = Box::new(MemorySource(events.to_vec()));
        let t = Instant::now();
        let r = ing
            .run_source(&cfg.sources[0], consumer, src, CancellationToken::new())
            .await
            .unwrap();
        let el = t.elapsed();
        assert_eq!(r.updates as usize, events.len());
        el
    })
}

/// Same bytes, same disk, one fsync per `batch` events (as many as the pipeline's segments).
fn raw_write_once(events: &[overseer_ingestion::source::SourceEvent], batch: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    for (i, chunk) in events.chunks(batch).enumerate() {
        let mut f = std::fs::File::create(dir.path().join(format!("{i}.bin"))).unwrap();
        for e in chunk {
            f.write_all(&e.raw).unwrap();
        }
        f.sync_all().unwrap();
    }
    t.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = ledger_events(EVENTS);
    let batch = overseer_ingestion::config::IngestSettings::default().batch_max_events;
    let mut g = c.benchmark_group("ingest_local");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("pipeline", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| pipeline_once(&rt, &events)).sum())
    });
    g.bench_function("raw_sequential_write", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| raw_write_once(&events, batch)).sum())
    });
    g.finish();

    // What reading numbers exactly costs (overseer_dal::builder::exact): the same events
    // through serde_json alone and through exact::parse, as they are (integers only: a walk
    // of the parsed document finds no double) and with a decimal field added (each then
    // takes the string-aware pass over its bytes; none is lossy, so none is re-parsed).
    let plain: Vec<Vec<u8>> = events.iter().map(|e| e.raw.to_vec()).collect();
    let decimals: Vec<Vec<u8>> = plain
        .iter()
        .map(|raw| {
            String::from_utf8_lossy(raw)
                .replace("\"decimals\":8", "\"decimals\":8,\"rate\":1234.56")
                .into_bytes()
        })
        .collect();
    assert!(decimals.iter().all(|d| d.len() > plain[0].len()));
    let mut g = c.benchmark_group("json_parse");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(20);
    for (name, set) in [("integers", &plain), ("decimals", &decimals)] {
        g.bench_function(format!("serde_json/{name}"), |b| {
            b.iter(|| {
                set.iter()
                    .map(|raw| serde_json::from_slice::<serde_json::Value>(raw).unwrap())
                    .filter(serde_json::Value::is_object)
                    .count()
            })
        });
        g.bench_function(format!("exact/{name}"), |b| {
            b.iter(|| {
                set.iter()
                    .map(|raw| overseer_dal::builder::exact::parse(raw).unwrap())
                    .filter(serde_json::Value::is_object)
                    .count()
            })
        });
    }
    g.finish();

    // The ratio, from interleaved runs so both see the same machine load.
    let (mut p, mut r) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        p.push(pipeline_once(&rt, &events).as_secs_f64());
        r.push(raw_write_once(&events, batch).as_secs_f64());
    }
    p.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    let (pm, rm) = (p[2], r[2]);
    let bytes: usize = events.iter().map(|e| e.raw.len()).sum();
    println!(
        "\ningest_local summary ({EVENTS} events, {:.1} MB): pipeline {:.0} updates/s, raw write {:.0} events/s \
         ({:.0} MB/s); pipeline / raw = {:.2}",
        bytes as f64 / 1e6,
        EVENTS as f64 / pm,
        EVENTS as f64 / rm,
        bytes as f64 / rm / 1e6,
        rm / pm
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
