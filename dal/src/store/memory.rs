//! In-memory object store: for tests and throwaway runs. Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectStore, PutOutcome};
use crate::keys::validate_key;
use crate::{Error, Result};

/// A `BTreeMap` behind a mutex; lexicographic listing comes for free.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put_create(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        validate_key(key)?;
        let mut map = self.objects.lock().expect("store lock");
        if map.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        map.insert(key.to_owned(), bytes);
        Ok(PutOutcome::Created)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        validate_key(key)?;
        Ok(self.objects.lock().expect("store lock").get(key).cloned())
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        let obj = self.get(key).await?.ok_or_else(|| Error::Store {
            message: format!("no object {key:?}"),
            transient: false,
            source: None,
        })?;
        let end = start.checked_add(len).filter(|e| *e <= obj.len() as u64);
        match end {
            Some(end) => Ok(obj.slice(start as usize..end as usize)),
            None => Err(Error::Store {
                message: format!(
                    "range {start}+{len} past the end of {key:?} ({})",
                    obj.len()
                ),
                transient: false,
                source: None,
            }),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let map = self.objects.lock().expect("store lock");
        let lower = match start_after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_owned()),
            _ => std::ops::Bound::Included(prefix.to_owned()),
        };
        Ok(map
            .range((lower, std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
