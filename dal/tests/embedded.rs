//! The conformance suites on the backends that need no server: memory and local-directory
//! object stores, the embedded catalog, the in-process bus.

use std::sync::Arc;

use overseer_dal::bus::memory::MemoryBus;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::ObjectStore;
use overseer_dal::store::local::LocalStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_testkit::conformance;

#[tokio::test]
async fn memory_store_conforms() {
    conformance::object_store_suite(&MemoryStore::new(), "t", true).await;
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    conformance::object_store_suite(&store, "t", true).await;
    // nothing but the objects (no temp files) is left behind
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

#[tokio::test]
async fn local_store_writes_are_create_only_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let mut tasks = vec![];
    for i in 0..16u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.put_create("race/key", bytes::Bytes::from(vec![i; 4096]))
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap() == overseer_dal::store::PutOutcome::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one writer wins");
    let got = store.get("race/key").await.unwrap().unwrap();
    assert!(
        got.iter().all(|b| *b == got[0]),
        "the object is one writer's bytes, whole"
    );
}

// Several workers, so the suite's concurrent incident writers really run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_catalog_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cat.redb");
    conformance::catalog_suite(Box::new(move || {
        let path = path.clone();
        Box::pin(async move {
            let c: DynCatalog = Arc::new(EmbeddedCatalog::open(&path)?);
            Ok(c)
        })
    }))
    .await;
}

#[tokio::test]
async fn memory_bus_conforms() {
    // The suite publishes 200 before it reads: the queues must hold them (a smaller bus
    // would, by design, make the publisher wait for the reader).
    conformance::bus_suite(&MemoryBus::new(256), "g").await;
}
