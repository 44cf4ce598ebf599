//! Freshness: a source's watermark from upstream evidence only (DESIGN invariant 4).
//!
//! A source's watermark says "every change committed upstream at or before this time has
//! been received". Being caught up *at the transport* (at the end of a Kafka partition, at
//! the end of a followed file) says nothing of the kind: the connector or the writer
//! upstream may be seconds behind its database. So the watermark is taken only from:
//!
//! - **commit times of the events themselves**, per *lane* — a Kafka partition, or the one
//!   ordered stream of a file or a replication slot. A lane delivers in commit order, so
//!   when it has delivered an event committed at `t`, everything it carries before `t` has
//!   arrived. The time `t` itself is not complete (the rest of that transaction may be in
//!   the next batch), so a lane claims `t - 1`; a source whose lanes do not arrive in
//!   commit order declares a bound (`max_out_of_order_ms`, Flink's bounded
//!   out-of-orderness) and claims `t - 1 - bound`.
//! - **the minimum over the source's lanes**: one partition behind the others holds the
//!   source back. A Kafka source declares every partition of its topic, including those
//!   another instance of its consumer group reads. A lane that has shown nothing since
//!   this process started says nothing, so it holds this instance's watermark where the
//!   other evidence leaves it (the catalog's stored watermark at start, or source-wide
//!   heartbeats).
//! - **lanes shared across instances** (declared lanes: a Kafka topic's partitions): each
//!   instance also records a claim per lane in the catalog (`SourceProgress::claim_lanes`;
//!   moved claims ride with each batch's commit): when its lanes are declared, every
//!   declared lane at least at its floor, then each lane it reads as it moves. The catalog
//!   raises the source's watermark to the lowest lane claim, never lowers it. Two
//!   instances splitting a topic's partitions thus move the source together; a partition
//!   nobody has read yet holds it at the floor it was declared with; after a rebalance the
//!   new reader goes on from the lane's recorded claim. Lanes of a topic the source no
//!   longer reads are retired; a partition this instance does not know of is not.
//! - **heartbeats from upstream**, for every lane or for the lanes they name: the
//!   PostgreSQL server's clock sampled with its WAL insert position once the stream has
//!   reached that position; a connector's heartbeat topic (Debezium `ts_ms`, the MongoDB
//!   connector's post-batch resume token), for the partitions read here that are at their
//!   end once it has settled; a drained file that is not followed (it is complete).
//! - **the opt-in `caught_up_means_now`**, for a source known to have no upstream lag (the
//!   producer writes the topic or the file at commit time): caught up at the transport then
//!   claims the current time. Off by default.
//!
//! [`Freshness`] keeps this per source inside the pipeline; the catalog keeps the highest
//! watermark ever claimed, per source and per declared lane (neither goes back).

use std::collections::{BTreeMap, HashMap};

use overseer_dal::update::Micros;

/// A lane of a source: one stream delivered in order (a Kafka partition; the only stream
/// of a file or a replication slot, lane 0). Numbered by its source.
pub type Lane = u32;

/// What a watermark rests on (logs and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Evidence {
    /// The catalog's stored watermark, from before this start.
    Stored,
    /// Commit times of events, per lane.
    Events,
    /// An upstream heartbeat: the PostgreSQL server clock at a WAL position the stream
    /// reached, or a connector's heartbeat message.
    Heartbeat,
    /// A file read to its end and not followed: complete.
    Drained,
    /// Caught up at the transport, with `caught_up_means_now` (opt-in).
    CaughtUp,
}

impl Evidence {
    pub const ALL: [Evidence; 5] = [
        Evidence::Stored,
        Evidence::Events,
        Evidence::Heartbeat,
        Evidence::Drained,
        Evidence::CaughtUp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Evidence::Stored => "stored",
            Evidence::Events => "events",
            Evidence::Heartbeat => "heartbeat",
            Evidence::Drained => "drained",
            Evidence::CaughtUp => "caught-up",
        }
    }
}

