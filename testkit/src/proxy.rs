//! A fault-injecting HTTP proxy, put in front of a real server (the garage S3 store) so a
//! test sees what a flaky object store does to the engine: on a seeded share of the
//! requests it answers 503 or 500 without forwarding, forwards and then answers 500 (the
//! request was applied, the client is told it failed), cuts the connection before or
//! after forwarding, or forwards slowly. Every other request goes through unchanged,
//! headers included (a SigV4 signature covers the `Host` the client sent, so it is kept).
//!
//! Faults are drawn per request from one seeded generator, so a trial's sequence of
//! decisions is fixed by its seed; which request gets which decision still depends on
//! the order requests arrive in.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 503 SlowDown, not forwarded.
    Unavailable,
    /// 500 InternalError, not forwarded.
    Internal,
    /// Forwarded and answered by the server, then 500 InternalError to the client.
    InternalAfterApplied,
    /// The connection is closed before the request is forwarded.
    CutBefore,
    /// Forwarded and answered by the server, then the connection is closed unanswered.
    CutAfterApplied,
    /// Forwarded after a pause ([`FaultProxy::SLOW`]).
    Slow,
}

impl Fault {
    /// Every kind, in the order they are counted.
    pub const ALL: [Fault; 6] = [
        Fault::Unavailable,
        Fault::Internal,
        Fault::InternalAfterApplied,
        Fault::CutBefore,
        Fault::CutAfterApplied,
        Fault::Slow,
    ];

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

struct Shared {
    upstream: String,
    client: Client<HttpConnector, Incoming>,
    per_mille: AtomicU32,
    rng: Mutex<fastrand::Rng>,
    requests: AtomicU64,
    injected: [AtomicU64; 6],
}

impl Shared {
    fn draw(&self) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let per_mille = self.per_mille.load(Ordering::Relaxed);
        let mut rng = self.rng.lock().unwrap();
        if rng.u32(0..1000) >= per_mille {
            return None;
        }
        let f = Fault::ALL[rng.usize(0..Fault::ALL.len())];
        self.injected[f.index()].fetch_add(1, Ordering::Relaxed);
        Some(f)
    }
}

/// The proxy; stops serving when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

type ProxyBody = Either<Incoming, Full<Bytes>>;

impl FaultProxy {
    /// How long a [`Fault::Slow`] request waits before it is forwarded.
    pub const SLOW: Duration = Duration::from_secs(2);

