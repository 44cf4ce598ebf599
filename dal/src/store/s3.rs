//! S3 backend (aws-sdk-s3): AWS S3, MinIO, garage.
//!
//! Every key lives under the configured prefix (`PREFIX/key`, or `key` at the bucket root).
//! Credentials come from the default AWS chain (the `AWS_*` environment variables first),
//! never from the config file.
//!
//! Create-only writes send `If-None-Match: *`: AWS and MinIO answer 412 for an existing key,
//! which is [`PutOutcome::AlreadyExists`]. garage ignores the header and overwrites; that is
//! harmless because a key is only ever rewritten with identical bytes (see [`super`]).
//!
//! Errors are classified for the callers' retry loops: timeouts, connection failures,
//! throttling and 5xx are transient, everything else (denied, no such bucket, bad range) is
//! definite.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use bytes::Bytes;
use std::time::Duration;

use super::{ObjectStore, PutOutcome};
use crate::config::S3Config;
use crate::keys::validate_key;
use crate::{Error, Result};

/// ListObjectsV2 returns at most this many keys per page.
const MAX_PAGE: usize = 1000;

/// Object store over one bucket (and key prefix) of an S3-compatible server.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// The configured prefix without surrounding slashes; empty for the bucket root.
    root: String,
    /// For [`ObjectStore::describe`] only.
    endpoint: Option<String>,
}

/// How long [`S3Store::connect`] asks again while the store answers transiently.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

impl S3Store {
    /// Connects with the default AWS configuration chain and checks the bucket is reachable,
    /// so a wrong bucket, endpoint or credentials shows at start-up, not at the first write.
    pub async fn connect(cfg: &S3Config) -> Result<S3Store> {
        Self::connect_with(
            cfg,
            aws_config::defaults(aws_config::BehaviorVersion::latest()),
        )
        .await
    }

    /// Like [`S3Store::connect`], starting from `loader` so callers can set retries,
    /// timeouts or a credentials provider. The region and endpoint always come from `cfg`.
    pub async fn connect_with(cfg: &S3Config, loader: aws_config::ConfigLoader) -> Result<S3Store> {
        let root = cfg.prefix.trim_matches('/').to_owned();
        if !root.is_empty() {
            validate_key(&root).map_err(|_| Error::invalid("store.prefix", format!("{root:?}")))?;
        }
        let sdk = loader.region(Region::new(cfg.region.clone())).load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.path_style);
        if let Some(endpoint) = &cfg.endpoint {
            s3 = s3.endpoint_url(endpoint);
        }
        let store = S3Store {
            client: Client::from_conf(s3.build()),
            bucket: cfg.bucket.clone(),
            root,
            endpoint: cfg.endpoint.clone(),
        };
        // A store that answers but is unwell (a 5xx, a reset or cut connection, a timeout)
        // is asked again for a while: that is no reason to stop. Nothing listening at the
        // endpoint fails at once (most often a wrong endpoint: the operator hears of it
        // now), as does a definite answer (no such bucket, bad credentials).
        let mut pause = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        loop {
            match store
                .client
                .head_bucket()
                .bucket(&store.bucket)
                .send()
                .await
            {
                Ok(_) => return Ok(store),
                Err(e) => {
                    let refused = refused(&e);
                    let e = store.error("HEAD bucket", "", e);
                    if !e.is_transient()
                        || refused
                        || tokio::time::Instant::now() + pause > deadline
                    {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, retry_in = ?pause, "object store not answering yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The bucket key of store key `key`.
    fn full(&self, key: &str) -> String {
        if self.root.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.root)
        }
    }

    /// The store key of bucket key `full`, `None` if it is outside our prefix.
    fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.root.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(&self.root)?.strip_prefix('/')
        }
    }

    /// An error naming the operation, bucket and key, classified transient or definite.
    fn error<E>(&self, op: &str, key: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let message = format!(
            "{op} s3://{}/{}: {}",
            self.bucket,
            self.full(key),
            DisplayErrorContext(&e)
        );
        Error::Store {
            transient: is_transient(&e),
            message,
            source: Some(Box::new(e)),
        }
    }