/// A source's watermark, from the evidence its events and heartbeats carry.
#[derive(Debug)]
pub struct Freshness {
    out_of_order_us: Micros,
    /// The lanes the source has (a Kafka topic's partitions, whether this instance reads
    /// them or not), with names for logs; `None` until a source declares any: then every
    /// lane an event came on.
    lanes: Option<BTreeMap<Lane, String>>,
    /// Per lane: the newest commit time seen.
    newest: HashMap<Lane, Micros>,
    /// Per lane: the newest upstream heartbeat that covered it.
    lane_floor: HashMap<Lane, (Micros, Evidence)>,
    /// Complete up to this time on every lane (stored watermark, source-wide heartbeats).
    floor: Micros,
    floor_evidence: Evidence,
    /// The highest watermark recorded in the catalog by this process.
    reported: Micros,
    /// Per declared lane: the claim recorded in the catalog by this process.
    lanes_reported: HashMap<Lane, Micros>,
    /// The declared lanes changed since their claims were last taken: the next
    /// [`Freshness::take_lane_claims`] names every declared lane.
    lanes_changed: bool,
}

/// Lane claims to record in the catalog ([`Freshness::take_lane_claims`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LaneClaims {
    /// (lane name, claim); a declared lane with nothing shown here claims the floor.
    pub claims: Vec<(String, Micros)>,
    /// The declared lanes changed: `claims` names every one of them, and the lanes of
    /// streams no longer declared may be retired ([`Freshness::retired`]).
    pub declared: bool,
}

impl Freshness {
    /// A source's freshness at start: `stored` is the watermark the catalog holds for it
    /// (complete up to then, from evidence gathered before), `max_out_of_order_ms` its
    /// declared bound on out-of-order arrival within a lane.
    pub fn new(stored: Micros, max_out_of_order_ms: u64) -> Self {
        let out_of_order_us =
            Micros::try_from(max_out_of_order_ms.saturating_mul(1000)).unwrap_or(Micros::MAX);
        Freshness {
            out_of_order_us,
            lanes: None,
            newest: HashMap::new(),
            lane_floor: HashMap::new(),
            floor: stored,
            floor_evidence: Evidence::Stored,
            reported: stored,
            lanes_reported: HashMap::new(),
            lanes_changed: false,
        }
    }

    /// An event committed at `commit_us` arrived on `lane`.
    pub fn observe(&mut self, lane: Lane, commit_us: Micros) {
        let n = self.newest.entry(lane).or_insert(commit_us);
        *n = (*n).max(commit_us);
    }

    /// Upstream evidence that `lanes` (every lane: `None`) are complete up to `t`.
    pub fn complete_up_to(&mut self, t: Micros, evidence: Evidence, lanes: Option<&[Lane]>) {
        match lanes {
            None => {
                if t > self.floor {
                    self.floor = t;
                    self.floor_evidence = evidence;
                }
            }
            Some(lanes) => {
                for l in lanes {
                    let f = self.lane_floor.entry(*l).or_insert((t, evidence));
                    if t > f.0 {
                        *f = (t, evidence);
                    }
                }
            }
        }
    }

    /// The lanes the source has (a Kafka source: every partition of its topics). A lane
    /// keeps what it showed before: it remains true whoever reads it now.
    pub fn assign(&mut self, lanes: impl IntoIterator<Item = (Lane, String)>) {
        let lanes = Some(lanes.into_iter().collect());
        if lanes != self.lanes {
            self.lanes = lanes;
            self.lanes_changed = true;
        }
    }

