//! DAL reads on the local store (issue 3): the as-of view of a record with 1,000 updates, and
//! the joined view of a transfer with 10 ledger entries, warm and cold, next to the raw-read
//! floor measured in the same run (the same ranged reads of the same segments, decoded, with
//! no catalog, no cache, no fold and no mapping). Ratios to the floor are what to compare
//! between runs: these machines are shared and noisy.
//!
//! `cargo bench -p overseer-benches --bench dal`
//!
//! The history is written as live ingestion writes it: record `x` of `toys` (1 insert, 999
//! updates) interleaved round-robin with 20 other toys and with the payments records, cut
//! into segments of 1,000 events, so `x` spans 21 of the 22 segments (printed). Events are realistic MongoDB
//! change-stream events (resume token, cluster time, namespace: ~400 bytes each) and
//! Debezium PostgreSQL rows.
//!
//! Then record `y` (1 insert, 99,999 updates) alone in 100 more segments: a long-lived
//! record, read cold as of now and as of its middle.
//!
//! - *warm*: the DAL's read cache already holds every update the view reads.
//! - *cold*: … from the record's snapshots ([`overseer_dal::snapshot`]: one every 128
//!   updates, written by the first read); *cold_no_snapshots*: a DAL that reads none (it
//!   folds the history up to the time, as before snapshots existed). The ratio of y's cases
//!   is to x's raw-read floor.
//! - *cold*: a fresh `Dal` (empty read cache) per iteration over the same catalog and store.
//!   The OS page cache is warm (the files were just written and are read over and over):
//!   cold means "no DAL cache", not "cold disk". Building the `Dal` is outside the timing
//!   (it is reported on its own).
//!
//! Criterion reports means and medians, not tails, so each case is also timed per iteration
//! with `Instant` and a p50/p90/p99/max table is printed at the end. The cases of that table
//! run interleaved (a slice of each case per round) so they all see the same machine load.
//! Last, the phases of x's view (catalog lookup, fetch, fold, mapping) are timed alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use overseer_dal::builder::Builders;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::keys::segment_key;
use overseer_dal::segment::{SegmentBuilder, decode_record};
use overseer_dal::store::DynStore;
use overseer_dal::store::local::LocalStore;
use overseer_dal::update::{
    CommitBatch, IndexEntry, Micros, Op, Reference, UpdateLoc, UpdateRecord,
};
use overseer_dal::view::map::record_to_message;
use overseer_dal::{Dal, Viewed};
use overseer_protos::views::{Toy, TransferWithLedger};

/// Toys updated alongside `x`, round-robin: each segment holds ~1/21 of x's updates.
const OTHER_TOYS: usize = 20;
/// Updates of `x`, its insert included.
const X_UPDATES: usize = 1000;
/// Updates of `y`, a record that lives long (written after the rest, alone in its
/// segments): read cold as of now and as of its middle, from snapshots.
const Y_UPDATES: usize = 100_000;
/// Events per segment: a batch cut by count (or by `batch_max_ms` at ~50k events/s).
const SEGMENT_EVENTS: usize = 1000;
/// Ledger entries of the transfer `T1`.
const ENTRIES: usize = 10;
/// Rounds of toy updates between two ledger entries of `T1`.
const ENTRY_EVERY: usize = X_UPDATES / (ENTRIES + 1);
/// Same as the DAL's reader: reads of one segment closer than this are one request.
const COALESCE_GAP: u64 = 64 << 10;
/// Same as the DAL's reader: concurrent requests per history read.
const FETCH_CONCURRENCY: usize = 16;
/// Iterations of the percentile runs: each p99 rests on at least 2 samples above it. The
/// warm view of x gets fewer than the cheap warm joined view to keep the run near a minute.
const WARM_ITERS: usize = 2000;
const WARM_X_ITERS: usize = 1000;
const COLD_ITERS: usize = 200;
/// Rounds the percentile runs are interleaved in.
const ROUNDS: usize = 10;

