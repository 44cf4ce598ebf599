//! `CatalogFeed`: the embedded-mode subscription that derives notifications from the catalog
//! and object store and keeps its cursor in the catalog.
//!
//! These run on real time, not `tokio::time::pause()`: the embedded catalog works on
//! blocking threads, and paused time would fire the tests' timeouts while a catalog call is
//! in flight. Timeouts here only bound what must arrive, or wait briefly to see that
//! nothing does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;

use overseer_dal::Result;
use overseer_dal::bus::feed::CatalogFeed;
use overseer_dal::bus::{Delivered, DeliveryTag, Subscription};
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::keys::segment_key;
use overseer_dal::segment::SegmentBuilder;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::store::{DynStore, ObjectStore, PutOutcome};
use overseer_dal::update::{CommitBatch, IndexEntry, UpdateNotification, UpdateRecord, now_us};
use overseer_testkit::history::{Changes, write_segment};

const POLL: Duration = Duration::from_millis(10);
/// Upper bound for something that must arrive (never reached when it does).
const ARRIVES: Duration = Duration::from_secs(20);
/// How long a test waits to conclude that nothing arrives.
const QUIET: Duration = Duration::from_millis(300);

struct Env {
    _dir: tempfile::TempDir,
    catalog: DynCatalog,
    store: DynStore,
    changes: Changes,
    t: i64,
}

impl Env {
    fn new() -> Self {
        Self::with_store(Arc::new(MemoryStore::new()))
    }

    fn with_store(store: DynStore) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap());
        Env {
            _dir: dir,
            catalog,
            store,
            changes: Changes::new("ledger").refs(&["transfer_id"]),
            t: 1_700_000_000_000_000,
        }
    }

    fn records(&mut self, n: usize) -> Vec<UpdateRecord> {
        (0..n)
            .map(|i| {
                self.t += 1_000;
                let id = format!("e{}", self.t);
                self.changes.insert(
                    "ledger.entries",
                    &id,
                    self.t,
                    json!({"transfer_id": format!("T{i}"), "amount_minor": i}),
                )
            })
            .collect()
    }

    /// Writes and commits one segment of `n` records; returns their notifications.
    async fn segment(&mut self, n: usize) -> Vec<UpdateNotification> {
        let recs = self.records(n);
        write_segment(&*self.store, &*self.catalog, recs, vec![])
            .await
            .unwrap()
            .iter()
            .map(IndexEntry::notification)
            .collect()
    }

    async fn feed(&self, name: &str) -> CatalogFeed {
        CatalogFeed::open(self.catalog.clone(), self.store.clone(), name, POLL)
            .await
            .unwrap()
    }

    async fn feed_at_end(&self, name: &str) -> CatalogFeed {
        CatalogFeed::open_at_end(self.catalog.clone(), self.store.clone(), name, POLL)
            .await
            .unwrap()
    }
}

/// A segment reserved now and written and committed later, as a slow concurrent batch.
struct Slow {
    seq: u64,
    records: Vec<UpdateRecord>,
}

impl Slow {
    async fn reserve(env: &mut Env, n: usize) -> Slow {
        let seq = env.catalog.reserve_segment().await.unwrap();
        Slow {
            seq,
            records: env.records(n),
        }
    }

