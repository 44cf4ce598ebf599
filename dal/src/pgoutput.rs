//! pgoutput: row changes from PostgreSQL logical replication (protocol version 1).
//!
//! The ingestion's PostgreSQL source hands every row change over as two byte strings, both
//! exactly as the walsender sent them: the `I`/`U`/`D` message itself (stored as the
//! update's `raw`) and the `R` (Relation) message describing its table as it was when the
//! change was decoded (stored as the update's `context`). Keeping the Relation bytes beside every
//! change makes each stored update self-describing: it can be read years later, after the
//! table has been altered, without replaying the stream.
//!
//! [`decode_change`] reads such a pair into a [`RowChange`] (column names, types, key flags
//! and the old/new tuples as [`Cell`]s). It is the one pgoutput parser of the project: the
//! ingestion's pgoutput consumer uses it for the update's metadata, and the
//! [`builder`](crate::builder) uses it to fold row images. It lives in the data access layer
//! because both need it and the DAL must not depend on ingestion. It never panics, whatever
//! the bytes: malformed input is a [`DecodeError`] saying what and where.
//!
//! Wire format (all integers big-endian, strings NUL-terminated; see "Logical Replication
//! Message Formats" in the PostgreSQL manual):
//!
//! ```text
//! Relation  'R' relid:u32 namespace:str name:str replident:u8 ncols:i16
//!               { flags:u8 (1 = key) name:str type_oid:u32 typmod:i32 } * ncols
//! Insert    'I' relid:u32 'N' tuple
//! Update    'U' relid:u32 [ 'K' tuple | 'O' tuple ] 'N' tuple
//! Delete    'D' relid:u32 ( 'K' tuple | 'O' tuple )
//! tuple     ncols:i16 { 'n' | 'u' | 't' len:i32 bytes | 'b' len:i32 bytes } * ncols
//! ```
//!
//! `'n'` is SQL NULL, `'u'` an unchanged TOASTed value the walsender did not send (the row
//! still has it; an update that did not touch a large column), `'t'` the value in text
//! form. `'b'` (binary) only appears when the stream asks for `binary 'true'`, which the
//! source never does; it is rejected. The old tuple is `'K'` (only the replica-identity
//! key columns are set, the others are null) or `'O'` (the whole old row, `REPLICA
//! IDENTITY FULL`).

use serde_json::{Map, Value};

use crate::update::Op;

/// Why a pgoutput message could not be read: the message, the offset and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl DecodeError {
    pub fn new(reason: impl Into<String>) -> Self {
        DecodeError(reason.into())
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// One column of a relation, as its Relation message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The column type's OID (`pg_type.oid`, e.g. 25 = text, 1700 = numeric).
    pub type_oid: u32,
    /// Part of the replica identity (by default the primary key).
    pub key: bool,
}

/// A Relation (`R`) message: the table a row change refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The relation OID the `I`/`U`/`D` messages refer to.
    pub id: u32,
    /// The schema; empty for `pg_catalog`.
    pub namespace: String,
    pub table: String,
    /// `REPLICA IDENTITY`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// In tuple order.
    pub columns: Vec<Column>,
}

/// One value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL (also every non-key column of a key-only old tuple).
    Null,
    /// A TOASTed value the update did not change, so the walsender did not send it: the row
    /// still holds the previous value, which an earlier image of the row has.
    UnchangedToast,
    /// The value in PostgreSQL's text output form (`numeric` `12.50`, `bool` `t`, ...).
    Text(String),
}

/// What kind of row change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
}

impl ChangeOp {
    /// The update document's op.
    pub fn op(self) -> Op {
        match self {
            ChangeOp::Insert => Op::Create,
            ChangeOp::Update => Op::Update,
            ChangeOp::Delete => Op::Delete,
        }
    }
}

/// Which old tuple an update or delete carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OldTuple {
    /// `K`: only the replica-identity key columns are set; the others are [`Cell::Null`].
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// A decoded row change (`I`/`U`/`D`) together with its relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    /// The relation OID (stable for a table's lifetime, not across dump/restore).
    pub relation_id: u32,
    pub namespace: String,
    pub table: String,
    pub op: ChangeOp,
    /// The relation's columns; `old` and `new` have one cell per column, in this order.
    pub columns: Vec<Column>,
    /// Which old tuple `old` is, when there is one.
    pub old_kind: Option<OldTuple>,
    /// The old row: deletes always; updates only when the key changed (`K`) or with
    /// `REPLICA IDENTITY FULL` (`O`); inserts never.
    pub old: Option<Vec<Cell>>,
    /// The new row: inserts and updates.
    pub new: Option<Vec<Cell>>,
}