/// One change to write, in arrival order.
struct Change {
    source: &'static str,
    model: &'static str,
    id: String,
    op: Op,
    format: &'static str,
    refs: Vec<(&'static str, String)>,
    raw: Value,
}

/// A MongoDB change-stream event as a change stream delivers it.
fn mongo(db: &str, coll: &'static str, id: &str, n: u64, t_us: Micros, body: Value) -> Change {
    let mut ev = json!({
        "_id": {"_data": format!("8267{n:030X}2B022C0100296E5A1004")},
        "clusterTime": {"$timestamp": {"t": t_us / 1_000_000, "i": n % 1000}},
        "wallTime": {"$date": {"$numberLong": (t_us / 1000).to_string()}},
        "ns": {"db": db, "coll": coll},
        "documentKey": {"_id": id},
    });
    let Value::Object(body) = body else {
        unreachable!()
    };
    ev.as_object_mut().unwrap().extend(body);
    let op = match ev["operationType"].as_str() {
        Some("insert") => Op::Create,
        Some("delete") => Op::Delete,
        _ => Op::Update,
    };
    let doc = ev
        .get("fullDocument")
        .or_else(|| ev.pointer("/updateDescription/updatedFields"));
    let refs = doc
        .and_then(|d| d.get("transfer_id"))
        .and_then(Value::as_str)
        .map(|t| vec![("transfer_id", t.to_owned())])
        .unwrap_or_default();
    Change {
        source: if db == "ledger" { "ledger" } else { "shop" },
        model: if db == "ledger" {
            "ledger.entries"
        } else {
            "toys"
        },
        id: id.into(),
        op,
        format: "mongo-change-stream",
        refs,
        raw: ev,
    }
}

/// A Debezium PostgreSQL row change of `payments.<table>`.
fn row(table: &'static str, id: &str, op: &str, t_us: Micros, after: Value) -> Change {
    Change {
        source: "payments",
        model: if table == "transfers" {
            "payments.transfers"
        } else {
            "payments.assets"
        },
        id: id.into(),
        op: if op == "u" { Op::Update } else { Op::Create },
        format: "debezium-postgres",
        refs: vec![],
        raw: json!({
            "before": null, "after": after, "op": op, "ts_ms": t_us / 1000,
            "source": {"connector": "postgresql", "db": "payments", "schema": "public",
                       "table": table, "lsn": t_us, "txId": t_us / 7},
        }),
    }
}

fn transfer_row(status: &str) -> Value {
    json!({"id": "T1", "account_id": "acct-1", "asset": "USD", "amount": "12.50",
           "status": status, "updated_at": "2024-01-02T03:04:05Z"})
}

/// What the benchmark reads, written once.
struct Setup {
    _dir: tempfile::TempDir,
    catalog: DynCatalog,
    store: DynStore,
    /// "Now": after every update.
    now_us: Micros,
    /// The commit time of x's 500th update (the insert counts).
    mid_us: Micros,
    /// The commit time of y's 50,000th update.
    y_mid_us: Micros,
    segments: usize,
    events: usize,
    bytes: usize,
}

impl Setup {
    fn dal(&self) -> Dal {
        Dal::new(self.catalog.clone(), self.store.clone())
    }