    async fn commit(self, env: &Env) -> Vec<UpdateNotification> {
        let mut seg = SegmentBuilder::new(self.seq, 0);
        let entries: Vec<IndexEntry> = self
            .records
            .iter()
            .map(|r| IndexEntry::from_record(r, seg.push(r)))
            .collect();
        env.store
            .put_create(&segment_key(self.seq), seg.finish(vec![]))
            .await
            .unwrap();
        let fresh = env
            .catalog
            .commit(CommitBatch {
                segment_seq: Some(self.seq),
                entries: entries.clone(),
                now_us: now_us(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(fresh.iter().all(|f| *f));
        entries.iter().map(IndexEntry::notification).collect()
    }
}

/// Receives until `n` notifications came (failing after [`ARRIVES`]).
async fn take(feed: &mut CatalogFeed, n: usize) -> Vec<Delivered> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(ARRIVES, feed.recv(n - got.len()))
            .await
            .expect("notifications arrive")
            .unwrap();
        assert!(!batch.is_empty() && batch.len() <= n);
        got.extend(batch);
    }
    got
}

/// Asserts nothing arrives for a while.
async fn quiet(feed: &mut CatalogFeed) {
    if let Ok(got) = tokio::time::timeout(QUIET, feed.recv(100)).await {
        panic!("expected nothing, got {:?}", got.unwrap());
    }
}

fn notes(d: &[Delivered]) -> Vec<UpdateNotification> {
    d.iter().map(|d| d.note.clone()).collect()
}

fn tag(seq: u64, index: i64) -> DeliveryTag {
    DeliveryTag {
        partition: 0,
        offset: ((seq as i64) << 24) | index,
    }
}

#[tokio::test]
async fn delivers_every_record_of_committed_segments_in_order() {
    let mut env = Env::new();
    let mut want = Vec::new();
    for n in [3, 1, 4] {
        want.extend(env.segment(n).await);
    }
    let mut feed = env.feed("runner").await;
    let got = take(&mut feed, 8).await;
    assert_eq!(notes(&got), want);
    let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
    let expected: Vec<_> = [
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
        (3, 0),
        (3, 1),
        (3, 2),
        (3, 3),
    ]
    .into_iter()
    .map(|(s, i)| tag(s, i))
    .collect();
    assert_eq!(tags, expected);
    // each note points at its own segment
    assert!(
        got.iter()
            .all(|d| (d.tag.offset >> 24) as u64 == d.note.segment_seq)
    );
    quiet(&mut feed).await;
}

#[tokio::test]
async fn recv_returns_at_most_max() {
    let mut env = Env::new();
    let want = env.segment(5).await;
    let mut feed = env.feed("runner").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let b = feed.recv(2).await.unwrap();
        assert!(!b.is_empty() && b.len() <= 2);
        got.extend(b);
    }
    assert_eq!(notes(&got), want);
    // max 0 is taken as 1
    let mut env = Env::new();
    env.segment(2).await;
    let mut feed = env.feed("runner").await;
    assert_eq!(feed.recv(0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn resumes_after_the_committed_offset() {
    let mut env = Env::new();
    let mut want = Vec::new();
    for n in [3, 4, 2] {
        want.extend(env.segment(n).await);
    }
    let mut feed = env.feed("runner").await;
    let got = take(&mut feed, 9).await;
    // done through the second record of segment 2, in one commit of several tags
    feed.commit(&[got[3].tag.clone(), got[4].tag.clone()])
        .await
        .unwrap();
    assert_eq!(
        env.catalog.get_meta("feed/runner").await.unwrap(),
        Some(tag(2, 1).offset.to_string())
    );
    // an older tag does not move the cursor back; no tags change nothing
    feed.commit(&[got[0].tag.clone()]).await.unwrap();
    feed.commit(&[]).await.unwrap();
    assert_eq!(feed.committed_offset(), tag(2, 1).offset);
    drop(feed);

    // mid-segment: the rest of segment 2 and everything after comes again
    let mut feed = env.feed("runner").await;
    let again = take(&mut feed, 4).await;
    assert_eq!(notes(&again), want[5..]);
    assert_eq!(again[0].tag, tag(2, 2));
    quiet(&mut feed).await;

    // at the end of a segment: only what follows it
    feed.commit(&[again[1].tag.clone()]).await.unwrap();
    drop(feed);
    let mut feed = env.feed("runner").await;
    assert_eq!(notes(&take(&mut feed, 2).await), want[7..]);
    quiet(&mut feed).await;

    // another name has its own cursor and starts from the beginning
    let mut other = env.feed("auditor").await;
    assert_eq!(notes(&take(&mut other, 9).await), want);
}

#[tokio::test]
async fn commit_rejects_foreign_tags() {
    let env = Env::new();
    let mut feed = env.feed("runner").await;
    for bad in [
        DeliveryTag {
            partition: 3,
            offset: 1,
        },
        DeliveryTag {
            partition: 0,
            offset: -5,
        },
    ] {
        assert!(feed.commit(&[bad]).await.is_err());
    }
    assert_eq!(env.catalog.get_meta("feed/runner").await.unwrap(), None);
}

#[tokio::test]
async fn holds_back_segments_past_a_pending_one() {
    let mut env = Env::new();
    let first = env.segment(2).await;
    let slow = Slow::reserve(&mut env, 3).await;
    let later = env.segment(2).await;
    let mut feed = env.feed("runner").await;
    assert_eq!(notes(&take(&mut feed, 2).await), first);
    // segment 3 is committed, but segment 2 may still commit before it
    quiet(&mut feed).await;
    let middle = slow.commit(&env).await;
    let got = take(&mut feed, 5).await;
    assert_eq!(notes(&got[..3]), middle);
    assert_eq!(notes(&got[3..]), later);
    quiet(&mut feed).await;
}

#[tokio::test]
async fn an_abandoned_segment_does_not_hold_the_feed() {
    let mut env = Env::new();
    let gone = env.catalog.reserve_segment().await.unwrap();
    let later = env.segment(2).await;
    let mut feed = env.feed("runner").await;
    quiet(&mut feed).await;
    env.catalog.abandon_segment(gone).await.unwrap();
    assert_eq!(notes(&take(&mut feed, 2).await), later);
}

#[tokio::test]
async fn open_at_end_skips_existing_history() {
    let mut env = Env::new();
    env.segment(3).await;
    env.segment(2).await;
    let mut feed = env.feed_at_end("runner").await;
    quiet(&mut feed).await;
    let new = env.segment(2).await;
    assert_eq!(notes(&take(&mut feed, 2).await), new);
    // the start position was stored at once: a restart before any commit resumes there
    drop(feed);
    let mut feed = env.feed_at_end("runner").await;
    assert_eq!(notes(&take(&mut feed, 2).await), new);
    quiet(&mut feed).await;
    // and an empty catalog starts at the beginning
    let mut env = Env::new();
    let mut feed = env.feed_at_end("runner").await;
    let first = env.segment(1).await;
    assert_eq!(notes(&take(&mut feed, 1).await), first);
}

#[tokio::test]
async fn open_at_end_finds_the_newest_of_many_segments() {
    let mut env = Env::new();
    for i in 0..37 {
        if i % 5 == 0 {
            let gone = env.catalog.reserve_segment().await.unwrap();
            env.catalog.abandon_segment(gone).await.unwrap();
        }
        env.segment(1).await;
    }
    let mut feed = env.feed_at_end("runner").await;
    quiet(&mut feed).await;
    let new = env.segment(2).await;
    assert_eq!(notes(&take(&mut feed, 2).await), new);
}

#[tokio::test]
async fn open_at_end_does_not_skip_a_pending_segment() {
    let mut env = Env::new();
    env.segment(2).await;
    let slow = Slow::reserve(&mut env, 2).await;
    let later = env.segment(1).await;
    let mut feed = env.feed_at_end("runner").await;
    quiet(&mut feed).await;
    let middle = slow.commit(&env).await;
    let got = take(&mut feed, 3).await;
    assert_eq!(notes(&got[..2]), middle);
    assert_eq!(notes(&got[2..]), later);
}

#[tokio::test]
async fn recv_wakes_up_when_a_segment_commits() {
    let mut env = Env::new();
    let mut feed = env.feed("runner").await;
    let waiting = tokio::spawn(async move {
        let got = feed.recv(10).await.unwrap();
        (feed, got)
    });
    // let it find nothing and start polling
    tokio::time::sleep(POLL * 5).await;
    assert!(!waiting.is_finished());
    let want = env.segment(3).await;
    let (_feed, got) = tokio::time::timeout(ARRIVES, waiting)
        .await
        .expect("recv wakes up")
        .unwrap();
    assert_eq!(notes(&got), want);
}

/// A memory store whose `get` hangs (until cancelled) once `allowed` is used up.
#[derive(Debug, Default)]
struct GatedStore {
    inner: MemoryStore,
    allowed: AtomicUsize,
}

#[async_trait]
impl ObjectStore for GatedStore {
    async fn put_create(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        self.inner.put_create(key, bytes).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let passed = self
            .allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !passed {
            std::future::pending::<()>().await;
        }
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        self.inner.get_range(key, start, len).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.inner.list(prefix, start_after, limit).await
    }

    fn describe(&self) -> String {
        "gated memory store".into()
    }
}

#[tokio::test]
async fn a_cancelled_recv_loses_nothing() {
    let store = Arc::new(GatedStore::default());
    let mut env = Env::with_store(store.clone());
    let mut feed = env.feed("runner").await;
    // cancelled while waiting for history
    assert!(
        tokio::time::timeout(POLL * 3, feed.recv(100))
            .await
            .is_err()
    );
    let mut want = env.segment(2).await;
    want.extend(env.segment(3).await);
    want.extend(env.segment(1).await);
    // cancelled while fetching the second segment, the first one already decoded
    store.allowed.store(1, Ordering::SeqCst);
    assert!(tokio::time::timeout(QUIET, feed.recv(100)).await.is_err());
    // cancelled while fetching the first segment it looks at
    let mut other = env.feed("other").await;
    assert!(tokio::time::timeout(QUIET, other.recv(100)).await.is_err());
    store.allowed.store(usize::MAX, Ordering::SeqCst);
    for f in [&mut feed, &mut other] {
        let got = take(f, 6).await;
        assert_eq!(notes(&got), want, "every notification once, in order");
        quiet(f).await;
    }
}

/// A warming feed leaves every record of the segments it read in the cache, under the
/// location its notification names: the runner's views then read them without a GET.
#[tokio::test]
async fn warming_puts_every_read_record_in_the_cache() {
    use overseer_dal::cache::ReadCache;
    use overseer_dal::update::UpdateLoc;
    let mut env = Env::new();
    for n in [3, 2] {
        env.segment(n).await;
    }
    let cache = Arc::new(ReadCache::new(1 << 20));
    let mut feed = env.feed("runner").await.warming(cache.clone());
    let got = take(&mut feed, 5).await;
    assert_eq!(got.len(), 5);
    for d in &got {
        let loc = UpdateLoc {
            segment_seq: d.note.segment_seq,
            offset: d.note.offset,
            len: d.note.length,
        };
        let rec = cache.get(&loc).expect("the record is cached");
        assert_eq!(rec.record_id, d.note.record_id);
        assert_eq!(rec.position, d.note.position);
    }
    assert_eq!(cache.stats().entries, 5);
}

/// A feed over a catalog that signals its commits wakes as a segment commits, not at its
/// next poll: with an hour-long poll, `recv` still returns the new segment's records.
#[tokio::test]
async fn a_commit_wakes_a_waiting_recv() {
    let mut env = Env::new();
    let mut feed = CatalogFeed::open(
        env.catalog.clone(),
        env.store.clone(),
        "runner",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let waiting = tokio::spawn(async move { feed.recv(16).await.unwrap() });
    // Let it find nothing and start waiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    let want = env.segment(3).await;
    let got = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the commit woke the feed (its poll is an hour)")
        .unwrap();
    assert_eq!(notes(&got), want);
}