    fn definite(&self, key: &str, message: impl std::fmt::Display) -> Error {
        Error::Store {
            message: format!("s3://{}/{}: {message}", self.bucket, self.full(key)),
            transient: false,
            source: None,
        }
    }
}

/// Whether `e` is a connection refused: nothing listens at the endpoint.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        next = err.source();
    }
    false
}

fn is_transient<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) => true,
        // A user error (e.g. an unparseable endpoint) does not heal by retrying.
        SdkError::DispatchFailure(d) => !d.is_user(),
        SdkError::ResponseError(r) => r.raw().status().is_server_error(),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status >= 500
                || status == 429
                || matches!(
                    s.err().code(),
                    Some(
                        "SlowDown"
                            | "Throttling"
                            | "ThrottlingException"
                            | "RequestTimeout"
                            | "InternalError"
                            | "ServiceUnavailable"
                            // a concurrent conditional write to the same key is in flight
                            | "ConditionalRequestConflict"
                    )
                )
        }
        _ => false,
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_create(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        validate_key(key)?;
        metrics::counter!("overseer_object_store_puts_total", "backend" => "s3").increment(1);
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .if_none_match("*")
            .body(bytes.into())
            .send()
            .await;
        match sent {
            Ok(_) => Ok(PutOutcome::Created),
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 412 => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(self.error("PUT", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        validate_key(key)?;
        let sent = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(SdkError::ServiceError(s))
                if matches!(s.err(), GetObjectError::NoSuchKey(_))
                    || s.raw().status().as_u16() == 404 =>
            {
                return Ok(None);
            }
            Err(e) => return Err(self.error("GET", key, e)),
        };
        let body = out.body.collect().await.map_err(|e| Error::Store {
            message: format!(
                "GET s3://{}/{}: reading body: {e}",
                self.bucket,
                self.full(key)
            ),
            transient: true,
            source: None,
        })?;
        Ok(Some(body.into_bytes()))
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        validate_key(key)?;
        let Some(end) = start.checked_add(len) else {
            return Err(self.definite(key, format!("range {start}+{len} overflows")));
        };
        if len == 0 {
            // `bytes=a-b` cannot name zero bytes: check the key exists and is long enough.
            let head = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(self.full(key))
                .send()
                .await
                .map_err(|e| self.error("HEAD", key, e))?;
            let size = head.content_length.unwrap_or(0).max(0) as u64;
            if start > size {
                return Err(self.definite(key, format!("range {start}+0 past the end ({size})")));
            }
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| self.error("GET range", key, e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| Error::Store {
                message: format!(
                    "GET s3://{}/{}: reading body: {e}",
                    self.bucket,
                    self.full(key)
                ),
                transient: true,
                source: None,
            })?
            .into_bytes();
        // S3 answers a range that starts inside the object but ends past it with the bytes
        // that exist: short data means the caller's location is wrong, never "fewer bytes".
        if body.len() as u64 != len {
            return Err(self.definite(
                key,
                format!(
                    "range {start}+{len} past the end (got {} bytes)",
                    body.len()
                ),
            ));
        }
        Ok(body)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        while out.len() < limit {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full(prefix))
                .max_keys((limit - out.len()).min(MAX_PAGE) as i32);
            req = match &token {
                Some(t) => req.continuation_token(t),
                None => req.set_start_after(start_after.map(|a| self.full(a))),
            };
            let page = req
                .send()
                .await
                .map_err(|e| self.error("LIST", prefix, e))?;
            // ListObjectsV2 returns keys in UTF-8 byte order, which is the order we promise.
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| self.strip(o.key()?))
                    .map(str::to_owned),
            );
            token = page.next_continuation_token;
            if !page.is_truncated.unwrap_or(false) || token.is_none() {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    fn describe(&self) -> String {
        format!(
            "s3://{}/{} at {}",
            self.bucket,
            self.root,
            self.endpoint.as_deref().unwrap_or("AWS")
        )
    }
}