    /// A DAL that reads no snapshots (every cold read folds the history), as before them.
    fn dal_without_snapshots(&self) -> Dal {
        self.dal().with_snapshot_every(0)
    }
}

/// The whole history, in arrival order, with commit times 1 ms apart ending an hour ago.
/// Returns it and the commit time of x's 500th update.
fn history(now_us: Micros) -> (Vec<(Micros, Change)>, Micros) {
    let t0 = now_us - 3_600_000_000;
    let mut out: Vec<(Micros, Change)> = Vec::new();
    // The next event's number and commit time.
    let next = |out: &Vec<(Micros, Change)>| {
        let n = out.len() as u64;
        (n, t0 + n as Micros * 1000)
    };
    let mut mid_us = 0;
    let colors = ["blue", "red", "green", "yellow", "black"];
    let toy_ids: Vec<String> = std::iter::once("x".to_owned())
        .chain((0..OTHER_TOYS).map(|i| format!("toy-{i:02}")))
        .collect();

    let (_, t) = next(&out);
    let usd = json!({"symbol": "USD", "decimals": 2});
    out.push((t, row("assets", "USD", "r", t, usd)));
    for id in &toy_ids {
        let (n, t) = next(&out);
        let doc = json!({"_id": id, "type": "type-0", "color": "blue", "size": 0});
        let ev = json!({"operationType": "insert", "fullDocument": doc});
        out.push((t, mongo("shop", "toys", id, n, t, ev)));
    }
    for round in 1..X_UPDATES {
        for id in &toy_ids {
            let (n, t) = next(&out);
            let set = json!({
                "type": format!("type-{round}"),
                "color": colors[round / 7 % colors.len()],
                "size": round,
                "updatedAt": {"$date": {"$numberLong": (t / 1000).to_string()}},
            });
            let ev = json!({"operationType": "update", "updateDescription":
                {"updatedFields": set, "removedFields": [], "truncatedArrays": []}});
            out.push((t, mongo("shop", "toys", id, n, t, ev)));
            if id == "x" && round == X_UPDATES / 2 - 1 {
                mid_us = t;
            }
        }
        if round == 5 {
            let (_, t) = next(&out);
            out.push((t, row("transfers", "T1", "c", t, transfer_row("pending"))));
        }
        // Entries e1..e10, one every ENTRY_EVERY rounds: spread over the history.
        if round.is_multiple_of(ENTRY_EVERY) && round / ENTRY_EVERY <= ENTRIES {
            let e = round / ENTRY_EVERY;
            let (n, t) = next(&out);
            let id = format!("e{e}");
            let direction = if e.is_multiple_of(2) {
                "credit"
            } else {
                "debit"
            };
            let doc = json!({
                "_id": id, "transfer_id": "T1", "account_id": format!("acct-{e}"),
                "asset": "USD", "direction": direction,
                "amount_minor": {"$numberLong": "125"}, "decimals": 2,
            });
            let ev = json!({"operationType": "insert", "fullDocument": doc});
            out.push((t, mongo("ledger", "entries", &id, n, t, ev)));
        }
        if round == X_UPDATES - 10 {
            let (_, t) = next(&out);
            out.push((t, row("transfers", "T1", "u", t, transfer_row("completed"))));
        }
    }
    (out, mid_us)
}

/// Writes the history as segments of [`SEGMENT_EVENTS`] and indexes them, as ingestion does.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::open(dir.path().join("store")).unwrap());
    let catalog: DynCatalog =
        Arc::new(EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap());
    let now_us = overseer_dal::update::now_us();
    let (changes, mid_us) = history(now_us);
    let mut positions: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut segments, mut bytes) =
        write_segments(&catalog, &store, &changes, &mut positions, now_us).await;
    let mut events = changes.len();
    // y: its updates 10 µs apart, after the rest.
    let t0 = changes.last().unwrap().0 + 1_000_000;
    let mut y = Vec::with_capacity(Y_UPDATES);
    for i in 0..Y_UPDATES {
        let t = t0 + i as Micros * 10;
        let ev = if i == 0 {
            let doc = json!({"_id": "y", "type": "type-0", "color": "blue", "size": 0});
            json!({"operationType": "insert", "fullDocument": doc})
        } else {
            json!({"operationType": "update", "updateDescription": {"updatedFields":
                {"type": format!("type-{i}"), "size": i}, "removedFields": []}})
        };
        y.push((t, mongo("shop", "toys", "y", i as u64, t, ev)));
    }
    let y_mid_us = y[Y_UPDATES / 2 - 1].0;
    let (n, b) = write_segments(&catalog, &store, &y, &mut positions, now_us).await;
    (segments, bytes, events) = (segments + n, bytes + b, events + y.len());
    Setup {
        _dir: dir,
        catalog,
        store,
        now_us,
        mid_us,
        y_mid_us,
        segments,
        events,
        bytes,
    }
}

