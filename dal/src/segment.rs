//! The segment object: one immutable object holding a batch of update records.
//!
//! ```text
//! "OVSEG001" | varint len, UpdateRecord | ... | SegmentFooter | u32 LE footer len | "OVSEGEND"
//! ```
//! Each record stays individually addressable: the catalog keeps `(seq, offset, len)` of the
//! record's message bytes (after its varint prefix), so one ranged GET fetches one update.
//! The footer names the segment's sequence, its record count, the CRC of the body and the
//! progress of the sources in the batch, so the catalog (checkpoints included) can be rebuilt
//! from the object store alone.

use bytes::Bytes;
use prost::Message;

use crate::update::{SegmentFooter, SourceCheckpoint, UpdateLoc, UpdateRecord};
use crate::{Error, Result};

const HEAD: &[u8; 8] = b"OVSEG001";
const TAIL: &[u8; 8] = b"OVSEGEND";

/// Accumulates records of one segment in a single buffer.
#[derive(Debug)]
pub struct SegmentBuilder {
    seq: u64,
    buf: Vec<u8>,
    count: u32,
}

impl SegmentBuilder {
    /// A builder for segment `seq`, with room for about `capacity` bytes.
    pub fn new(seq: u64, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 64);
        buf.extend_from_slice(HEAD);
        SegmentBuilder { seq, buf, count: 0 }
    }

    /// Appends a record; returns where its message bytes are.
    pub fn push(&mut self, rec: &UpdateRecord) -> UpdateLoc {
        let len = rec.encoded_len();
        prost::encoding::encode_varint(len as u64, &mut self.buf);
        let offset = self.buf.len();
        rec.encode_raw(&mut self.buf);
        self.count += 1;
        UpdateLoc {
            segment_seq: self.seq,
            offset: offset as u32,
            len: len as u32,
        }
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size in bytes so far.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// Seals the segment with its footer.
    pub fn finish(mut self, checkpoints: Vec<SourceCheckpoint>) -> Bytes {
        let footer = SegmentFooter {
            seq: self.seq,
            count: self.count,
            checkpoints,
            body_crc32: crc32fast::hash(&self.buf[HEAD.len()..]),
        };
        let start = self.buf.len();
        footer.encode(&mut self.buf).expect("vec grows");
        let flen = (self.buf.len() - start) as u32;
        self.buf.extend_from_slice(&flen.to_le_bytes());
        self.buf.extend_from_slice(TAIL);
        Bytes::from(self.buf)
    }
}

/// A parsed segment: its footer and every record with its location.
#[derive(Debug)]
pub struct Segment {
    pub footer: SegmentFooter,
    pub records: Vec<(UpdateLoc, UpdateRecord)>,
}

/// Parses and verifies a whole segment object. `what` names it in errors.
pub fn decode_segment(bytes: &[u8], what: &str) -> Result<Segment> {
    let corrupt = |m: &str| Error::corrupt(what, m);
    let min = HEAD.len() + 4 + TAIL.len();
    if bytes.len() < min || &bytes[..8] != HEAD || &bytes[bytes.len() - 8..] != TAIL {
        return Err(corrupt("not a segment (bad magic or too short)"));
    }
    let flen_at = bytes.len() - 8 - 4;
    let flen =
        u32::from_le_bytes(bytes[flen_at..flen_at + 4].try_into().expect("4 bytes")) as usize;
    if flen > flen_at - HEAD.len() {
        return Err(corrupt("footer length out of range"));
    }
    let body_end = flen_at - flen;
    let footer = SegmentFooter::decode(&bytes[body_end..flen_at])
        .map_err(|e| corrupt(&format!("footer: {e}")))?;
    let body = &bytes[HEAD.len()..body_end];
    if crc32fast::hash(body) != footer.body_crc32 {
        return Err(corrupt("body checksum mismatch"));
    }
    let mut records = Vec::with_capacity(footer.count as usize);
    let mut pos = HEAD.len();
    while pos < body_end {
        let mut cursor = &bytes[pos..body_end];
        let before = cursor.len();
        let len = prost::encoding::decode_varint(&mut cursor)
            .map_err(|e| corrupt(&format!("record length at {pos}: {e}")))?
            as usize;
        let offset = pos + (before - cursor.len());
        if offset + len > body_end {
            return Err(corrupt(&format!("record at {pos} overruns the body")));
        }
        let rec = UpdateRecord::decode(&bytes[offset..offset + len])
            .map_err(|e| corrupt(&format!("record at {offset}: {e}")))?;
        records.push((
            UpdateLoc {
                segment_seq: footer.seq,
                offset: offset as u32,
                len: len as u32,
            },
            rec,
        ));
        pos = offset + len;
    }
    if records.len() != footer.count as usize {
        return Err(corrupt("record count differs from footer"));
    }
    Ok(Segment { footer, records })
}

/// Decodes one record from the bytes a ranged read of `loc` returned.
pub fn decode_record(bytes: &[u8], loc: &UpdateLoc) -> Result<UpdateRecord> {
    UpdateRecord::decode(bytes).map_err(|e| {
        Error::corrupt(
            format!("segment {} record at {}", loc.segment_seq, loc.offset),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::Op;

    fn rec(i: u32) -> UpdateRecord {
        UpdateRecord {
            source: "s".into(),
            position: format!("{i:08}"),
            model: "m".into(),
            record_id: format!("id/{i}"),
            op: Op::Create as i32,
            event_time_us: i as i64,
            raw: vec![i as u8; i as usize].into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_ranges() {
        let mut b = SegmentBuilder::new(7, 0);
        let locs: Vec<_> = (0..50).map(|i| b.push(&rec(i))).collect();
        let bytes = b.finish(vec![SourceCheckpoint {
            source: "s".into(),
            checkpoint: "49".into(),
            watermark_us: 49,
        }]);
        let seg = decode_segment(&bytes, "t").unwrap();
        assert_eq!(seg.footer.seq, 7);
        assert_eq!(seg.footer.checkpoints[0].checkpoint, "49");
        assert_eq!(seg.records.len(), 50);
        for (i, loc) in locs.iter().enumerate() {
            assert_eq!(seg.records[i].0, *loc);
            let slice = &bytes[loc.offset as usize..(loc.offset + loc.len) as usize];
            assert_eq!(decode_record(slice, loc).unwrap(), rec(i as u32));
        }
    }

    #[test]
    fn corruption_is_detected() {
        let mut b = SegmentBuilder::new(1, 0);
        b.push(&rec(3));
        let mut bytes = b.finish(vec![]).to_vec();
        bytes[10] ^= 0xff;
        assert!(decode_segment(&bytes, "t").is_err());
        assert!(decode_segment(b"OVSEG001", "t").is_err());
        let empty = SegmentBuilder::new(2, 0).finish(vec![]);
        assert_eq!(decode_segment(&empty, "t").unwrap().records.len(), 0);
    }
}