impl RowChange {
    /// `namespace.table`, the model name the change belongs to by default.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.table)
    }

    /// The row image that identifies the record: the new row for inserts and updates, the
    /// old (key or full) row for deletes.
    pub fn image(&self) -> Option<&[Cell]> {
        match self.op {
            ChangeOp::Insert | ChangeOp::Update => self.new.as_deref(),
            ChangeOp::Delete => self.old.as_deref(),
        }
    }

    /// The cell of column `name` in `cells` (one of this change's tuples).
    pub fn cell<'a>(&self, cells: &'a [Cell], name: &str) -> Option<&'a Cell> {
        let i = self.columns.iter().position(|c| c.name == name)?;
        cells.get(i)
    }

    /// `cells` (one of this change's tuples) as a JSON object: text values as strings,
    /// nulls as `null`; unchanged TOAST columns are left out, since their value is not in
    /// this change. A key-only old tuple has its non-key columns as `null`.
    pub fn to_json(&self, cells: &[Cell]) -> Value {
        let mut m = Map::new();
        for (col, cell) in self.columns.iter().zip(cells) {
            match cell {
                Cell::Null => {
                    m.insert(col.name.clone(), Value::Null);
                }
                Cell::UnchangedToast => {}
                Cell::Text(s) => {
                    m.insert(col.name.clone(), Value::String(s.clone()));
                }
            }
        }
        Value::Object(m)
    }
}