/// Writes `changes` as segments of [`SEGMENT_EVENTS`] and indexes them; returns the
/// segments and bytes written.
async fn write_segments(
    catalog: &DynCatalog,
    store: &DynStore,
    changes: &[(Micros, Change)],
    positions: &mut BTreeMap<&'static str, u64>,
    now_us: Micros,
) -> (usize, usize) {
    let (mut segments, mut bytes) = (0, 0);
    for chunk in changes.chunks(SEGMENT_EVENTS) {
        let seq = catalog.reserve_segment().await.unwrap();
        let mut seg = SegmentBuilder::new(seq, SEGMENT_EVENTS * 512);
        let mut entries = Vec::with_capacity(chunk.len());
        for (t, c) in chunk {
            let pos = positions.entry(c.source).or_default();
            *pos += 1;
            let rec = UpdateRecord {
                source: c.source.into(),
                position: format!("{pos:016}"),
                model: c.model.into(),
                record_id: c.id.clone(),
                op: c.op as i32,
                event_time_us: *t,
                format: c.format.into(),
                refs: c
                    .refs
                    .iter()
                    .map(|(n, v)| Reference {
                        name: (*n).into(),
                        value: v.clone(),
                    })
                    .collect(),
                raw: serde_json::to_vec(&c.raw).unwrap().into(),
                ingest_time_us: *t + 5_000,
                ..Default::default()
            };
            let loc = seg.push(&rec);
            entries.push(IndexEntry::from_record(&rec, loc));
        }
        let obj = seg.finish(vec![]);
        bytes += obj.len();
        store.put_create(&segment_key(seq), obj).await.unwrap();
        catalog
            .commit(CommitBatch {
                segment_seq: Some(seq),
                entries,
                progress: vec![],
                quarantined: 0,
                now_us,
            })
            .await
            .unwrap();
        segments += 1;
    }
    (segments, bytes)
}

/// One ranged read: segment, start, length, and the records in it.
struct Read {
    seq: u64,
    start: u64,
    len: u64,
    locs: Vec<UpdateLoc>,
}

/// The ranged reads the DAL makes for `entries` on an empty cache: per segment, runs of
/// records closer than [`COALESCE_GAP`] are one read.
fn plan_reads(entries: &[IndexEntry]) -> Vec<Read> {
    let mut by_seg: BTreeMap<u64, Vec<UpdateLoc>> = BTreeMap::new();
    for e in entries {
        by_seg.entry(e.loc.segment_seq).or_default().push(e.loc);
    }
    let mut out = Vec::new();
    for (seq, mut locs) in by_seg {
        locs.sort_unstable_by_key(|l| l.offset);
        let mut run: Vec<UpdateLoc> = Vec::new();
        let flush = |run: &mut Vec<UpdateLoc>, out: &mut Vec<Read>| {
            let start = u64::from(run[0].offset);
            let last = run[run.len() - 1];
            out.push(Read {
                seq,
                start,
                len: u64::from(last.offset) + u64::from(last.len) - start,
                locs: std::mem::take(run),
            });
        };
        for l in locs {
            if let Some(last) = run.last()
                && u64::from(l.offset) > u64::from(last.offset) + u64::from(last.len) + COALESCE_GAP
            {
                flush(&mut run, &mut out);
            }
            run.push(l);
        }
        flush(&mut run, &mut out);
    }
    out
}

/// The floor: the planned reads (concurrent as the DAL's), each record protobuf-decoded.
/// Returns the number of records decoded.
async fn raw_read(store: &DynStore, plan: &[Read]) -> usize {
    futures::stream::iter(plan)
        .map(|r| async move {
            let bytes = store.get_range(&segment_key(r.seq), r.start, r.len).await?;
            let mut n = 0;
            for l in &r.locs {
                let from = (u64::from(l.offset) - r.start) as usize;
                std::hint::black_box(decode_record(&bytes[from..from + l.len as usize], l)?);
                n += 1;
            }
            Ok::<_, overseer_dal::Error>(n)
        })
        .buffer_unordered(FETCH_CONCURRENCY)
        .try_fold(0, |a, n| async move { Ok(a + n) })
        .await
        .unwrap()
}

fn toy_view(rt: &tokio::runtime::Runtime, dal: &Dal, as_of: Micros) -> Viewed<Toy> {
    rt.block_on(dal.view::<Toy>("x", as_of)).unwrap().unwrap()
}

fn y_view(rt: &tokio::runtime::Runtime, dal: &Dal, as_of: Micros) -> Viewed<Toy> {
    rt.block_on(dal.view::<Toy>("y", as_of)).unwrap().unwrap()
}