    /// Listens on a free local port and forwards to `upstream` (`host:port` or a URL of
    /// one), injecting a fault into `per_mille` of every thousand requests, drawn from
    /// `seed`.
    pub async fn start(upstream: &str, per_mille: u32, seed: u64) -> std::io::Result<FaultProxy> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            client: Client::builder(TokioExecutor::new()).build_http(),
            per_mille: AtomicU32::new(per_mille),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            requests: AtomicU64::new(0),
            injected: Default::default(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let cut = Arc::new(Notify::new());
                    let c = cut.clone();
                    let svc = service_fn(move |req| handle(req, s.clone(), c.clone()));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    // Dropping the connection closes the socket: the cut.
                    tokio::select! {
                        _ = conn => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Ok(FaultProxy { addr, shared, task })
    }

    /// The proxy's URL, to use as the client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the share of requests that get a fault (0 turns faults off).
    pub fn set_per_mille(&self, per_mille: u32) {
        self.shared.per_mille.store(per_mille, Ordering::Relaxed);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> Vec<(Fault, u64)> {
        Fault::ALL
            .iter()
            .map(|f| (*f, self.shared.injected[f.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Faults injected so far, all kinds.
    pub fn injected_total(&self) -> u64 {
        self.injected().iter().map(|(_, n)| n).sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn s3_error(status: StatusCode, code: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Either::Right(Full::new(Bytes::from(body))))
        .unwrap()
}

async fn handle(
    req: Request<Incoming>,
    s: Arc<Shared>,
    cut: Arc<Notify>,
) -> Result<Response<ProxyBody>, Infallible> {
    let fault = s.draw();
    match fault {
        Some(Fault::Unavailable) => {
            return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"));
        }
        Some(Fault::Internal) => {
            return Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
        }
        Some(Fault::CutBefore) => {
            cut.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Slow) => tokio::time::sleep(FaultProxy::SLOW).await,
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = match format!("http://{}{path}", s.upstream).parse() {
        Ok(u) => u,
        Err(_) => return Ok(s3_error(StatusCode::BAD_REQUEST, "InvalidURI")),
    };
    let answer = match s.client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(_) => return Ok(s3_error(StatusCode::BAD_GATEWAY, "BadGateway")),
    };
    match fault {
        Some(Fault::InternalAfterApplied) | Some(Fault::CutAfterApplied) => {
            // The server has applied and answered it; the client never learns so.
            let _ = answer.into_body().collect().await;
            if fault == Some(Fault::CutAfterApplied) {
                cut.notify_one();
                return std::future::pending().await;
            }
            Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"))
        }
        _ => Ok(answer.map(Either::Left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with its path, counting them.
    async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let n = served.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = n.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        n.fetch_add(1, Ordering::Relaxed);
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = format!("{} {host}", req.uri().path());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, served)
    }

    /// One request on a fresh connection: the status and body, or `None` when the
    /// connection was closed unanswered.
    async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: bucket.example:3900\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.ok()?;
        if out.is_empty() {
            return None;
        }
        let status = out.split(' ').nth(1)?.parse().ok()?;
        Some((
            status,
            out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
        ))
    }

    #[tokio::test]
    async fn forwards_unchanged_and_injects_each_fault() {
        let (up, served) = echo().await;
        let proxy = FaultProxy::start(&format!("http://{up}"), 0, 7)
            .await
            .unwrap();
        // Unchanged: the path and the client's Host reach the server.
        assert_eq!(
            get(proxy.addr, "/b/k?x=1").await,
            Some((200, "/b/k bucket.example:3900".into()))
        );
        assert_eq!(served.load(Ordering::Relaxed), 1);

        // Every request faulty: each kind shows as it should.
        proxy.set_per_mille(1000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let before = served.load(Ordering::Relaxed);
            let kinds_before = proxy.injected();
            let got = get(proxy.addr, "/b/k").await;
            let applied = served.load(Ordering::Relaxed) > before;
            let kind = proxy
                .injected()
                .iter()
                .zip(kinds_before)
                .find(|((_, a), (_, b))| a > b)
                .map(|((f, _), _)| *f)
                .unwrap();
            match kind {
                Fault::Unavailable => assert_eq!((got.map(|g| g.0), applied), (Some(503), false)),
                Fault::Internal => assert_eq!((got.map(|g| g.0), applied), (Some(500), false)),
                Fault::InternalAfterApplied => {
                    assert_eq!((got.map(|g| g.0), applied), (Some(500), true))
                }
                Fault::CutBefore => assert_eq!((got, applied), (None, false)),
                Fault::CutAfterApplied => assert_eq!((got, applied), (None, true)),
                Fault::Slow => assert_eq!((got.map(|g| g.0), applied), (Some(200), true)),
            }
            seen.insert(kind);
            if seen.len() == Fault::ALL.len() {
                break;
            }
        }
        assert_eq!(seen.len(), Fault::ALL.len(), "every kind drawn: {seen:?}");
        assert_eq!(proxy.requests(), 1 + proxy.injected_total());
    }

    #[tokio::test]
    async fn a_seed_fixes_the_share_of_faults() {
        let (up, _) = echo().await;
        let proxy = FaultProxy::start(&up.to_string(), 100, 42).await.unwrap();
        for _ in 0..400 {
            let _ = proxy.shared.draw();
        }
        let n = proxy.injected_total();
        assert!((20..=70).contains(&n), "about 10% of 400: {n}");
        let again = FaultProxy::start(&up.to_string(), 100, 42).await.unwrap();
        for _ in 0..400 {
            let _ = again.shared.draw();
        }
        assert_eq!(again.injected(), proxy.injected(), "same seed, same draws");
    }
}