/// The relation OID an `R`, `I`, `U` or `D` message refers to (`None` for other messages or
/// when too short). The source uses it to pair changes with their Relation message.
pub fn relation_id(msg: &[u8]) -> Option<u32> {
    match msg {
        [b'R' | b'I' | b'U' | b'D', a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Reads a Relation (`R`) message.
pub fn decode_relation(msg: &[u8]) -> Result<Relation, DecodeError> {
    let mut r = Reader::new(msg, "Relation");
    let tag = r.u8()?;
    if tag != b'R' {
        return Err(r.bad(format!("tag {:?}, expected 'R'", tag as char)));
    }
    let id = r.u32()?;
    let namespace = r.cstr()?;
    let table = r.cstr()?;
    let replica_identity = r.u8()?;
    let ncols = r.count()?;
    let mut columns = Vec::with_capacity(ncols.min(r.remaining()));
    for _ in 0..ncols {
        let flags = r.u8()?;
        let name = r.cstr()?;
        let type_oid = r.u32()?;
        let _typmod = r.u32()?;
        columns.push(Column {
            name,
            type_oid,
            key: flags & 1 != 0,
        });
    }
    r.end()?;
    Ok(Relation {
        id,
        namespace,
        table,
        replica_identity,
        columns,
    })
}

/// Reads a row change (`raw`: an `I`, `U` or `D` message) with the Relation message of its
/// table (`relation`). DecodeErrors malformed bytes, a relation id that does not match, and
/// tuples whose column count differs from the relation's.
pub fn decode_change(raw: &[u8], relation: &[u8]) -> Result<RowChange, DecodeError> {
    let rel = decode_relation(relation)?;
    let mut r = Reader::new(raw, "row change");
    let tag = r.u8()?;
    let op = match tag {
        b'I' => ChangeOp::Insert,
        b'U' => ChangeOp::Update,
        b'D' => ChangeOp::Delete,
        t => {
            return Err(r.bad(format!(
                "tag {:?} is not a row change (I, U or D)",
                t as char
            )));
        }
    };
    let relid = r.u32()?;
    if relid != rel.id {
        return Err(DecodeError::new(format!(
            "pgoutput: change for relation {relid} came with the Relation message of {} ({}.{})",
            rel.id, rel.namespace, rel.table
        )));
    }
    let ncols = rel.columns.len();
    let mut old_kind = None;
    let mut old = None;
    let mut new = None;
    let mut part = r.u8()?;
    if matches!(op, ChangeOp::Update | ChangeOp::Delete) && matches!(part, b'K' | b'O') {
        old_kind = Some(if part == b'K' {
            OldTuple::Key
        } else {
            OldTuple::Full
        });
        old = Some(r.tuple(ncols)?);
        if op == ChangeOp::Update {
            part = r.u8()?;
        }
    }
    match op {
        ChangeOp::Insert | ChangeOp::Update => {
            if part != b'N' {
                return Err(r.bad(format!("tuple marker {:?}, expected 'N'", part as char)));
            }
            new = Some(r.tuple(ncols)?);
        }
        ChangeOp::Delete => {
            if old.is_none() {
                return Err(r.bad(format!(
                    "tuple marker {:?}, expected 'K' or 'O'",
                    part as char
                )));
            }
        }
    }
    r.end()?;
    Ok(RowChange {
        relation_id: relid,
        namespace: rel.namespace,
        table: rel.table,
        op,
        columns: rel.columns,
        old_kind,
        old,
        new,
    })
}

/// A bounds-checked cursor over one message. Every read either succeeds or returns a
/// [`DecodeError`] naming the message and the offset: no indexing can panic.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn bad(&self, why: impl std::fmt::Display) -> DecodeError {
        DecodeError::new(format!(
            "pgoutput {} ({} bytes): {why} at offset {}",
            self.what,
            self.buf.len(),
            self.pos
        ))
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.bad(format!("truncated (needs {n} more bytes)")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An Int16 count, which must not be negative.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(2)?;
        let n = i16::from_be_bytes([b[0], b[1]]);
        usize::try_from(n).map_err(|_| self.bad(format!("negative count {n}")))
    }

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let buf = self.buf;
        let rest = &buf[self.pos.min(buf.len())..];
        let Some(nul) = rest.iter().position(|b| *b == 0) else {
            return Err(self.bad("unterminated string"));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|e| self.bad(format!("string is not UTF-8 ({e})")))?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    /// TupleData with exactly `ncols` columns.
    fn tuple(&mut self, ncols: usize) -> Result<Vec<Cell>, DecodeError> {
        let n = self.count()?;
        if n != ncols {
            return Err(self.bad(format!(
                "tuple has {n} columns, its Relation message {ncols}"
            )));
        }
        let mut cells = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let kind = self.u8()?;
            cells.push(match kind {
                b'n' => Cell::Null,
                b'u' => Cell::UnchangedToast,
                b't' => {
                    let len = self.u32()?;
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| i32::try_from(*l).is_ok())
                        .ok_or_else(|| self.bad(format!("bad value length {len:#x}")))?;
                    let bytes = self.take(len)?;
                    let s = std::str::from_utf8(bytes)
                        .map_err(|e| self.bad(format!("text value is not UTF-8 ({e})")))?;
                    Cell::Text(s.to_owned())
                }
                b'b' => {
                    return Err(
                        self.bad("binary column value (the source streams text values only)")
                    );
                }
                k => return Err(self.bad(format!("unknown column kind {:?}", k as char))),
            });
        }
        Ok(cells)
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.bad(format!("{n} trailing bytes"))),
        }
    }
}

/// Encodes pgoutput messages the way the walsender does: for tests, fixtures and tools
/// that need real pgoutput bytes without a server (tests only: `overseer-testkit`).
#[cfg(any(test, feature = "testkit"))]
pub mod encode {
    use super::Cell;

    /// A message under construction; the bytes are in `.0`.
    #[derive(Clone, Debug, Default)]
    pub struct Msg(pub Vec<u8>);

    impl Msg {
        /// A message starting with its tag byte (`b'R'`, `b'I'`, `b'U'`, `b'D'`, ...).
        pub fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        pub fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        pub fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        /// A NUL-terminated string.
        pub fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        /// Tuple data: the column count, then each cell (`n`, `u`, or `t` + length + text).
        pub fn tuple(mut self, cells: &[Cell]) -> Self {
            self = self.u16(cells.len() as u16);
            for c in cells {
                self = match c {
                    Cell::Null => self.u8(b'n'),
                    Cell::UnchangedToast => self.u8(b'u'),
                    Cell::Text(t) => {
                        let mut m = self.u8(b't').u32(t.len() as u32);
                        m.0.extend_from_slice(t.as_bytes());
                        m
                    }
                };
            }
            self
        }
    }

    /// Sample messages of one table, `payments.transfers(id text key, account_id text,
    /// amount numeric, memo text)`: shared by the decoder's and the consumer's tests.
    pub mod sample {
        use super::super::Cell;
        use super::Msg;