fn joined_view(
    rt: &tokio::runtime::Runtime,
    dal: &Dal,
    as_of: Micros,
) -> Viewed<TransferWithLedger> {
    rt.block_on(dal.view::<TransferWithLedger>("T1", as_of))
        .unwrap()
        .unwrap()
}

/// Per-iteration times of one case, in microseconds.
struct Samples {
    name: &'static str,
    us: Vec<f64>,
}

impl Samples {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.us.len() as f64 * p).ceil() as usize).clamp(1, self.us.len()) - 1;
        self.us[i]
    }
}

/// A case of the percentile run: times one iteration (setup excluded).
type Case<'a> = (&'static str, usize, Box<dyn FnMut() -> Duration + 'a>);

/// Runs the cases interleaved: in each of [`ROUNDS`] rounds, 1/ROUNDS of each case's iterations.
fn run_interleaved(mut cases: Vec<Case<'_>>) -> Vec<Samples> {
    let mut out: Vec<Samples> = cases
        .iter()
        .map(|(name, _, _)| Samples {
            name,
            us: Vec::new(),
        })
        .collect();
    for _ in 0..ROUNDS {
        for (i, (_, iters, f)) in cases.iter_mut().enumerate() {
            for _ in 0..*iters / ROUNDS {
                out[i].us.push(f().as_secs_f64() * 1e6);
            }
        }
    }
    for s in &mut out {
        s.us.sort_by(f64::total_cmp);
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let s = rt.block_on(setup());
    let setup_time = t.elapsed();
    let (now, mid, y_mid) = (s.now_us, s.mid_us, s.y_mid_us);

    // What the views read, and sanity checks that they read the right thing.
    let x_now = rt
        .block_on(s.catalog.record_updates("toys", "x", now))
        .unwrap();
    let x_mid = rt
        .block_on(s.catalog.record_updates("toys", "x", mid))
        .unwrap();
    assert_eq!((x_now.len(), x_mid.len()), (X_UPDATES, X_UPDATES / 2));
    let mut joined_entries = Vec::new();
    for (model, id) in std::iter::once(("payments.transfers", "T1".to_owned()))
        .chain((1..=ENTRIES).map(|e| ("ledger.entries", format!("e{e}"))))
        .chain(std::iter::once(("payments.assets", "USD".to_owned())))
    {
        joined_entries.extend(
            rt.block_on(s.catalog.record_updates(model, &id, now))
                .unwrap(),
        );
    }
    let plan_now = plan_reads(&x_now);
    let plan_mid = plan_reads(&x_mid);
    let plan_joined = plan_reads(&joined_entries);
    let spanned = |p: &[Read]| {
        p.iter()
            .map(|r| r.seq)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let read_bytes = |p: &[Read]| p.iter().map(|r| r.len).sum::<u64>();
    {
        let dal = s.dal();
        let v = toy_view(&rt, &dal, now);
        assert_eq!(v.view.r#type, format!("type-{}", X_UPDATES - 1));
        assert_eq!(
            v.evidence.len(),
            1,
            "evidence by reference: x's newest update"
        );
        let v = toy_view(&rt, &dal, mid);
        assert_eq!(v.view.r#type, format!("type-{}", X_UPDATES / 2 - 1));
        assert_eq!(v.evidence.len(), 1);
        let j = joined_view(&rt, &dal, now);
        assert_eq!(j.view.entries.len(), ENTRIES);
        assert_eq!(j.view.asset.as_ref().unwrap().decimals, 2);
        assert_eq!(
            j.evidence.len(),
            ENTRIES + 2,
            "the transfer, each entry, the asset"
        );
        assert_eq!(rt.block_on(raw_read(&s.store, &plan_now)), X_UPDATES);
        // The first reads of x and y fold their histories and write their snapshots.
        let t = Instant::now();
        let y = y_view(&rt, &dal, now);
        assert_eq!(y.view.r#type, format!("type-{}", Y_UPDATES - 1));
        let y = y_view(&rt, &dal, y_mid);
        assert_eq!(y.view.r#type, format!("type-{}", Y_UPDATES / 2 - 1));
        rt.block_on(dal.flush_snapshots());
        let st = dal.state_stats();
        println!(
            "\nfirst reads of x and y (as of now and their middles) folded {} updates and wrote \
             {} snapshots in {:.2} s",
            st.updates_folded,
            st.snapshots.written,
            t.elapsed().as_secs_f64()
        );
        assert!(st.snapshots.written >= (Y_UPDATES / 128) as u64, "{st:?}");
    }
    println!(
        "\ndal setup: {} events ({} MB) in {} segments of {SEGMENT_EVENTS} events, written and \
         indexed in {:.1} s\n  x: {} updates over {} segments; a cold view at now makes {} ranged \
         reads of {:.1} MB in all (coalesced: x's updates in a segment lie ~{} records apart), \
         at mid {} reads of {:.1} MB for {} updates\n  T1 joined: {} updates of 12 records over {} \
         segments, {} ranged reads of {:.1} MB",
        s.events,
        s.bytes / 1_000_000,
        s.segments,
        setup_time.as_secs_f64(),
        x_now.len(),
        spanned(&plan_now),
        plan_now.len(),
        read_bytes(&plan_now) as f64 / 1e6,
        OTHER_TOYS + 1,
        plan_mid.len(),
        read_bytes(&plan_mid) as f64 / 1e6,
        x_mid.len(),
        joined_entries.len(),
        spanned(&plan_joined),
        plan_joined.len(),
        read_bytes(&plan_joined) as f64 / 1e6,
    );

    let warm = s.dal();
    toy_view(&rt, &warm, now);
    joined_view(&rt, &warm, now);

    // ---- criterion ----
    let mut g = c.benchmark_group("view_1000_updates");
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("warm/now", |b| b.iter(|| toy_view(&rt, &warm, now)));
    g.bench_function("warm/mid", |b| b.iter(|| toy_view(&rt, &warm, mid)));
    for (name, as_of) in [("cold/now", now), ("cold/mid", mid)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let dal = s.dal();
                        let t = Instant::now();
                        toy_view(&rt, &dal, as_of);
                        t.elapsed()
                    })
                    .sum()
            })
        });
    }
    g.bench_function("baseline_raw_read/now", |b| {
        b.iter(|| rt.block_on(raw_read(&s.store, &plan_now)))
    });
    g.bench_function("baseline_raw_read/mid", |b| {
        b.iter(|| rt.block_on(raw_read(&s.store, &plan_mid)))
    });
    g.finish();

    let mut g = c.benchmark_group("joined_1_transfer_10_entries");
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("warm", |b| b.iter(|| joined_view(&rt, &warm, now)));
    g.bench_function("cold", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let dal = s.dal();
                    let t = Instant::now();
                    joined_view(&rt, &dal, now);
                    t.elapsed()
                })
                .sum()
        })
    });
    g.bench_function("baseline_raw_read", |b| {
        b.iter(|| rt.block_on(raw_read(&s.store, &plan_joined)))
    });
    g.finish();

    // ---- percentiles, interleaved ----
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let (s_ref, rt_ref) = (&s, &rt);
    let cold_toy = |as_of| {
        move || {
            let dal = s_ref.dal();
            let t = Instant::now();
            toy_view(rt_ref, &dal, as_of);
            t.elapsed()
        }
    };
    let cold_toy_history = |as_of| {
        move || {
            let dal = s_ref.dal_without_snapshots();
            let t = Instant::now();
            toy_view(rt_ref, &dal, as_of);
            t.elapsed()
        }
    };
    let cold_y = |as_of| {
        move || {
            let dal = s_ref.dal();
            let t = Instant::now();
            y_view(rt_ref, &dal, as_of);
            t.elapsed()
        }
    };
    let cold_y_history = move || {
        let dal = s_ref.dal_without_snapshots();
        let t = Instant::now();
        y_view(rt_ref, &dal, now);
        t.elapsed()
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "view_1000_updates/warm/now",
            WARM_X_ITERS,
            Box::new(|| {
                timed(&mut || {
                    toy_view(&rt, &warm, now);
                })
            }),
        ),
        (
            "view_1000_updates/warm/mid",
            WARM_X_ITERS,
            Box::new(|| {
                timed(&mut || {
                    toy_view(&rt, &warm, mid);
                })
            }),
        ),
        (
            "view_1000_updates/cold/now",
            COLD_ITERS,
            Box::new(cold_toy(now)),
        ),
        (
            "view_1000_updates/cold/mid",
            COLD_ITERS,
            Box::new(cold_toy(mid)),
        ),
        (
            "view_1000_updates/cold_no_snapshots/now",
            COLD_ITERS,
            Box::new(cold_toy_history(now)),
        ),
        (
            "view_1000_updates/cold_no_snapshots/mid",
            COLD_ITERS,
            Box::new(cold_toy_history(mid)),
        ),
        (
            "view_100000_updates/cold/now",
            COLD_ITERS,
            Box::new(cold_y(now)),
        ),
        (
            "view_100000_updates/cold/mid",
            COLD_ITERS,
            Box::new(cold_y(y_mid)),
        ),
        (
            "view_100000_updates/cold_no_snapshots/now",
            ROUNDS,
            Box::new(cold_y_history),
        ),
        (
            "view_1000_updates/baseline_raw_read/now",
            COLD_ITERS,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(raw_read(&s.store, &plan_now));
                })
            }),
        ),
        (
            "view_1000_updates/baseline_raw_read/mid",
            COLD_ITERS,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(raw_read(&s.store, &plan_mid));
                })
            }),
        ),
        (
            "joined_1_transfer_10_entries/warm",
            WARM_ITERS,
            Box::new(|| {
                timed(&mut || {
                    joined_view(&rt, &warm, now);
                })
            }),
        ),
        (
            "joined_1_transfer_10_entries/cold",
            COLD_ITERS,
            Box::new(|| {
                let dal = s.dal();
                let t = Instant::now();
                joined_view(&rt, &dal, now);
                t.elapsed()
            }),
        ),
        (
            "joined_1_transfer_10_entries/baseline_raw_read",
            COLD_ITERS,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(raw_read(&s.store, &plan_joined));
                })
            }),
        ),
    ];
    let samples = run_interleaved(cases);
    let p50 = |name: &str| samples.iter().find(|s| s.name == name).unwrap().pct(0.5);
    let base_of = |name: &str| {
        let family = if name.starts_with("joined") {
            "joined_1_transfer_10_entries/baseline_raw_read".to_owned()
        } else if name.ends_with("/mid") {
            "view_1000_updates/baseline_raw_read/mid".to_owned()
        } else {
            "view_1000_updates/baseline_raw_read/now".to_owned()
        };
        p50(&family)
    };
    println!(
        "\ndal percentiles (µs per view; {ROUNDS} interleaved rounds; ratio = p50 / p50 of the \
         raw-read floor of the same records):"
    );
    println!(
        "{:<48} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "case", "n", "p50", "p90", "p99", "max", "ratio"
    );
    for smp in &samples {
        println!(
            "{:<48} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8.2}",
            smp.name,
            smp.us.len(),
            smp.pct(0.5),
            smp.pct(0.9),
            smp.pct(0.99),
            smp.us[smp.us.len() - 1],
            smp.pct(0.5) / base_of(smp.name),
        );
    }

    // ---- where the time of x's view (as of now) goes: each phase alone, interleaved ----
    let builders = Builders::new();
    let def = warm.views().get("overseer.views.v1.Toy").unwrap();
    let records = rt.block_on(warm.fetch(&x_now)).unwrap();
    let state = builders
        .fold(records.iter().map(|r| &**r))
        .unwrap()
        .unwrap();
    let cold_dal = |f: fn(&tokio::runtime::Runtime, &Dal, &[IndexEntry], Micros)| {
        let (s, rt, x_now) = (&s, &rt, &x_now);
        move || {
            let dal = s.dal();
            let t = Instant::now();
            f(rt, &dal, x_now, now);
            t.elapsed()
        }
    };
    let n = 100;
    let phases: Vec<Case<'_>> = vec![
        (
            "catalog.record_updates (1000 index entries)",
            n,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(s.catalog.record_updates("toys", "x", now))
                        .unwrap();
                })
            }),
        ),
        (
            "fetch, cold (ranged reads, decode, cache insert)",
            n,
            Box::new(cold_dal(|rt, dal, x, _| {
                rt.block_on(dal.fetch(x)).unwrap();
            })),
        ),
        (
            "fetch, warm (1000 cache hits)",
            n,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(warm.fetch(&x_now)).unwrap();
                })
            }),
        ),
        (
            "fold (builders: 1000 change events)",
            n,
            Box::new(|| {
                timed(&mut || {
                    std::hint::black_box(builders.fold(records.iter().map(|r| &**r)).unwrap());
                })
            }),
        ),
        (
            "  of which: serde_json parse of the 1000 events",
            n,
            Box::new(|| {
                timed(&mut || {
                    for r in &records {
                        std::hint::black_box(serde_json::from_slice::<Value>(&r.raw).unwrap());
                    }
                })
            }),
        ),
        (
            "map (record_to_message + transcode to Toy)",
            n,
            Box::new(|| {
                timed(&mut || {
                    let m = record_to_message(&def.message, "x", &state).unwrap();
                    std::hint::black_box(m.transcode_to::<Toy>().unwrap());
                })
            }),
        ),
        (
            "dal.record, warm (catalog + fetch + fold + refs)",
            n,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(warm.record("toys", "x", now)).unwrap();
                })
            }),
        ),
        (
            "dal.record, cold",
            n,
            Box::new(cold_dal(|rt, dal, _, now| {
                rt.block_on(dal.record("toys", "x", now)).unwrap();
            })),
        ),
        (
            "dal.view, warm",
            n,
            Box::new(|| {
                timed(&mut || {
                    toy_view(&rt, &warm, now);
                })
            }),
        ),
        (
            "dal.view, cold",
            n,
            Box::new(cold_dal(|rt, dal, _, now| {
                toy_view(rt, dal, now);
            })),
        ),
        (
            "Dal::new (outside the cold timings)",
            n,
            Box::new(|| timed(&mut || drop(std::hint::black_box(s.dal())))),
        ),
        (
            "catalog.record_updates of T1 (2 updates)",
            n,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(s.catalog.record_updates("payments.transfers", "T1", now))
                        .unwrap();
                })
            }),
        ),
        (
            "catalog.records_by_ref (T1's 10 entries)",
            n,
            Box::new(|| {
                timed(&mut || {
                    rt.block_on(
                        s.catalog
                            .records_by_ref("ledger.entries", "transfer_id", "T1"),
                    )
                    .unwrap();
                })
            }),
        ),
    ];
    let phases = run_interleaved(phases);
    // p50 of the phase whose name starts with `name`.
    let med = |name: &str| {
        phases
            .iter()
            .find(|p| p.name.starts_with(name))
            .unwrap()
            .pct(0.5)
    };
    println!("\nwhere x's view as of now goes (p50 of {n} each, interleaved; µs):");
    for p in &phases {
        println!("{:<52} {:>9.0}", p.name, p.pct(0.5));
    }
    let (catalog, fetch_cold, fetch_warm, fold, parse, map) = (
        med("catalog.record_updates (1000"),
        med("fetch, cold"),
        med("fetch, warm"),
        med("fold"),
        med("  of which"),
        med("map"),
    );
    let (record_warm, view_warm, view_cold) = (
        med("dal.record, warm"),
        med("dal.view, warm"),
        med("dal.view, cold"),
    );
    println!(
        "  → warm view: catalog {:.0}% + fetch {:.0}% + fold {:.0}% (JSON parse alone {:.0}%) + \
         map {:.0}%\n  → dal.record − (catalog + fetch + fold) = {:.0} (history zip, refs); \
         view − record = {:.0} (evidence set, map)\n  → cold view − warm view = {:.0} (cold \
         fetch − warm fetch = {:.0})",
        100.0 * catalog / view_warm,
        100.0 * fetch_warm / view_warm,
        100.0 * fold / view_warm,
        100.0 * parse / view_warm,
        100.0 * map / view_warm,
        record_warm - (catalog + fetch_warm + fold),
        view_warm - record_warm,
        view_cold - view_warm,
        fetch_cold - fetch_warm,
    );
}

criterion_group! {
    name = benches;
    // No plots: they cost seconds per case, and the text (and the tables above) is the report.
    config = Criterion::default().without_plots();
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
