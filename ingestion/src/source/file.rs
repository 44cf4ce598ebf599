//! The file source: a JSONL file (one event per line) or, for the BSON format, a file of
//! concatenated BSON documents. For the embedded demo, imports and tests.
//!
//! Position = the event's starting byte offset (zero-padded, so positions sort). The
//! checkpoint stored with each batch is the byte offset just past its last event, and a
//! restarted source resumes there: with the catalog commit being the acknowledgement,
//! an event is read again only if its batch never became durable.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{AckToken, Source, SourceContext, SourceEvent, SourceMsg};
use crate::config::{FileSourceConfig, Format};
use crate::{Error, Result};

/// Largest BSON document accepted from a file before the rest is treated as garbage.
const MAX_BSON_DOC: usize = 48 << 20;

/// Reads a file of events.
#[derive(Debug)]
pub struct FileSource {
    cfg: FileSourceConfig,
    bson: bool,
}

impl FileSource {
    pub fn new(cfg: FileSourceConfig, format: Format) -> Self {
        FileSource {
            cfg,
            bson: format == Format::MongoChangeStreamBson,
        }
    }
}

/// One framed event read from the file.
enum Frame {
    Event {
        start: u64,
        end: u64,
        bytes: Vec<u8>,
    },
    /// Nothing more for now (end of file).
    Eof,
}

fn next_jsonl(r: &mut impl BufRead, at: &mut u64, follow: bool) -> std::io::Result<Frame> {
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(Frame::Eof);
        }
        if line.last() != Some(&b'\n') && follow {
            // A partial last line: a writer may still be appending. Come back later.
            return Ok(Frame::Eof);
        }
        let start = *at;
        *at += n as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Ok(Frame::Event {
            start,
            end: *at,
            bytes: line,
        });
    }
}

fn next_bson(r: &mut impl BufRead, at: &mut u64) -> std::io::Result<Frame> {
    let buf = r.fill_buf()?;
    if buf.len() < 4 {
        return Ok(Frame::Eof);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let start = *at;
    if !(5..=MAX_BSON_DOC).contains(&len) {
        // The framing itself is broken: there is no next document to find. Hand the rest
        // over as one event (it will be quarantined with the reason) and stop there.
        let mut rest = Vec::new();
        r.take(MAX_BSON_DOC as u64).read_to_end(&mut rest)?;
        *at += rest.len() as u64;
        return Ok(Frame::Event {
            start,
            end: *at,
            bytes: rest,
        });
    }
    let mut doc = vec![0; len];
    match r.read_exact(&mut doc) {
        Ok(()) => {
            *at += len as u64;
            Ok(Frame::Event {
                start,
                end: *at,
                bytes: doc,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Frame::Eof),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let path = self.cfg.path.clone();
        let io_err = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut offset: u64 = match &ctx.resume {
            Some(s) if !s.checkpoint.is_empty() => s.checkpoint.parse().map_err(|_| {
                Error::source(
                    &ctx.name,
                    format!("stored checkpoint {:?} is not a byte offset", s.checkpoint),
                    false,
                )
            })?,
            _ => 0,
        };
        let file = std::fs::File::open(&path).map_err(io_err)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        tracing::info!(source = %ctx.name, path = %path.display(), offset, "file source started");
        loop {
            if ctx.shutdown.is_cancelled() {
                return Ok(());
            }
            // Reading a chunk of frames is blocking I/O, but short: the BufReader refills in
            // 1 MiB reads. Good enough for a file source.
            let frame = if self.bson {
                next_bson(&mut reader, &mut offset)
            } else {
                next_jsonl(&mut reader, &mut offset, self.cfg.follow)
            }
            .map_err(io_err)?;
            match frame {
                Frame::Event { start, end, bytes } => {
                    let ev = SourceEvent {
                        raw: Bytes::from(bytes),
                        key: None,
                        context: None,
                        position: format!("{start:016}"),
                        commit_time_us: None,
                        ack: Some(AckToken::Offset(end)),
                        checkpoint: Some(end.to_string()),
                    };
                    tokio::select! {
                        r = ctx.tx.send(SourceMsg::Event(ev)) => if r.is_err() { return Ok(()) },
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                    }
                }
                Frame::Eof if !self.cfg.follow => {
                    // A drained file is complete: its watermark moves to now, so checks
                    // waiting on it run rather than time out as stale.
                    let hb = SourceMsg::Heartbeat {
                        watermark_us: overseer_dal::update::now_us(),
                    };
                    let _ = ctx.tx.send(hb).await;
                    return Ok(());
                }
                Frame::Eof => {
                    let hb = SourceMsg::Heartbeat {
                        watermark_us: overseer_dal::update::now_us(),
                    };
                    if ctx.tx.send(hb).await.is_err() {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ctx.heartbeat.min(Duration::from_millis(200))) => {}
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                    }
                    // Pick up appended bytes: re-seek to drop the reader's EOF state.
                    reader.seek(SeekFrom::Start(offset)).map_err(io_err)?;
                }
            }
        }
    }
}