        pub const REL: u32 = 16_390;

        pub fn relation() -> Vec<u8> {
            let cols = [
                (1, "id", 25),
                (0, "account_id", 25),
                (0, "amount", 1700),
                (0, "memo", 25),
            ];
            let mut m = Msg::new(b'R')
                .u32(REL)
                .s("payments")
                .s("transfers")
                .u8(b'd')
                .u16(cols.len() as u16);
            for (flags, name, oid) in cols {
                m = m.u8(flags).s(name).u32(oid).u32(u32::MAX);
            }
            m.0
        }

        pub fn t(s: &str) -> Cell {
            Cell::Text(s.into())
        }

        pub fn insert() -> Vec<u8> {
            Msg::new(b'I')
                .u32(REL)
                .u8(b'N')
                .tuple(&[t("t1"), t("acct-1"), t("12.50"), Cell::Null])
                .0
        }

        pub fn update_toast() -> Vec<u8> {
            Msg::new(b'U')
                .u32(REL)
                .u8(b'N')
                .tuple(&[t("t1"), t("acct-1"), t("13.00"), Cell::UnchangedToast])
                .0
        }

        pub fn update_key_change() -> Vec<u8> {
            Msg::new(b'U')
                .u32(REL)
                .u8(b'K')
                .tuple(&[t("t0"), Cell::Null, Cell::Null, Cell::Null])
                .u8(b'N')
                .tuple(&[t("t1"), t("acct-1"), t("13.00"), t("m")])
                .0
        }

        pub fn delete() -> Vec<u8> {
            Msg::new(b'D')
                .u32(REL)
                .u8(b'K')
                .tuple(&[t("t1"), Cell::Null, Cell::Null, Cell::Null])
                .0
        }

        /// An insert announcing a text value of 2 GiB that is not there.
        pub fn huge_length() -> Vec<u8> {
            Msg::new(b'I')
                .u32(REL)
                .u8(b'N')
                .u16(4)
                .u8(b't')
                .u32(0x7fff_ffff)
                .0
        }

        /// An insert announcing a negative number of columns.
        pub fn negative_count() -> Vec<u8> {
            Msg::new(b'I').u32(REL).u8(b'N').u16(0x8000).0
        }