    /// The declared lanes' claims that moved since last taken (all of them after the
    /// declared lanes changed); empty for a source that declares none. Taken claims count
    /// as recorded: the caller records them or fails.
    pub fn take_lane_claims(&mut self) -> LaneClaims {
        let Some(lanes) = &self.lanes else {
            return LaneClaims::default();
        };
        // No lanes declared is "not known yet" (a Kafka source before it has read its
        // topics' metadata), never "none left".
        let declared = std::mem::take(&mut self.lanes_changed) && !lanes.is_empty();
        let mut claims = Vec::new();
        for (l, name) in lanes {
            // What holds for every lane holds for this one.
            let claim = self
                .lane_claim(*l)
                .map_or(self.floor, |(t, _)| t.max(self.floor))
                .max(0);
            let recorded = self.lanes_reported.get(l).copied();
            if declared || recorded.is_none_or(|r| claim > r) {
                claims.push((name.clone(), claim));
                self.lanes_reported.insert(*l, claim);
            }
        }
        LaneClaims { claims, declared }
    }

    /// Of the lanes `stored` for this source, those of a stream it no longer declares
    /// (a lane's stream is its name before the last `/`: a Kafka topic). Only whole
    /// streams retire: a partition this instance does not know of (stale metadata, a
    /// topic grown since) stays, so it keeps holding the watermark. Nothing while no lanes
    /// are declared.
    pub fn retired(&self, stored: &[(String, Micros)]) -> Vec<String> {
        fn stream(name: &str) -> &str {
            name.rsplit_once('/').map_or(name, |(s, _)| s)
        }
        let Some(lanes) = self.lanes.as_ref().filter(|l| !l.is_empty()) else {
            return Vec::new();
        };
        let declared: std::collections::BTreeSet<&str> =
            lanes.values().map(|n| stream(n)).collect();
        stored
            .iter()
            .filter(|(n, _)| !declared.contains(stream(n)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// [`Freshness::take_lane_claims`] when the declared lanes did not change (the
    /// claims that ride with a batch's commit); nothing when they did.
    pub fn take_moved_lane_claims(&mut self) -> Vec<(String, Micros)> {
        if self.lanes_changed {
            return Vec::new();
        }
        self.take_lane_claims().claims
    }

    fn name(&self, l: Lane) -> String {
        self.lanes
            .as_ref()
            .and_then(|a| a.get(&l).cloned())
            .unwrap_or_else(|| l.to_string())
    }

    /// One lane's claim and what it rests on; `None` when it has shown nothing.
    fn lane_claim(&self, l: Lane) -> Option<(Micros, Evidence)> {
        let events = self.newest.get(&l).map(|t| {
            (
                t.saturating_sub(1).saturating_sub(self.out_of_order_us),
                Evidence::Events,
            )
        });
        events.max(self.lane_floor.get(&l).copied())
    }

    /// The lowest lane's claim (and the lane), or `None` when some lane has shown
    /// nothing yet (or there is none).
    fn lanes_claim(&self) -> Option<(Micros, Evidence, Lane)> {
        let mut lowest: Option<(Micros, Evidence, Lane)> = None;
        let mut take = |l: Lane| {
            let (t, e) = self.lane_claim(l)?;
            if lowest.is_none_or(|(lt, _, ll)| (t, l) < (lt, ll)) {
                lowest = Some((t, e, l));
            }
            Some(())
        };
        match &self.lanes {
            Some(a) => a.keys().try_for_each(|l| take(*l))?,
            None => self
                .newest
                .keys()
                .chain(self.lane_floor.keys())
                .try_for_each(|l| take(*l))?,
        }
        lowest
    }

    /// The watermark now: complete up to this time.
    pub fn watermark(&self) -> Micros {
        match self.lanes_claim() {
            Some((t, _, _)) => t.max(self.floor),
            None => self.floor,
        }
    }

    /// What the watermark rests on: the evidence, and the lane holding it back (when a
    /// lane's claim sets it, or a lane that has shown nothing holds it at the floor).
    pub fn evidence(&self) -> (Evidence, Option<String>) {
        match self.lanes_claim() {
            Some((t, e, lane)) if t > self.floor => (e, Some(self.name(lane))),
            Some(_) => (self.floor_evidence, None),
            None => {
                let silent = self
                    .lanes
                    .as_ref()
                    .and_then(|a| a.keys().find(|l| self.lane_claim(**l).is_none()).copied());
                (self.floor_evidence, silent.map(|l| self.name(l)))
            }
        }
    }

    /// Newest commit time per lane (metrics), with the lane's name.
    pub fn lanes(&self) -> impl Iterator<Item = (String, Micros)> + '_ {
        self.newest.iter().map(|(l, t)| (self.name(*l), *t))
    }

    /// `w` was recorded (with a batch's commit): [`Freshness::advance`] reports only past it.
    pub fn recorded(&mut self, w: Micros) {
        self.reported = self.reported.max(w);
    }

    /// The highest watermark recorded: what the catalog holds from this process.
    pub fn reported(&self) -> Micros {
        self.reported
    }

    /// The watermark if it moved past the last one reported (which it then becomes).
    pub fn advance(&mut self) -> Option<Micros> {
        let w = self.watermark();
        (w > self.reported).then(|| {
            self.reported = w;
            w
        })
    }
}

/// The key of a MongoDB Kafka connector heartbeat whose resume token is at cluster time
/// `secs` (increment `n`), as the connector writes it (the token as JSON); what
/// [`connector_heartbeat`] reads. For tests and the bench's simulated connector.
pub fn mongo_heartbeat_key(secs: u32, n: u32) -> String {
    format!(r#"{{"_data": "82{secs:08X}{n:08X}2B022C0100296E5A1004"}}"#)
}

/// The time an upstream connector's heartbeat message certifies, for a source of
/// `format`: everything the connector read committed before it has been sent.
///
/// - Debezium (`debezium-postgres`, `debezium-mongo`): the value's `ts_ms` (at the top,
///   or under `payload` with the JSON converter's schemas). It is the connector's clock
///   when it sent the heartbeat, not a position in the database's log: it shows the
///   connector alive and, when it has nothing in flight, caught up. A connector busy with
///   a transaction it has not emitted yet still sends it, so it may run ahead of that
///   transaction's commit time; where that matters, Debezium's `heartbeat.action.query`
///   (a heartbeat row written in the database) makes the evidence a commit time.
/// - The MongoDB Kafka connector (`mongo-change-stream`, `mongo-change-stream-bson`): the
///   key is the post-batch resume token as JSON (`{"_data": "82…"}`), whose first bytes
///   are the cluster time (seconds, increment). Changes later in the same second may
///   still come, so the claim ends just before that second.
pub fn connector_heartbeat(
    format: crate::config::Format,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Micros, String> {
    use crate::config::Format;
    match format {
        Format::DebeziumPostgres | Format::DebeziumMongo => {
            let v: serde_json::Value = serde_json::from_slice(value.unwrap_or_default())
                .map_err(|e| overseer_dal::builder::json_error("invalid JSON", &e))?;
            let ts = v
                .get("payload")
                .and_then(|p| p.get("ts_ms"))
                .or_else(|| v.get("ts_ms"))
                .and_then(serde_json::Value::as_i64)
                .ok_or("a Debezium heartbeat has no integer ts_ms (nor payload.ts_ms)")?;
            ts.checked_mul(1000)
                .filter(|t| *t > 0)
                .ok_or_else(|| format!("ts_ms {ts} is out of range"))
        }
        Format::MongoChangeStream | Format::MongoChangeStreamBson => {
            let mut k: serde_json::Value = serde_json::from_slice(key.unwrap_or_default())
                .map_err(|e| overseer_dal::builder::json_error("invalid JSON key", &e))?;
            // Kafka Connect's JSON converter wraps the key (a string) in an envelope with
            // schemas, and writes it as a JSON string without.
            if let Some(p) = k.get_mut("payload") {
                k = p.take();
            }
            if let serde_json::Value::String(text) = &k {
                k = serde_json::from_str(text)
                    .map_err(|e| overseer_dal::builder::json_error("invalid JSON key", &e))?;
            }
            let data = k
                .get("_data")
                .and_then(serde_json::Value::as_str)
                .ok_or("a MongoDB connector heartbeat's key has no _data resume token")?;
            // KeyString: type byte 130 (timestamp), then seconds and increment, big-endian.
            let hex = data
                .get(..10)
                .filter(|h| h.starts_with("82"))
                .ok_or_else(|| {
                    format!("resume token {data:?} does not start with a cluster time")
                })?;
            let secs = u32::from_str_radix(&hex[2..], 16)
                .map_err(|_| format!("resume token {data:?} does not start with a cluster time"))?;
            Ok(Micros::from(secs) * 1_000_000 - 1)
        }
        Format::Pgoutput | Format::Protobuf => Err(format!(
            "format {:?} has no connector heartbeat",
            format.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;

    fn lanes(n: u32) -> Vec<(Lane, String)> {
        (0..n).map(|l| (l, format!("t/{l}"))).collect()
    }

    #[test]
    fn one_lane_claims_just_before_its_newest_commit() {
        let mut f = Freshness::new(0, 0);
        assert_eq!(f.advance(), None);
        f.observe(0, 1_000);
        f.observe(0, 900);
        assert_eq!(f.watermark(), 999);
        assert_eq!(f.advance(), Some(999));
        assert_eq!(f.advance(), None, "reported once");
        assert_eq!(f.evidence(), (Evidence::Events, Some("0".into())));
    }

    #[test]
    fn the_slowest_lane_holds_the_source_and_a_silent_one_holds_it_at_the_floor() {
        let mut f = Freshness::new(50, 0);
        f.assign(lanes(4));
        for l in 0..3 {
            f.observe(l, 10_000);
        }
        assert_eq!(
            f.watermark(),
            50,
            "lane 3 delivered nothing: no claim past the stored"
        );
        assert_eq!(f.evidence(), (Evidence::Stored, Some("t/3".into())));
        f.observe(3, 5_000);
        assert_eq!(f.watermark(), 4_999);
        assert_eq!(f.evidence(), (Evidence::Events, Some("t/3".into())));
        // A heartbeat covering lanes 2 and 3 (those at their end): lane 3 moves to it,
        // lane 2's events are ahead anyway.
        f.complete_up_to(8_000, Evidence::Heartbeat, Some(&[2, 3]));
        assert_eq!(f.watermark(), 8_000);
        assert_eq!(f.evidence(), (Evidence::Heartbeat, Some("t/3".into())));
        f.complete_up_to(20_000, Evidence::Heartbeat, Some(&[3]));
        assert_eq!(f.watermark(), 9_999, "lanes 0-2 hold it at their events");
        // Declaring no lanes: nothing known beyond the floor.
        f.assign([]);
        assert_eq!(f.watermark(), 50);
    }

    #[test]
    fn declared_lanes_are_claimed_for_the_catalog_once_each_time_they_move() {
        let mut f = Freshness::new(50, 0);
        assert_eq!(
            f.take_lane_claims(),
            LaneClaims::default(),
            "no lanes declared"
        );
        f.observe(0, 1_000);
        assert_eq!(f.take_moved_lane_claims(), vec![]);
        f.assign([]);
        assert_eq!(
            f.take_lane_claims(),
            LaneClaims::default(),
            "lanes not known yet are no declaration"
        );
        f.assign(lanes(3));
        assert_eq!(
            f.take_moved_lane_claims(),
            vec![],
            "a declaration goes on its own"
        );
        let claims = |c: &[(&str, Micros)]| {
            c.iter()
                .map(|(l, t)| (l.to_string(), *t))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            f.take_lane_claims(),
            LaneClaims {
                claims: claims(&[("t/0", 999), ("t/1", 50), ("t/2", 50)]),
                declared: true,
            },
            "every declared lane, at the floor where it showed nothing"
        );
        assert_eq!(f.take_lane_claims(), LaneClaims::default(), "nothing moved");
        f.observe(1, 3_000);
        f.observe(0, 900);
        f.complete_up_to(70, Evidence::Heartbeat, None);
        assert_eq!(
            f.take_moved_lane_claims(),
            claims(&[("t/1", 2_999), ("t/2", 70)])
        );
        f.assign(lanes(3));
        assert_eq!(
            f.take_lane_claims(),
            LaneClaims::default(),
            "the same lanes"
        );
        f.assign(lanes(2));
        assert_eq!(
            f.take_lane_claims(),
            LaneClaims {
                claims: claims(&[("t/0", 999), ("t/1", 2_999)]),
                declared: true,
            }
        );
        let stored = claims(&[("t/0", 1), ("t/7", 1), ("old/0", 1), ("old", 1)]);
        assert_eq!(
            f.retired(&stored),
            vec!["old/0".to_string(), "old".to_string()],
            "only streams no longer declared retire, not partitions unknown here"
        );
        f.assign([]);
        assert_eq!(f.retired(&stored), Vec::<String>::new());
    }

    #[test]
    fn a_declared_bound_holds_the_claim_back_and_heartbeats_cover_every_lane() {
        let mut f = Freshness::new(0, 5);
        f.assign(lanes(2));
        f.observe(0, 100_000);
        f.observe(1, 20_000);
        assert_eq!(f.watermark(), 20_000 - 1 - 5_000);
        f.complete_up_to(30_000, Evidence::Heartbeat, None);
        assert_eq!(f.watermark(), 30_000);
        assert_eq!(f.evidence(), (Evidence::Heartbeat, None));
        f.complete_up_to(10, Evidence::CaughtUp, None);
        assert_eq!(
            f.evidence().0,
            Evidence::Heartbeat,
            "an older claim changes nothing"
        );
    }

    #[test]
    fn connector_heartbeats_are_read_by_format() {
        let dbz = br#"{"schema":{"type":"struct"},"payload":{"ts_ms":1700000000123}}"#;
        assert_eq!(
            connector_heartbeat(Format::DebeziumPostgres, None, Some(dbz)),
            Ok(1_700_000_000_123_000)
        );
        assert_eq!(
            connector_heartbeat(Format::DebeziumMongo, None, Some(br#"{"ts_ms":5}"#)),
            Ok(5_000)
        );
        let e = connector_heartbeat(Format::DebeziumMongo, None, Some(br#"{"ts":5}"#));
        assert!(e.unwrap_err().contains("ts_ms"));
        // 0x6553F100 = 1700000000 s.
        let key = br#"{"_data": "826553F100000000022B022C0100296E5A1004"}"#;
        assert_eq!(
            connector_heartbeat(Format::MongoChangeStream, Some(key), None),
            Ok(1_700_000_000_000_000 - 1)
        );
        let key = mongo_heartbeat_key(1_700_000_000, 7);
        assert_eq!(
            connector_heartbeat(Format::MongoChangeStreamBson, Some(key.as_bytes()), None),
            Ok(1_700_000_000_000_000 - 1)
        );
        // The JSON converter's forms: a JSON string, and the envelope with schemas.
        let quoted = serde_json::to_string(&key).unwrap();
        let enveloped = format!(r#"{{"schema":{{"type":"string"}},"payload":{quoted}}}"#);
        for k in [quoted, enveloped] {
            assert_eq!(
                connector_heartbeat(Format::MongoChangeStream, Some(k.as_bytes()), None),
                Ok(1_700_000_000_000_000 - 1),
                "{k}"
            );
        }
        let e = connector_heartbeat(Format::MongoChangeStream, Some(br#"{"_data":"zz"}"#), None);
        assert!(e.unwrap_err().contains("cluster time"));
        assert!(connector_heartbeat(Format::Pgoutput, None, None).is_err());
    }
}
