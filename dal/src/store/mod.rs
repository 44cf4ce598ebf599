//! The object store: where immutable segments and dead letters live.
//!
//! One small trait, three backends: [`local::LocalStore`] (a directory; the embedded
//! default), [`memory::MemoryStore`] and [`s3::S3Store`] (aws-sdk-s3: AWS, MinIO, garage).
//! All pass `overseer_testkit::conformance::object_store_suite`.
//!
//! Writes are create-only. A backend that can detect an existing key returns
//! [`PutOutcome::AlreadyExists`]; the callers treat that as success for the same bytes.
//! Some servers (garage) ignore the condition and overwrite, so immutability never depends
//! on it: every key we write is derived from a sequence number the catalog hands out once,
//! and a retried write carries identical bytes.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::Result;

pub mod local;
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;

/// What a create-only put found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written and is durable.
    Created,
    /// An object already had this key; nothing was written.
    AlreadyExists,
}

/// A flat key → immutable bytes store.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes `bytes` at `key` unless the key exists. Durable when it returns.
    async fn put_create(&self, key: &str, bytes: Bytes) -> Result<PutOutcome>;

    /// The whole object, or `None` if there is no such key.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// `len` bytes from `start`. A missing key or a range past the end is an error.
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes>;

    /// Keys beginning with `prefix`, in lexicographic (byte) order, strictly after
    /// `start_after` if given, at most `limit` of them.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// A short human description (backend and location) for logs.
    fn describe(&self) -> String;

    /// The local directory holding the objects, if they are on this machine's disk (what
    /// ingestion's free-space check watches).
    fn local_dir(&self) -> Option<&std::path::Path> {
        None
    }
}

/// Lists every key under `prefix` by paging through [`ObjectStore::list`].
pub async fn list_all(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<String>> {
    const PAGE: usize = 1000;
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = store
            .list(prefix, out.last().map(String::as_str), PAGE)
            .await?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// Shared handle to an object store.
pub type DynStore = Arc<dyn ObjectStore>;