        /// Calls `check(change, relation)` on truncations, bit flips and random garbage of
        /// the sample messages (and of the relation beside them), for never-panics tests.
        pub fn fuzz(mut check: impl FnMut(&[u8], &[u8])) {
            let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
            let mut rnd = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let rel = relation();
            let valid = [
                insert(),
                update_toast(),
                update_key_change(),
                delete(),
                relation(),
            ];
            for m in &valid {
                for cut in 0..=m.len() {
                    check(&m[..cut], &rel);
                    check(m, &rel[..cut.min(rel.len())]);
                }
                for _ in 0..2000 {
                    let mut b = m.clone();
                    let flips = 1 + rnd() % 4;
                    for _ in 0..flips {
                        let i = (rnd() as usize) % b.len();
                        b[i] = rnd() as u8;
                    }
                    check(&b, &rel);
                    let mut r = rel.clone();
                    let i = (rnd() as usize) % r.len();
                    r[i] = rnd() as u8;
                    check(m, &r);
                }
            }
            for _ in 0..5000 {
                let len = (rnd() % 64) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                if let Some(first) = b.first_mut() {
                    *first = [b'I', b'U', b'D', b'R'][(rnd() % 4) as usize];
                }
                check(&b, &rel);
                check(&insert(), &b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::encode::Msg;
    use super::*;

    use super::encode::sample::*;

    #[test]
    fn relation_message() {
        let r = decode_relation(&relation()).unwrap();
        assert_eq!(r.id, REL);
        assert_eq!(
            (r.namespace.as_str(), r.table.as_str()),
            ("payments", "transfers")
        );
        assert_eq!(r.replica_identity, b'd');
        assert_eq!(r.columns.len(), 4);
        assert_eq!(
            r.columns[0],
            Column {
                name: "id".into(),
                type_oid: 25,
                key: true
            }
        );
        assert!(!r.columns[2].key);
        assert_eq!(r.columns[2].type_oid, 1700);
        assert_eq!(relation_id(&relation()), Some(REL));
        assert_eq!(relation_id(&insert()), Some(REL));
        assert_eq!(relation_id(b"B\0\0"), None);
    }

    #[test]
    fn changes_decode() {
        let rel = relation();
        let c = decode_change(&insert(), &rel).unwrap();
        assert_eq!(c.op, ChangeOp::Insert);
        assert_eq!(c.qualified_name(), "payments.transfers");
        assert_eq!(c.old, None);
        let row = c.to_json(c.image().unwrap());
        assert_eq!(
            row,
            serde_json::json!({"id": "t1", "account_id": "acct-1", "amount": "12.50", "memo": null})
        );

        let c = decode_change(&update_toast(), &rel).unwrap();
        assert_eq!(c.op, ChangeOp::Update);
        assert_eq!((c.old_kind, c.old.as_ref()), (None, None));
        let new = c.new.as_deref().unwrap();
        assert_eq!(c.cell(new, "memo"), Some(&Cell::UnchangedToast));
        let row = c.to_json(new);
        assert!(
            row.get("memo").is_none(),
            "unchanged TOAST is omitted: {row}"
        );
        assert_eq!(row["amount"], "13.00");

        let c = decode_change(&update_key_change(), &rel).unwrap();
        assert_eq!(c.old_kind, Some(OldTuple::Key));
        assert_eq!(c.cell(c.old.as_deref().unwrap(), "id"), Some(&t("t0")));
        assert_eq!(c.cell(c.image().unwrap(), "id"), Some(&t("t1")));

        let c = decode_change(&delete(), &rel).unwrap();
        assert_eq!(c.op, ChangeOp::Delete);
        assert_eq!(c.new, None);
        assert_eq!(c.to_json(c.image().unwrap())["id"], "t1");

        let full = Msg::new(b'D')
            .u32(REL)
            .u8(b'O')
            .tuple(&[t("t1"), t("a"), t("1"), t("m")])
            .0;
        assert_eq!(
            decode_change(&full, &rel).unwrap().old_kind,
            Some(OldTuple::Full)
        );
    }

    #[test]
    fn mismatches_are_rejected() {
        let rel = relation();
        let other = Msg::new(b'I').u32(REL + 1).u8(b'N').tuple(&[t("x")]).0;
        let e = decode_change(&other, &rel).unwrap_err();
        assert!(e.0.contains("relation"), "{e}");
        let short = Msg::new(b'I').u32(REL).u8(b'N').tuple(&[t("x")]).0;
        let e = decode_change(&short, &rel).unwrap_err();
        assert!(e.0.contains("1 columns"), "{e}");
        let binary = Msg::new(b'I')
            .u32(REL)
            .u8(b'N')
            .u16(4)
            .u8(b'b')
            .u32(1)
            .u8(7)
            .0;
        assert!(
            decode_change(&binary, &rel)
                .unwrap_err()
                .0
                .contains("binary")
        );
        let mut trailing = insert();
        trailing.push(0);
        assert!(
            decode_change(&trailing, &rel)
                .unwrap_err()
                .0
                .contains("trailing")
        );
        assert!(decode_change(&relation(), &rel).is_err());
        assert!(decode_change(&insert(), &insert()).is_err());
        let del_no_old = Msg::new(b'D').u32(REL).u8(b'N').tuple(&[t("t1")]).0;
        assert!(decode_change(&del_no_old, &rel).is_err());
        let bad_utf8 = Msg::new(b'I')
            .u32(REL)
            .u8(b'N')
            .u16(4)
            .u8(b't')
            .u32(2)
            .u8(0xff)
            .u8(0xfe)
            .0;
        assert!(
            decode_change(&bad_utf8, &rel)
                .unwrap_err()
                .0
                .contains("UTF-8")
        );
    }

    /// Truncations, bit flips and random garbage: always a value or an error, never a panic.
    #[test]
    fn never_panics_on_any_bytes() {
        fuzz(|raw, ctx| {
            let _ = decode_change(raw, ctx);
            let _ = decode_relation(ctx);
            let _ = relation_id(raw);
        });
        let rel = relation();
        // Huge announced lengths and counts must not allocate or read past the end.
        let huge = huge_length();
        assert!(decode_change(&huge, &rel).is_err());
        let neg = negative_count();
        assert!(
            decode_change(&neg, &rel)
                .unwrap_err()
                .0
                .contains("negative")
        );
    }
}
