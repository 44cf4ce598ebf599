//! The S3 backend against a real garage server started by `scripts/garage.sh`.
//!
//! Credentials are handed to the SDK explicitly (what the default chain would read from
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`): setting the process environment is
//! `unsafe` in Rust 2024 and would leak between the tests of this binary.

use std::time::{Duration, Instant};

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use overseer_dal::ObjectStore;
use overseer_dal::config::S3Config;
use overseer_dal::store::s3::S3Store;
use overseer_testkit::{Server, unique_name};

/// SDK settings for tests: no retries and short timeouts, so a dead server fails fast.
fn loader(key_id: &str, secret: &str) -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .credentials_provider(Credentials::new(key_id, secret, None, None, "garage-test"))
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
}

fn s3_config(garage: &Server, prefix: &str) -> S3Config {
    S3Config {
        bucket: garage.var("S3_BUCKET").to_owned(),
        prefix: prefix.to_owned(),
        endpoint: Some(garage.var("S3_ENDPOINT").to_owned()),
        region: garage.var("S3_REGION").to_owned(),
        path_style: true,
    }
}

async fn connect(garage: &Server, prefix: &str) -> S3Store {
    let cfg = s3_config(garage, prefix);
    let creds = loader(
        garage.var("AWS_ACCESS_KEY_ID"),
        garage.var("AWS_SECRET_ACCESS_KEY"),
    );
    S3Store::connect_with(&cfg, creds)
        .await
        .unwrap_or_else(|e| panic!("connect to garage at {:?}: {e}", cfg.endpoint))
}

#[tokio::test(flavor = "multi_thread")]
async fn garage_passes_the_object_store_suite() {
    let garage = Server::start("garage");
    let ns = unique_name("suite");
    // Under a configured prefix, and at the bucket root.
    let store = connect(&garage, "overseer/test").await;
    overseer_testkit::conformance::object_store_suite(&store, &ns, false).await;
    let root = connect(&garage, "").await;
    overseer_testkit::conformance::object_store_suite(&root, &format!("{ns}-root"), false).await;
    assert!(
        root.get(&format!("overseer/test/{ns}/seg/a"))
            .await
            .unwrap()
            .is_some(),
        "a prefixed store writes under its prefix"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prefixes_partition_one_bucket() {
    let garage = Server::start("garage");
    let a = connect(&garage, "tenant-a").await;
    let b = connect(&garage, "tenant-b/").await;
    a.put_create("segments/1", Bytes::from_static(b"from a"))
        .await
        .unwrap();
    b.put_create("segments/2", Bytes::from_static(b"from b"))
        .await
        .unwrap();
    assert_eq!(a.list("", None, 100).await.unwrap(), vec!["segments/1"]);
    assert_eq!(b.list("", None, 100).await.unwrap(), vec!["segments/2"]);
    assert_eq!(a.get("segments/2").await.unwrap(), None);
    assert_eq!(b.get("segments/1").await.unwrap(), None);
    assert!(a.get_range("segments/2", 0, 1).await.is_err());
    assert_eq!(
        &b.get("segments/2").await.unwrap().unwrap()[..],
        b"from b",
        "a trailing slash in the prefix is the same prefix"
    );
    // More keys than one ListObjectsV2 page (1000): `list` follows continuation tokens.
    let keys: Vec<String> = (0..1005u32).map(|i| format!("many/{i:04}")).collect();
    futures::stream::iter(&keys)
        .map(|k| a.put_create(k, Bytes::from_static(b"1")))
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(a.list("many/", None, 2000).await.unwrap(), keys);
    assert_eq!(a.list("many/", None, 1003).await.unwrap(), keys[..1003]);
    assert_eq!(
        a.list("many/", Some("many/0995"), 3).await.unwrap(),
        keys[996..999]
    );
}

#[tokio::test]
async fn a_dead_endpoint_is_a_transient_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // the listener is dropped here: nobody listens on the port any more
    let cfg = S3Config {
        bucket: "nowhere".into(),
        prefix: "p".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: "garage".into(),
        path_style: true,
    };
    let started = Instant::now();
    let err = S3Store::connect_with(&cfg, loader("GKnobody", "nosecret"))
        .await
        .expect_err("nothing listens there");
    assert!(err.is_transient(), "connection refused is transient: {err}");
    assert!(
        err.to_string().contains("nowhere"),
        "the error names the bucket: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded retries fail fast ({:?})",
        started.elapsed()
    );
}
