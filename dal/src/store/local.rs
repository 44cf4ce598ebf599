//! Local-directory object store: the embedded default.
//!
//! A key `a/b/c` is the file `ROOT/a/b/c` (keys are validated so none can leave ROOT).
//! A put writes a temporary file beside the target, fsyncs it, then links it into place
//! with a no-clobber rename: the object appears whole or not at all, an existing object is
//! never replaced (that is [`PutOutcome::AlreadyExists`]), and the parent directory is
//! fsynced so the name survives a crash.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectStore, PutOutcome};
use crate::keys::validate_key;
use crate::{Error, Result};

/// Temporary files start with this and are never listed.
const TMP_PREFIX: &str = ".tmp-";

/// Open segment files kept for ranged reads: objects are never rewritten (puts are
/// no-clobber, nothing deletes), so a handle and its size stay valid.
const MAX_OPEN: usize = 256;

/// Ranged reads up to this size run on the calling task (a `pread` from the page cache
/// takes microseconds; handing it to the blocking pool costs two thread wake-ups); larger
/// ones go to the blocking pool.
const INLINE_READ: u64 = 256 << 10;

/// An open object: its file and size.
type Open = Arc<(std::fs::File, u64)>;

/// Object store over a directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Open objects for ranged reads, by key (at most [`MAX_OPEN`]; emptied when full).
    open: Arc<Mutex<HashMap<String, Open>>>,
}

impl LocalStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(root.display(), e))?;
        Ok(LocalStore {
            root,
            open: Arc::default(),
        })
    }

    /// The object `key` opened, from the kept handles or by opening it.
    fn opened(&self, key: &str, path: &Path) -> Result<Open> {
        if let Some(o) = self.open.lock().expect("never poisoned").get(key) {
            return Ok(o.clone());
        }
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found(key)),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let size = f
            .metadata()
            .map_err(|e| Error::io(path.display(), e))?
            .len();
        let o = Arc::new((f, size));
        let mut open = self.open.lock().expect("never poisoned");
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        open.insert(key.to_owned(), o.clone());
        Ok(o)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn not_found(key: &str) -> Error {
    Error::Store {
        message: format!("no object {key:?}"),
        transient: false,
        source: None,
    }
}

fn put_blocking(path: &Path, bytes: &[u8]) -> Result<PutOutcome> {
    let parent = path.parent().expect("a key has a parent under root");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
    if path.exists() {
        return Ok(PutOutcome::AlreadyExists);
    }
    // Written whole under a name no other writer uses, then linked into place: the link
    // fails if the key exists, so a put never replaces an object (no-clobber, as S3's
    // If-None-Match), and a crash leaves only a `.tmp-` file that listing skips.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // create_new: a name another process left (or uses: two containers may both be pid 1)
    // is never truncated; the next sequence number is tried instead.
    let (tmp, written) = loop {
        let tmp = parent.join(format!(
            "{TMP_PREFIX}{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            fastrand::u64(..)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            opened => {
                let written = opened
                    .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
                    .map_err(|e| Error::io(tmp.display(), e));
                break (tmp, written);
            }
        }
    };
    let linked = written.and_then(|_| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path.display(), e)),
    });
    // The temporary name goes whatever happened (best effort: listing skips it anyway).
    let _ = std::fs::remove_file(&tmp);
    if !linked? {
        return Ok(PutOutcome::AlreadyExists);
    }
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(parent.display(), e))?;
    Ok(PutOutcome::Created)
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<String>> {
    // Start the walk at the deepest directory the prefix fully names.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut out = Vec::new();
    let mut stack = vec![(root.join(dir_part), dir_part.to_owned())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(dir.display(), e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(dir.display(), e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let key = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let ft = ent.file_type().map_err(|e| Error::io(dir.display(), e))?;
            if ft.is_dir() {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    stack.push((ent.path(), key));
                }
            } else if key.starts_with(prefix) {
                out.push(key);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_create(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || put_blocking(&path, &bytes))
            .await
            .map_err(|e| Error::io("put task", std::io::Error::other(e)))?
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(v) => Ok(Some(Bytes::from(v))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        let path = self.path(key)?;
        let read = move |store: &LocalStore, key: &str| -> Result<Bytes> {
            let o = store.opened(key, &path)?;
            let (f, size) = (&o.0, o.1);
            if start.checked_add(len).is_none_or(|end| end > size) {
                return Err(Error::Store {
                    message: format!("range {start}+{len} past the end of {key:?} ({size})"),
                    transient: false,
                    source: None,
                });
            }
            let mut buf = vec![0; len as usize];
            f.read_exact_at(&mut buf, start)
                .map_err(|e| Error::io(path.display(), e))?;
            Ok(Bytes::from(buf))
        };
        if len <= INLINE_READ {
            return read(self, key);
        }
        let (store, key) = (self.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || read(&store, &key))
            .await
            .map_err(|e| Error::io("read task", std::io::Error::other(e)))?
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let keys = tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .map_err(|e| Error::io("list task", std::io::Error::other(e)))??;
        Ok(keys
            .into_iter()
            .filter(|k| start_after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .collect())
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    fn local_dir(&self) -> Option<&std::path::Path> {
        Some(&self.root)
    }
}
