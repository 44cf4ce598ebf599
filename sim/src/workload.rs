//! A payments workload with known faults: the traffic of DESIGN.md's worked example, for
//! the demo and the benchmark harness.
//!
//! [`Workload::generate`] turns a [`WorkloadConfig`] into the events two systems emit, each
//! with its commit time and its arrival time at ingestion, plus the ground truth: which
//! (check, subject) pairs must fail ([`Fault`]). It is deterministic: the same config (seed
//! and start time included) gives the same bytes. It never reads a clock: times are given.
//!
//! - **payments** ([`System::Payments`], Debezium PostgreSQL envelopes): the `payments.assets`
//!   rows first, then per transfer a `c` (pending) and, a few ms later, a `u` (completed).
//! - **ledger** ([`System::Ledger`], MongoDB change streams in extended JSON): per completed
//!   transfer one transaction, committed a few ms after the transfer completes, writing a
//!   debit entry of the payer, a credit entry of a counterparty, and both wallets
//!   (`ledger.wallets`, `{_id: "account:ASSET", balance_minor}`). Every event of a
//!   transaction has the same commit time, as in MongoDB, so a view as of any time sees a
//!   wallet and its entries agree.
//!
//! Faults ([`FaultKind`]) break exactly the pairs they name and nothing else: wallets stay
//! equal to the entries actually written (a missing entry also leaves its wallet alone).
//! Duplicate deliveries repeat an event (same bytes, same position) a little later; they must
//! change nothing. The ledger can lag ([`Lag`]): it delivers in commit order, each event no
//! earlier than its commit time plus the lag at that time.
//!
//! Amounts are exact integers of minor units, inside `i64` (checked at generation).
//!
//! [`live`] drives a workload in real time through the real pipeline: a [`Source`] that
//! releases events at their arrival times with honest watermarks, a sink that collects
//! verdicts, and the [`Score`] of those verdicts against the ground truth.
//!
//! [`Source`]: overseer_ingestion::source::Source

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use overseer_dal::update::Micros;
use overseer_ingestion::source::SourceEvent;
use overseer_prs::runner::{Outcome, RunRecord};
use overseer_prs::{Error, Result};

/// Check names, as [`overseer_checks::register`] registers them.
pub const NETS_TO_ZERO: &str = "transfer_nets_to_zero";
pub const MATCHES_AMOUNT: &str = "entries_match_amount";
pub const WALLET_BALANCE: &str = "wallet_balance_matches_entries";

/// The workload's models (`[[models]]` tables): transfers and assets in the payments
/// system, entries and wallets in the ledger, with the references the checks select by.
pub const MODELS_TOML: &str = r#"
[[models]]
name = "payments.transfers"
id_field = "id"
references = { account_id = "account_id", asset = "asset" }

[[models]]
name = "payments.assets"
id_field = "symbol"

[[models]]
name = "ledger.entries"
id_field = "_id"
references = { transfer_id = "transfer_id", account_id = "account_id", asset = "asset" }

[[models]]
name = "ledger.wallets"
id_field = "_id"
"#;

/// The configuration the workload is ingested and checked under, over `dir`: the four
/// payments models (with the references the shipped checks select and join by), one
/// source per [`System`] (in-memory replays: the file kind only satisfies validation), a
/// local store and an embedded catalog in `dir`, the in-process bus, frequent idle
/// heartbeats, and the runner reading history from the beginning. Callers set the rest
/// (`prs.group`, `prs.grace_ms`, per-check strategies) and validate.
pub fn config(dir: &std::path::Path) -> anyhow::Result<overseer::Config> {
    use overseer_dal::config::{BusConfig, CatalogConfig, StoreConfig};
    let mut text = String::from(MODELS_TOML);
    for (system, format) in [
        (System::Payments, "debezium-postgres"),
        (System::Ledger, "mongo-change-stream"),
    ] {
        text.push_str(&format!(
            "\n[[sources]]\nname = \"{}\"\nformat = \"{format}\"\n[sources.file]\npath = \"(generated)\"\n",
            system.name()
        ));
    }
    let mut cfg =
        overseer::Config::parse(&text).map_err(|e| e.context("the workload's configuration"))?;
    cfg.ingestion.store = StoreConfig::Local {
        path: dir.join("objects"),
    };
    cfg.ingestion.catalog = CatalogConfig::Embedded {
        path: dir.join("catalog.redb"),
    };
    cfg.ingestion.bus = BusConfig::default();
    // Idle sources report their watermark often: freshness waits end soon after they can.
    cfg.ingestion.ingest.heartbeat_ms = 50;
    cfg.prs.from_beginning = true;
    Ok(cfg)
}

/// The two systems of the workload, each one ingestion source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    /// PostgreSQL through Debezium: `payments.transfers`, `payments.assets`.
    Payments,
    /// MongoDB change streams: `ledger.entries`, `ledger.wallets`.
    Ledger,
}

impl System {
    pub const ALL: [System; 2] = [System::Payments, System::Ledger];

    /// The source name events of this system are ingested under.
    pub fn name(self) -> &'static str {
        match self {
            System::Payments => "payments",
            System::Ledger => "ledger",
        }
    }
}

/// What a fault breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The credit entry is never written: the transfer does not net to zero, and its
    /// credits (none) do not match its amount.
    MissingEntry,
    /// The credit is off by a few minor units: both transfer checks fail.
    Unbalanced,
    /// Both entries use the asset's decimals + 2, amounts ×100: they net to zero but do not
    /// match the amount at the asset's precision.
    PrecisionSlip,
    /// The payer's wallet balance is written off by a few minor units, and the error is
    /// carried by every later update of that wallet (nothing fixes it).
    WalletDrift,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::MissingEntry,
        FaultKind::Unbalanced,
        FaultKind::PrecisionSlip,
        FaultKind::WalletDrift,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::MissingEntry => "missing_entry",
            FaultKind::Unbalanced => "unbalanced",
            FaultKind::PrecisionSlip => "precision_slip",
            FaultKind::WalletDrift => "wallet_drift",
        }
    }

    /// The checks this fault makes fail.
    pub fn checks(self) -> &'static [&'static str] {
        match self {
            // A missing credit is transfer_nets_to_zero's finding alone (entries_match_amount
            // passes a transfer without credits: one incident per fault); an unbalanced
            // credit fails both.
            FaultKind::MissingEntry => &[NETS_TO_ZERO],
            FaultKind::Unbalanced => &[NETS_TO_ZERO, MATCHES_AMOUNT],
            FaultKind::PrecisionSlip => &[MATCHES_AMOUNT],
            FaultKind::WalletDrift => &[WALLET_BALANCE],
        }
    }
}

/// How late the ledger's events reach ingestion after their commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lag {
    /// Caught up.
    None,
    Constant(Duration),
    /// Between 0 and `max`, drifting (linearly between random points 250–750 ms apart).
    Jitter {
        max: Duration,
    },
}

/// What to generate. [`WorkloadConfig::default`] is the demo's traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// Commit time of the first event (the asset rows), µs since the epoch.
    pub start_us: Micros,
    pub transfers: u64,
    /// Account pool: payers and counterparties are drawn from it.
    pub accounts: u32,
    /// Assets (symbol, decimals); each transfer picks one at random.
    pub assets: Vec<(String, i32)>,
    /// Fraction of transfers that carry a fault (rounded to a whole number of transfers).
    pub fault_rate: f64,
    /// Fault kinds to inject, spread evenly over the faulty transfers.
    pub faults: Vec<FaultKind>,
    /// Fraction of events delivered twice (same bytes, same position).
    pub duplicate_rate: f64,
    pub ledger_lag: Lag,
    /// Partitions the ledger's topic has (lanes of its source): each record's events go
    /// to one, by its id, in commit order.
    pub ledger_partitions: u32,
    /// How much later than the others the ledger's last partition delivers (with more than
    /// one partition): a partition behind the rest of its topic.
    pub partition_skew: Duration,
    /// Transfers created per second of commit time.
    pub transfers_per_sec: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 7,
            start_us: 1_767_225_600_000_000, // 2026-01-01T00:00:00Z
            transfers: 2_000,
            accounts: 1_000,
            assets: vec![("USD".into(), 2), ("BTC".into(), 8), ("ETH".into(), 9)],
            fault_rate: 0.01,
            faults: FaultKind::ALL.to_vec(),
            duplicate_rate: 0.01,
            ledger_lag: Lag::Jitter {
                max: Duration::from_secs(2),
            },
            ledger_partitions: 1,
            partition_skew: Duration::ZERO,
            transfers_per_sec: 1_000.0,
        }
    }
}

/// One (check, subject) pair a fault makes fail: the ground truth.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fault {
    pub kind: FaultKind,
    pub check: &'static str,
    /// A transfer id, or a wallet id (`account:ASSET`).
    pub subject: String,
    /// The transfer that carried the fault.
    pub transfer: String,
}

/// One event as a source delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub system: System,
    /// Commit time in the source system, µs (what the event's own time field says).
    pub commit_us: Micros,
    /// When ingestion receives it, µs: commit time plus the source's lag (and, for a
    /// duplicate, the redelivery delay).
    pub arrive_us: Micros,
    /// The source position (sortable within the source); a duplicate repeats it.
    pub position: String,
    /// The event exactly as the source system emits it.
    pub raw: Bytes,
    /// A redelivery of an event delivered before.
    pub duplicate: bool,
    /// The partition (lane) it is delivered on.
    pub lane: u32,
}

impl Event {
    /// The event as an ingestion source hands it over (checkpoint = position).
    pub fn source_event(&self) -> SourceEvent {
        SourceEvent {
            raw: self.raw.clone(),
            key: None,
            context: None,
            position: self.position.clone(),
            commit_time_us: None,
            ack: None,
            checkpoint: Some(self.position.clone()),
            lane: self.lane,
        }
    }
}

/// A generated workload: events per system in arrival order, and the ground truth.
#[derive(Clone, Debug)]
pub struct Workload {
    pub config: WorkloadConfig,
    /// Payments events in arrival order.
    pub payments: Vec<Event>,
    /// Ledger events in arrival order.
    pub ledger: Vec<Event>,
    /// Every (check, subject) that must fail, per fault (a wallet drifted twice is listed
    /// twice; [`Workload::expected_failures`] is the set).
    pub faults: Vec<Fault>,
    /// The ledger's lag curve: (commit time, lag) points, linearly interpolated.
    lag_points: Vec<(Micros, Micros)>,
}

/// SplitMix64: small, fast, and stable forever (the bytes of a seed must never change).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    /// An independent stream per purpose, so changing one rate leaves the rest alone.
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// `minor / 10^decimals` as a decimal string with exactly `decimals` places.
fn render_amount(minor: i64, decimals: i32) -> String {
    let d = decimals as u32;
    if d == 0 {
        return minor.to_string();
    }
    let scale = 10i64.pow(d);
    format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = d as usize
    )
}

fn ceil_ms(us: Micros) -> Micros {
    us.div_euclid(1000) * 1000 + if us.rem_euclid(1000) == 0 { 0 } else { 1000 }
}

/// One write of a ledger transaction: an insert (collection, full document) or an update
/// (collection, id, updated fields).
enum Write {
    Insert(&'static str, Value),
    Update(&'static str, String, Value),
}

/// A transfer as the payments database holds it, with what the ledger should write.
struct Transfer {
    id: String,
    account: String,
    counterparty: String,
    asset: usize,
    minor: i64,
    created_us: Micros,
    completed_us: Micros,
    /// Commit time of the ledger transaction (whole milliseconds: `wallTime`).
    ledger_us: Micros,
    fault: Option<FaultKind>,
}

impl Workload {
    /// Generates the workload of `config`; fails for a config that cannot be generated
    /// exactly (bad rates, no assets, amounts that could leave `i64`).
    pub fn generate(config: WorkloadConfig) -> Result<Workload> {
        let c = &config;
        let bad = |m: String| Err(Error::Config(format!("workload: {m}")));
        if c.assets.is_empty() {
            return bad("no assets".into());
        }
        if let Some((s, d)) = c.assets.iter().find(|(_, d)| !(0..=12).contains(d)) {
            return bad(format!("asset {s}: decimals {d} outside 0..=12"));
        }
        if c.accounts < 2 {
            return bad("at least 2 accounts (payer and counterparty differ)".into());
        }
        if !(c.transfers_per_sec > 0.0 && c.transfers_per_sec.is_finite()) {
            return bad("transfers_per_sec must be > 0".into());
        }
        for (name, r) in [
            ("fault_rate", c.fault_rate),
            ("duplicate_rate", c.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return bad(format!("{name} {r} outside [0, 1]"));
            }
        }
        if c.fault_rate > 0.0 && c.faults.is_empty() {
            return bad("fault_rate > 0 but no fault kinds enabled".into());
        }
        // The largest entry is a slipped one (×100, plus an unbalanced few units); a wallet's
        // balance sums at most every transfer's entries.
        let max_decimals = c.assets.iter().map(|(_, d)| *d).max().unwrap_or(0) as u32;
        let max_entry = 10i128.pow(max_decimals + 2) * 100 + 100;
        if max_entry * (i128::from(c.transfers) + 1) * 2 > i128::from(i64::MAX) {
            return bad(format!(
                "{} transfers at {max_decimals} decimals could overflow an i64 wallet balance",
                c.transfers
            ));
        }

        let mut rng = Rng::new(c.seed, 1);
        let transfers = Self::transfers(c, &mut rng);
        let mut faults = Vec::new();
        for t in &transfers {
            if let Some(kind) = t.fault {
                let subject = match kind {
                    FaultKind::WalletDrift => {
                        overseer_checks::wallet_id(&t.account, &c.assets[t.asset].0)
                    }
                    _ => t.id.clone(),
                };
                for check in kind.checks() {
                    faults.push(Fault {
                        kind,
                        check,
                        subject: subject.clone(),
                        transfer: t.id.clone(),
                    });
                }
            }
        }
        faults.sort();

        let lag_points = Self::lag_curve(c, &transfers);
        let mut payments = Self::payments_events(c, &transfers);
        let mut ledger = Self::ledger_events(c, &transfers, &mut Rng::new(c.seed, 2));
        // The ledger delivers each partition in commit order, each event no earlier than
        // commit + lag (+ the skew, on the last of several partitions).
        let partitions = c.ledger_partitions.max(1);
        let skewed = (partitions > 1).then_some(partitions - 1);
        let skew = c.partition_skew.as_micros() as Micros;
        let mut last = vec![Micros::MIN; partitions as usize];
        for e in &mut ledger {
            e.lane = lane_of(&e.raw, partitions);
            let behind = if Some(e.lane) == skewed { skew } else { 0 };
            let l = &mut last[e.lane as usize];
            e.arrive_us = (e.commit_us + lag_at(&lag_points, e.commit_us) + behind).max(*l);
            *l = e.arrive_us;
        }
        // Arrival order across partitions; stable, so each keeps its commit order.
        ledger.sort_by_key(|e| e.arrive_us);
        let mut dup_rng = Rng::new(c.seed, 3);
        for events in [&mut payments, &mut ledger] {
            let mut with_dups = Vec::with_capacity(events.len() + events.len() / 50);
            for e in events.drain(..) {
                let again = dup_rng.chance(c.duplicate_rate).then(|| Event {
                    arrive_us: e.arrive_us + dup_rng.range(1_000, 100_000),
                    duplicate: true,
                    ..e.clone()
                });
                with_dups.push(e);
                with_dups.extend(again);
            }
            // Stable: originals keep their (commit) order, a duplicate comes after its original.
            with_dups.sort_by_key(|e| e.arrive_us);
            *events = with_dups;
        }
        Ok(Workload {
            config,
            payments,
            ledger,
            faults,
            lag_points,
        })
    }

    fn transfers(c: &WorkloadConfig, rng: &mut Rng) -> Vec<Transfer> {
        let n = c.transfers as usize;
        // Exactly round(fault_rate × n) faulty transfers, kinds spread evenly over them.
        let faulty = ((c.fault_rate * n as f64).round() as usize).min(n);
        let mut order: Vec<usize> = (0..n).collect();
        let mut fault_rng = Rng::new(c.seed, 4);
        for i in 0..faulty {
            let j = i + fault_rng.below((n - i) as u64) as usize;
            order.swap(i, j);
        }
        let mut fault_of: BTreeMap<usize, FaultKind> = BTreeMap::new();
        let mut chosen = order[..faulty].to_vec();
        chosen.sort_unstable();
        for (k, i) in chosen.into_iter().enumerate() {
            fault_of.insert(i, c.faults[k % c.faults.len()]);
        }
        let spacing = 1e6 / c.transfers_per_sec;
        (0..n)
            .map(|i| {
                let asset = rng.below(c.assets.len() as u64) as usize;
                let decimals = c.assets[asset].1 as u32;
                // Up to 100 units of the asset.
                let minor = rng.range(1, 10i64.pow(decimals + 2));
                let account = rng.below(u64::from(c.accounts));
                let other =
                    (account + 1 + rng.below(u64::from(c.accounts) - 1)) % u64::from(c.accounts);
                let created_us = c.start_us + 1_000 + (i as f64 * spacing).round() as Micros;
                let completed_us = created_us + rng.range(2_000, 8_000);
                let ledger_us = ceil_ms(completed_us + rng.range(1_000, 5_000));
                Transfer {
                    id: format!("t{i:08}"),
                    account: format!("acct{account:04}"),
                    counterparty: format!("acct{other:04}"),
                    asset,
                    minor,
                    created_us,
                    completed_us,
                    ledger_us,
                    fault: fault_of.get(&i).copied(),
                }
            })
            .collect()
    }

    /// The ledger's lag as points (commit time, lag), from before the first event to well
    /// after the last.
    fn lag_curve(c: &WorkloadConfig, transfers: &[Transfer]) -> Vec<(Micros, Micros)> {
        let end = transfers
            .iter()
            .map(|t| t.ledger_us)
            .max()
            .unwrap_or(c.start_us)
            + 60_000_000;
        match c.ledger_lag {
            Lag::None => vec![(c.start_us, 0)],
            Lag::Constant(d) => vec![(c.start_us, d.as_micros() as Micros)],
            Lag::Jitter { max } => {
                let max = max.as_micros() as Micros;
                let mut rng = Rng::new(c.seed, 5);
                let mut t = c.start_us;
                let mut points = Vec::new();
                while t <= end {
                    points.push((t, rng.range(0, max)));
                    t += rng.range(250_000, 750_000);
                }
                points
            }
        }
    }

    fn payments_events(c: &WorkloadConfig, transfers: &[Transfer]) -> Vec<Event> {
        // (commit time, table, op, row), then LSNs in commit order, as in the WAL.
        let mut changes: Vec<(Micros, &str, &str, Value)> = Vec::new();
        for (symbol, decimals) in &c.assets {
            changes.push((
                c.start_us,
                "assets",
                "c",
                json!({"symbol": symbol, "decimals": decimals}),
            ));
        }
        for t in transfers {
            let (symbol, decimals) = &c.assets[t.asset];
            let row = |status: &str, at: Micros| {
                json!({"id": t.id, "account_id": t.account, "asset": symbol,
                       "amount": render_amount(t.minor, *decimals), "status": status,
                       "updated_at": at / 1000})
            };
            changes.push((t.created_us, "transfers", "c", row("pending", t.created_us)));
            changes.push((
                t.completed_us,
                "transfers",
                "u",
                row("completed", t.completed_us),
            ));
        }
        changes.sort_by_key(|(at, ..)| *at);
        changes
            .into_iter()
            .enumerate()
            .map(|(seq, (at, table, op, after))| {
                let lsn = 0x1_0000_0000u64 + seq as u64 * 0x148;
                let raw = json!({
                    "before": null, "after": after, "op": op,
                    "source": {"version": "2.7.0.Final", "connector": "postgresql",
                               "name": "payments", "ts_ms": at / 1000, "ts_us": at,
                               "snapshot": "false", "db": "payments", "schema": "payments",
                               "table": table, "txId": 1000 + seq, "lsn": lsn},
                    "ts_ms": at / 1000 + 2,
                });
                Event {
                    system: System::Payments,
                    commit_us: at,
                    arrive_us: at,
                    position: format!("{seq:012}"),
                    raw: Bytes::from(raw.to_string()),
                    duplicate: false,
                    lane: 0,
                }
            })
            .collect()
    }

    fn ledger_events(c: &WorkloadConfig, transfers: &[Transfer], rng: &mut Rng) -> Vec<Event> {
        let mut order: Vec<&Transfer> = transfers.iter().collect();
        order.sort_by_key(|t| t.ledger_us);
        // Balances as written (a drift stays in), and which wallets exist yet.
        let mut balances: BTreeMap<String, i64> = BTreeMap::new();
        let mut events = Vec::new();
        let mut ordinal_in_second: (Micros, i64) = (Micros::MIN, 0);
        for t in order {
            let (symbol, decimals) = &c.assets[t.asset];
            let at = t.ledger_us;
            let (mut decimals, mut debit) = (*decimals, t.minor);
            let mut credit = debit;
            match t.fault {
                Some(FaultKind::PrecisionSlip) => {
                    decimals += 2;
                    debit *= 100;
                    credit *= 100;
                }
                Some(FaultKind::Unbalanced) => {
                    let off = rng.range(1, 9);
                    credit = if rng.below(2) == 0 || credit <= off {
                        credit + off
                    } else {
                        credit - off
                    };
                }
                _ => {}
            }
            let drift = match t.fault {
                Some(FaultKind::WalletDrift) => rng.range(1, 99),
                _ => 0,
            };
            // The transaction's writes in order: each entry, then its wallet (debit, payer's
            // wallet, credit, counterparty's wallet).
            let mut writes: Vec<Write> = Vec::new();
            let mut post =
                |suffix: &str, account: &str, direction: &str, minor: i64, delta: i64| {
                    let id = format!("e{}-{suffix}", &t.id[1..]);
                    writes.push(Write::Insert(
                        "entries",
                        json!({"_id": id, "transfer_id": t.id, "account_id": account,
                        "asset": symbol, "direction": direction,
                        "amount_minor": {"$numberLong": minor.to_string()}, "decimals": decimals}),
                    ));
                    let wallet = overseer_checks::wallet_id(account, symbol);
                    let write = match balances.get_mut(&wallet) {
                        Some(b) => {
                            *b += delta;
                            let fields = json!({"balance_minor": {"$numberLong": b.to_string()}});
                            Write::Update("wallets", wallet, fields)
                        }
                        None => {
                            balances.insert(wallet.clone(), delta);
                            Write::Insert(
                                "wallets",
                                json!({"_id": wallet,
                                       "balance_minor": {"$numberLong": delta.to_string()}}),
                            )
                        }
                    };
                    writes.push(write);
                };
            post("d", &t.account, "debit", debit, drift - debit);
            if t.fault != Some(FaultKind::MissingEntry) {
                post("c", &t.counterparty, "credit", credit, credit);
            }
            // One transaction per transfer, numbered from 1 as MongoDB does.
            let txn = t.id[1..].parse::<u64>().unwrap_or(0) + 1;
            for write in writes {
                let secs = at / 1_000_000;
                if ordinal_in_second.0 != secs {
                    ordinal_in_second = (secs, 0);
                }
                ordinal_in_second.1 += 1;
                let seq = events.len();
                let mut ev = json!({
                    "_id": {"_data": format!("82{:016X}{:08X}", at / 1000, seq)},
                    "clusterTime": {"$timestamp": {"t": secs, "i": ordinal_in_second.1}},
                    "wallTime": {"$date": {"$numberLong": (at / 1000).to_string()}},
                    "txnNumber": {"$numberLong": txn.to_string()},
                });
                match write {
                    Write::Insert(coll, doc) => {
                        ev["operationType"] = json!("insert");
                        ev["ns"] = json!({"db": "ledger", "coll": coll});
                        ev["documentKey"] = json!({"_id": doc["_id"]});
                        ev["fullDocument"] = doc;
                    }
                    Write::Update(coll, id, fields) => {
                        ev["operationType"] = json!("update");
                        ev["ns"] = json!({"db": "ledger", "coll": coll});
                        ev["documentKey"] = json!({"_id": id});
                        ev["updateDescription"] = json!({"updatedFields": fields,
                            "removedFields": [], "truncatedArrays": []});
                    }
                }
                events.push(Event {
                    system: System::Ledger,
                    commit_us: at,
                    arrive_us: at,
                    position: format!("{seq:012}"),
                    raw: Bytes::from(ev.to_string()),
                    duplicate: false,
                    lane: 0,
                });
            }
        }
        events
    }

    /// The events of `system`, in arrival order.
    pub fn events(&self, system: System) -> &[Event] {
        match system {
            System::Payments => &self.payments,
            System::Ledger => &self.ledger,
        }
    }

    /// For each index `i` into [`Workload::events`] (and one past the end), the earliest
    /// commit time among the first deliveries at or after it (`Micros::MAX`: none): a
    /// source that has delivered the events before `i` is complete just before it.
    pub fn next_commits(&self, system: System) -> Vec<Micros> {
        let events = self.events(system);
        let mut next = vec![Micros::MAX; events.len() + 1];
        for i in (0..events.len()).rev() {
            next[i] = next[i + 1];
            if !events[i].duplicate {
                next[i] = next[i].min(events[i].commit_us);
            }
        }
        next
    }

    /// How late `system` delivers what commits at `at_us`.
    pub fn lag_us(&self, system: System, at_us: Micros) -> Micros {
        match system {
            System::Payments => 0,
            System::Ledger => lag_at(&self.lag_points, at_us),
        }
    }

    /// The largest lag `system` ever has (the skewed partition's, if any).
    pub fn max_lag_us(&self, system: System) -> Micros {
        match system {
            System::Payments => 0,
            System::Ledger => {
                let skew = if self.config.ledger_partitions > 1 {
                    self.config.partition_skew.as_micros() as Micros
                } else {
                    0
                };
                self.lag_points.iter().map(|p| p.1).max().unwrap_or(0) + skew
            }
        }
    }

    /// The (check, subject) pairs that must fail, and only those.
    pub fn expected_failures(&self) -> BTreeSet<(&'static str, String)> {
        self.faults
            .iter()
            .map(|f| (f.check, f.subject.clone()))
            .collect()
    }

    /// Faulty transfers by kind.
    pub fn faults_by_kind(&self) -> BTreeMap<FaultKind, usize> {
        let mut seen = BTreeSet::new();
        let mut out = BTreeMap::new();
        for f in &self.faults {
            if seen.insert((f.kind, f.transfer.as_str())) {
                *out.entry(f.kind).or_default() += 1;
            }
        }
        out
    }

    /// Events of all systems, redeliveries included.
    pub fn deliveries(&self) -> usize {
        self.payments.len() + self.ledger.len()
    }

    /// Redelivered events (each must be ignored).
    pub fn duplicates(&self) -> usize {
        self.payments
            .iter()
            .chain(&self.ledger)
            .filter(|e| e.duplicate)
            .count()
    }

    /// Distinct events: the updates the history must hold.
    pub fn unique_events(&self) -> usize {
        self.deliveries() - self.duplicates()
    }

    /// The latest commit time of any event.
    pub fn last_commit_us(&self) -> Micros {
        self.payments
            .iter()
            .chain(&self.ledger)
            .map(|e| e.commit_us)
            .max()
            .unwrap_or(self.config.start_us)
    }

    /// The latest arrival time of any event.
    pub fn last_arrival_us(&self) -> Micros {
        self.payments
            .iter()
            .chain(&self.ledger)
            .map(|e| e.arrive_us)
            .max()
            .unwrap_or(self.config.start_us)
    }
}

/// The partition of a ledger event: its record's id (`documentKey._id`) hashed (FNV-1a),
/// as a keyed producer partitions.
fn lane_of(raw: &[u8], partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(raw).expect("generated events are JSON");
    let id = v["documentKey"]["_id"].to_string();
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h % u64::from(partitions)) as u32
}

fn lag_at(points: &[(Micros, Micros)], at: Micros) -> Micros {
    let i = points.partition_point(|p| p.0 <= at);
    match (i.checked_sub(1).map(|j| points[j]), points.get(i)) {
        (None, Some(p)) => p.1,
        (Some(p), None) => p.1,
        (Some((t0, l0)), Some((t1, l1))) => {
            l0 + ((i128::from(l1 - l0) * i128::from(at - t0)) / i128::from(t1 - t0)) as Micros
        }
        (None, None) => 0,
    }
}

/// How a set of verdicts compares with a workload's ground truth.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Score {
    /// Pairs that must fail.
    pub expected: usize,
    /// Expected pairs with a failing verdict, with their time to detect: the first failing
    /// verdict's `finished_us − first_event_us` (it includes the grace).
    pub detected: BTreeMap<(String, String), Micros>,
    /// Expected pairs never failed.
    pub missed: Vec<(String, String)>,
    /// Pairs that failed but carry no fault, with the first failure's message.
    pub false_alarms: BTreeMap<(String, String), String>,
    /// Runs by outcome label.
    pub by_outcome: BTreeMap<String, u64>,
    /// Stale runs (forced by the max delay), with the first one's message.
    pub stale: Vec<(String, String, String)>,
    /// Runs that could not reach a verdict, with their message.
    pub errors: Vec<(String, String, String)>,
}

impl Score {
    /// Scores `runs` (in any order) against `workload`.
    pub fn of(workload: &Workload, runs: &[RunRecord]) -> Score {
        let truth = workload.expected_failures();
        let mut s = Score {
            expected: truth.len(),
            ..Score::default()
        };
        let mut first_fail: BTreeMap<(String, String), &RunRecord> = BTreeMap::new();
        for r in runs {
            *s.by_outcome
                .entry(r.outcome.label().to_owned())
                .or_default() += 1;
            let key = (r.check.clone(), r.subject.clone());
            match &r.outcome {
                Outcome::Fail { .. } => {
                    let e = first_fail.entry(key).or_insert(r);
                    if r.finished_us < e.finished_us {
                        *e = r;
                    }
                }
                Outcome::Stale {
                    passed: false,
                    message,
                    ..
                } => s.stale.push((key.0, key.1, message.clone())),
                Outcome::Stale { .. } => {}
                Outcome::Error { message } => s.errors.push((key.0, key.1, message.clone())),
                Outcome::Pass | Outcome::NoSubject => {}
            }
        }
        for (key, r) in first_fail {
            if truth.contains(&(r.check.as_str(), r.subject.clone())) {
                s.detected.insert(key, r.finished_us - r.first_event_us);
            } else if let Outcome::Fail { message, .. } = &r.outcome {
                s.false_alarms.insert(key, message.clone());
            }
        }
        s.missed = truth
            .into_iter()
            .map(|(c, subject)| (c.to_owned(), subject))
            .filter(|k| !s.detected.contains_key(k))
            .collect();
        s
    }

    /// Scores the verdicts a [`live::Collector::verdicts_only`] gathered: as [`Score::of`]
    /// their records of runs that did not pass, with every run counted by outcome.
    pub fn of_verdicts(workload: &Workload, verdicts: &live::Verdicts) -> Score {
        Score {
            by_outcome: verdicts.by_outcome.clone(),
            ..Score::of(workload, &verdicts.not_passed)
        }
    }

    /// Detected / expected (1 when nothing was expected).
    pub fn recall(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.detected.len() as f64 / self.expected as f64
        }
    }

    /// The `q` quantile (0..=1, nearest rank) of the times to detect, µs.
    pub fn ttd_quantile_us(&self, q: f64) -> Option<Micros> {
        let mut v: Vec<Micros> = self.detected.values().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

/// Driving a workload live through the real pipeline: a source that releases events on
/// time, a sink that keeps verdicts, and a subscription that says when every notification
/// has been fully checked.
pub mod live {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

    use async_trait::async_trait;
    use tokio::time::Instant;

    use overseer_dal::bus::{Delivered, DeliveryTag, Subscription};
    use overseer_dal::update::Micros;
    use overseer_ingestion::source::{Evidence, Source, SourceContext, SourceMsg};
    use overseer_prs::runner::{Outcome, RunRecord, Sink};

    use super::{System, Workload};

    /// Maps workload times (µs since the epoch) onto the monotonic clock: `origin_us` is
    /// the wall-clock time at `origin`.
    #[derive(Clone, Copy, Debug)]
    pub struct Clock {
        pub origin: Instant,
        pub origin_us: Micros,
    }

    impl Clock {
        /// A clock on which `Instant::now()` is `now_us`.
        pub fn starting_at(now_us: Micros) -> Self {
            Clock {
                origin: Instant::now(),
                origin_us: now_us,
            }
        }

        pub fn now_us(&self) -> Micros {
            self.origin_us + self.origin.elapsed().as_micros() as Micros
        }

        pub fn instant(&self, us: Micros) -> Instant {
            self.origin
                + std::time::Duration::from_micros(us.saturating_sub(self.origin_us).max(0) as u64)
        }
    }

    /// Releases one system's events at their arrival times, then heartbeats until shutdown.
    ///
    /// Every `ctx.heartbeat` it reports the time up to which it is complete (DESIGN
    /// invariant 4): a caught-up source `now`, a lagging one `now − its lag`, and never at or
    /// past the commit time of an event it has not delivered yet.
    pub struct ReplaySource {
        workload: Arc<Workload>,
        system: System,
        clock: Clock,
        /// Set once every event has been handed to the pipeline.
        delivered: Arc<AtomicBool>,
    }

    impl ReplaySource {
        pub fn new(
            workload: Arc<Workload>,
            system: System,
            clock: Clock,
            delivered: Arc<AtomicBool>,
        ) -> Self {
            ReplaySource {
                workload,
                system,
                clock,
                delivered,
            }
        }
    }

    impl std::fmt::Debug for ReplaySource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ReplaySource")
                .field("system", &self.system)
                .finish_non_exhaustive()
        }
    }

    #[async_trait]
    impl Source for ReplaySource {
        async fn run(self: Box<Self>, ctx: SourceContext) -> overseer_ingestion::Result<()> {
            let events = self.workload.events(self.system);
            let next_commit = self.workload.next_commits(self.system);
            // A topic of several partitions declares them, as the Kafka source does: the
            // pipeline's watermark is the slowest one's.
            let partitions = match self.system {
                System::Ledger => self.workload.config.ledger_partitions,
                System::Payments => 1,
            };
            if partitions > 1 {
                let lanes = (0..partitions).map(|l| (l, format!("{}/{l}", self.system.name())));
                if ctx
                    .tx
                    .send(SourceMsg::Lanes(lanes.collect()))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            let every = ctx.heartbeat.max(std::time::Duration::from_millis(1));
            let mut last_beat = Instant::now();
            let mut watermark = Micros::MIN;
            let mut i = 0;
            loop {
                let now = Instant::now();
                if now >= last_beat + every {
                    let now_us = self.clock.now_us();
                    let complete = now_us - self.workload.lag_us(self.system, now_us);
                    let wm = complete.min(next_commit[i].saturating_sub(1));
                    if wm > watermark {
                        watermark = wm;
                        // What an upstream connector's heartbeat would say: the simulated
                        // system knows how far behind it is.
                        let beat = SourceMsg::Heartbeat {
                            watermark_us: wm,
                            evidence: Evidence::Heartbeat,
                            lanes: None,
                        };
                        if ctx.tx.send(beat).await.is_err() {
                            return Ok(());
                        }
                    }
                    last_beat = now;
                }
                let next_beat = last_beat + every;
                let Some(e) = events.get(i) else {
                    self.delivered.store(true, Ordering::SeqCst);
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep_until(next_beat) => continue,
                    }
                };
                let due = self.clock.instant(e.arrive_us);
                if due > now {
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep_until(due.min(next_beat)) => continue,
                    }
                }
                if ctx
                    .tx
                    .send(SourceMsg::Event(e.source_event()))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                i += 1;
                if ctx.shutdown.is_cancelled() {
                    return Ok(());
                }
            }
        }
    }

    /// A sink that keeps run records: every one ([`Collector::new`]), or only what
    /// scoring reads ([`Collector::verdicts_only`]).
    #[derive(Debug, Default)]
    pub struct Collector {
        runs: Mutex<Vec<RunRecord>>,
        /// Keep [`Verdicts`] instead of every record.
        verdicts_only: bool,
        verdicts: Mutex<Verdicts>,
    }

    /// What scoring and the bench read of a long run's verdicts, gathered as they come:
    /// every run's outcome and latency, and the records of the runs that did not pass
    /// (without their evidence and failure details). A million passes cost 8 bytes each,
    /// not a record each.
    #[derive(Clone, Debug, Default)]
    pub struct Verdicts {
        /// Every run that did not pass (fail, stale, error, no subject), in the order
        /// handed over: what [`Score::of`] reads besides the counts.
        ///
        /// [`Score::of`]: crate::workload::Score::of
        pub not_passed: Vec<RunRecord>,
        /// Runs by outcome label.
        pub by_outcome: BTreeMap<String, u64>,
        /// Each run's `finished_us − first_event_us`, in the order handed over.
        pub latencies_us: Vec<Micros>,
    }

    impl Verdicts {
        /// Runs seen.
        pub fn runs(&self) -> u64 {
            self.latencies_us.len() as u64
        }

        fn add(&mut self, run: &RunRecord) {
            self.latencies_us.push(run.finished_us - run.first_event_us);
            let label = run.outcome.label();
            match self.by_outcome.get_mut(label) {
                Some(n) => *n += 1,
                None => {
                    self.by_outcome.insert(label.to_owned(), 1);
                }
            }
            let outcome = match &run.outcome {
                Outcome::Pass => return,
                // Built without the evidence and details rather than cloned and cleared.
                Outcome::Fail { message, .. } => Outcome::Fail {
                    message: message.clone(),
                    details: serde_json::Value::Null,
                },
                Outcome::Stale {
                    sources,
                    passed,
                    message,
                    ..
                } => Outcome::Stale {
                    sources: sources.clone(),
                    passed: *passed,
                    message: message.clone(),
                    details: serde_json::Value::Null,
                },
                other => other.clone(),
            };
            self.not_passed.push(RunRecord {
                check: run.check.clone(),
                subject: run.subject.clone(),
                eval_us: run.eval_us,
                first_event_us: run.first_event_us,
                outcome,
                evidence: Vec::new(),
                view_digest: None,
                triggers: run.triggers,
                finished_us: run.finished_us,
            });
        }
    }

    impl Collector {
        pub fn new() -> Arc<Collector> {
            Arc::new(Collector::default())
        }

        /// A collector that keeps only [`Verdicts`]: what scoring and the bench read, a
        /// fraction of the memory on long runs ([`Collector::runs`] stays empty).
        pub fn verdicts_only() -> Arc<Collector> {
            Arc::new(Collector {
                verdicts_only: true,
                ..Collector::default()
            })
        }

        /// The records so far, in the order they were handed over (of a
        /// [`Collector::new`]).
        pub fn runs(&self) -> Vec<RunRecord> {
            self.runs.lock().expect("collector lock").clone()
        }

        /// Takes the verdicts gathered so far (of a [`Collector::verdicts_only`]), leaving
        /// none.
        pub fn take_verdicts(&self) -> Verdicts {
            std::mem::take(&mut *self.verdicts.lock().expect("collector lock"))
        }
    }

    #[async_trait]
    impl Sink for Collector {
        async fn record(&self, run: &RunRecord) -> overseer_prs::Result<()> {
            if self.verdicts_only {
                self.verdicts.lock().expect("collector lock").add(run);
            } else {
                self.runs.lock().expect("collector lock").push(run.clone());
            }
            Ok(())
        }
    }

    /// What a [`Tracked`] subscription has seen.
    #[derive(Debug)]
    pub struct FeedProgress {
        /// Notifications handed to the runner.
        pub delivered: AtomicU64,
        /// Highest offset handed out (partition 0), -1: none.
        pub delivered_offset: AtomicI64,
        /// Highest offset the runner committed: every run of every notification up to it
        /// has completed and reached the sink. -1: none.
        pub committed_offset: AtomicI64,
    }

    impl FeedProgress {
        /// Whether `n` notifications were delivered and every one is fully checked.
        pub fn drained(&self, n: u64) -> bool {
            let top = self.delivered_offset.load(Ordering::SeqCst);
            self.delivered.load(Ordering::SeqCst) >= n
                && top >= 0
                && self.committed_offset.load(Ordering::SeqCst) >= top
        }
    }

    /// A subscription (one partition, e.g. a `CatalogFeed`) that counts what it delivers
    /// and what the runner commits.
    pub struct Tracked<S> {
        inner: S,
        progress: Arc<FeedProgress>,
    }

    impl<S: Subscription> Tracked<S> {
        pub fn new(inner: S) -> (Self, Arc<FeedProgress>) {
            let progress = Arc::new(FeedProgress {
                delivered: AtomicU64::new(0),
                delivered_offset: AtomicI64::new(-1),
                committed_offset: AtomicI64::new(-1),
            });
            (
                Tracked {
                    inner,
                    progress: progress.clone(),
                },
                progress,
            )
        }
    }

    #[async_trait]
    impl<S: Subscription> Subscription for Tracked<S> {
        async fn recv(&mut self, max: usize) -> overseer_dal::Result<Vec<Delivered>> {
            let got = self.inner.recv(max).await?;
            let p = &self.progress;
            p.delivered.fetch_add(got.len() as u64, Ordering::SeqCst);
            if let Some(top) = got.iter().map(|d| d.tag.offset).max() {
                p.delivered_offset.fetch_max(top, Ordering::SeqCst);
            }
            Ok(got)
        }

        async fn commit(&mut self, tags: &[DeliveryTag]) -> overseer_dal::Result<()> {
            self.inner.commit(tags).await?;
            if let Some(top) = tags.iter().map(|t| t.offset).max() {
                self.progress
                    .committed_offset
                    .fetch_max(top, Ordering::SeqCst);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_checks::decimal::to_minor;
    use overseer_protos::views::{
        Asset, Direction, LedgerEntry, Totals, Transfer as TransferView, TransferStatus,
        TransferWithLedger, Wallet, WalletWithTotals,
    };

    fn config(transfers: u64) -> WorkloadConfig {
        WorkloadConfig {
            transfers,
            fault_rate: 0.05,
            duplicate_rate: 0.05,
            ..WorkloadConfig::default()
        }
    }

    fn json_of(e: &Event) -> Value {
        serde_json::from_slice(&e.raw).unwrap()
    }

    #[test]
    fn same_seed_same_bytes() {
        let a = Workload::generate(config(500)).unwrap();
        let b = Workload::generate(config(500)).unwrap();
        assert_eq!(a.payments, b.payments);
        assert_eq!(a.ledger, b.ledger);
        assert_eq!(a.faults, b.faults);
        let c = Workload::generate(WorkloadConfig {
            seed: 8,
            ..config(500)
        })
        .unwrap();
        assert_ne!(a.ledger, c.ledger);
        // A different duplicate rate leaves the traffic and its faults alone.
        let d = Workload::generate(WorkloadConfig {
            duplicate_rate: 0.0,
            ..config(500)
        })
        .unwrap();
        assert_eq!(d.faults, a.faults);
        let firsts = |w: &Workload| -> Vec<Event> {
            w.ledger.iter().filter(|e| !e.duplicate).cloned().collect()
        };
        assert_eq!(firsts(&a), firsts(&d));
    }

    #[test]
    fn counts() {
        let w = Workload::generate(config(1000)).unwrap();
        let firsts = |es: &[Event]| es.iter().filter(|e| !e.duplicate).count();
        // 3 asset rows + c and u per transfer
        assert_eq!(firsts(&w.payments), 3 + 2 * 1000);
        // 50 faulty transfers, spread over 4 kinds: 13, 13, 12, 12
        let by = w.faults_by_kind();
        assert_eq!(by.values().sum::<usize>(), 50);
        assert!(by.values().all(|&n| n == 12 || n == 13), "{by:?}");
        // 4 ledger events per transfer, 2 fewer for a missing credit
        let missing = by[&FaultKind::MissingEntry];
        assert_eq!(firsts(&w.ledger), 4 * 1000 - 2 * missing);
        let dups = w.duplicates();
        let unique = w.unique_events();
        assert!(
            unique * 4 / 100 < dups && dups < unique * 6 / 100,
            "{dups}: about 5% of {unique}"
        );
        assert_eq!(w.unique_events() + dups, w.deliveries());
        // Duplicates repeat an earlier delivery exactly, later.
        for es in [&w.payments, &w.ledger] {
            let mut seen = BTreeMap::new();
            for e in es.iter() {
                if e.duplicate {
                    let first: &Event = seen[&e.position];
                    assert_eq!((&first.raw, first.commit_us), (&e.raw, e.commit_us));
                    assert!(e.arrive_us > first.arrive_us);
                } else {
                    assert!(seen.insert(e.position.clone(), e).is_none());
                }
            }
        }
        // Ground truth: two pairs per unbalanced transfer, one per other fault.
        assert_eq!(
            w.faults.len(),
            missing
                + 2 * by[&FaultKind::Unbalanced]
                + by[&FaultKind::PrecisionSlip]
                + by[&FaultKind::WalletDrift]
        );
        let none = Workload::generate(WorkloadConfig {
            fault_rate: 0.0,
            ..config(100)
        })
        .unwrap();
        assert!(none.faults.is_empty() && none.expected_failures().is_empty());
        let only = Workload::generate(WorkloadConfig {
            faults: vec![FaultKind::PrecisionSlip],
            ..config(100)
        })
        .unwrap();
        assert!(
            only.faults
                .iter()
                .all(|f| f.kind == FaultKind::PrecisionSlip)
        );
        assert_eq!(only.faults.len(), 5);
    }

    #[test]
    fn every_kind_present_when_enabled() {
        let w = Workload::generate(WorkloadConfig {
            transfers: 40,
            fault_rate: 0.1,
            ..WorkloadConfig::default()
        })
        .unwrap();
        let kinds: BTreeSet<FaultKind> = w.faults.iter().map(|f| f.kind).collect();
        assert_eq!(kinds.len(), 4, "{:?}", w.faults);
        for f in &w.faults {
            assert!(f.kind.checks().contains(&f.check));
            if f.kind == FaultKind::WalletDrift {
                assert!(f.subject.starts_with("acct") && f.subject.contains(':'));
            } else {
                assert_eq!(f.subject, f.transfer);
            }
        }
    }

    #[test]
    fn times_and_order() {
        let w = Workload::generate(config(2000)).unwrap();
        let firsts: Vec<&Event> = w.ledger.iter().filter(|e| !e.duplicate).collect();
        // In commit order, arriving in that order, each no earlier than commit + lag.
        for pair in firsts.windows(2) {
            assert!(pair[0].commit_us <= pair[1].commit_us);
            assert!(pair[0].arrive_us <= pair[1].arrive_us);
        }
        for e in &firsts {
            assert_eq!(e.commit_us % 1000, 0, "wallTime has whole milliseconds");
            assert!(e.arrive_us >= e.commit_us + w.lag_us(System::Ledger, e.commit_us));
            assert!(e.arrive_us - e.commit_us <= 2_000_000 + 100_000);
            let v = json_of(e);
            assert_eq!(
                v["wallTime"]["$date"]["$numberLong"],
                json!((e.commit_us / 1000).to_string())
            );
        }
        let lags: Vec<Micros> = firsts.iter().map(|e| e.arrive_us - e.commit_us).collect();
        assert!(
            lags.iter().any(|&l| l > 1_000_000),
            "jitter reaches past 1 s"
        );
        let (min, max) = (lags.iter().min().unwrap(), lags.iter().max().unwrap());
        assert!(max - min > 500_000, "the lag varies: {min}..{max}");
        for e in w.payments.iter().filter(|e| !e.duplicate) {
            assert_eq!(e.arrive_us, e.commit_us, "payments are caught up");
            assert_eq!(json_of(e)["source"]["ts_us"], json!(e.commit_us));
        }
        // Positions are unique per source among first deliveries, and resume tokens too.
        let tokens: BTreeSet<String> = firsts
            .iter()
            .map(|e| json_of(e)["_id"]["_data"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(tokens.len(), firsts.len());
    }

    /// Folds the generated events into final state and runs the shipped checks on it: exactly
    /// the ground truth fails, amounts are exact and within i64.
    #[test]
    fn checks_fail_exactly_on_the_faults() {
        let w = Workload::generate(WorkloadConfig {
            fault_rate: 0.05,
            ..config(2000)
        })
        .unwrap();
        let mut assets = BTreeMap::new();
        let mut transfers: BTreeMap<String, Value> = BTreeMap::new();
        for e in w.payments.iter().filter(|e| !e.duplicate) {
            let v = json_of(e);
            let after = v["after"].clone();
            match v["source"]["table"].as_str().unwrap() {
                "assets" => {
                    assets.insert(
                        after["symbol"].as_str().unwrap().to_owned(),
                        after["decimals"].as_i64().unwrap() as i32,
                    );
                }
                _ => {
                    transfers.insert(after["id"].as_str().unwrap().to_owned(), after);
                }
            }
        }
        let mut entries: BTreeMap<String, Vec<LedgerEntry>> = BTreeMap::new();
        let mut wallets: BTreeMap<String, i64> = BTreeMap::new();
        let long = |v: &Value| -> i64 { v["$numberLong"].as_str().unwrap().parse().unwrap() };
        for e in w.ledger.iter().filter(|e| !e.duplicate) {
            let v = json_of(e);
            match (
                v["ns"]["coll"].as_str().unwrap(),
                v["operationType"].as_str().unwrap(),
            ) {
                ("entries", "insert") => {
                    let d = &v["fullDocument"];
                    let entry = LedgerEntry {
                        id: d["_id"].as_str().unwrap().into(),
                        transfer_id: d["transfer_id"].as_str().unwrap().into(),
                        account_id: d["account_id"].as_str().unwrap().into(),
                        asset: d["asset"].as_str().unwrap().into(),
                        direction: match d["direction"].as_str().unwrap() {
                            "debit" => Direction::Debit,
                            _ => Direction::Credit,
                        } as i32,
                        amount_minor: long(&d["amount_minor"]),
                        decimals: d["decimals"].as_i64().unwrap() as i32,
                    };
                    assert!(entry.amount_minor > 0);
                    entries
                        .entry(entry.transfer_id.clone())
                        .or_default()
                        .push(entry);
                }
                ("wallets", "insert") => {
                    let d = &v["fullDocument"];
                    let id = d["_id"].as_str().unwrap().to_owned();
                    assert!(wallets.insert(id, long(&d["balance_minor"])).is_none());
                }
                ("wallets", "update") => {
                    let id = v["documentKey"]["_id"].as_str().unwrap().to_owned();
                    let b = long(&v["updateDescription"]["updatedFields"]["balance_minor"]);
                    *wallets.get_mut(&id).expect("inserted before") = b;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let truth = w.expected_failures();
        let mut failed = BTreeSet::new();
        for (id, t) in &transfers {
            let symbol = t["asset"].as_str().unwrap();
            let decimals = assets[symbol];
            let amount = t["amount"].as_str().unwrap();
            // The amount is exact at the asset's precision and fits an i64.
            let minor = to_minor(amount, decimals).unwrap();
            assert!(minor > 0 && minor <= i128::from(i64::MAX));
            let view = TransferWithLedger {
                transfer: Some(TransferView {
                    id: id.clone(),
                    account_id: t["account_id"].as_str().unwrap().into(),
                    asset: symbol.into(),
                    amount: amount.into(),
                    status: TransferStatus::Completed as i32,
                    updated_at: None,
                }),
                entries: entries.get(id).cloned().unwrap_or_default(),
                asset: Some(Asset {
                    symbol: symbol.into(),
                    decimals,
                }),
            };
            if !overseer_checks::transfer_nets_to_zero(&view).is_pass() {
                failed.insert((NETS_TO_ZERO, id.clone()));
            }
            if !overseer_checks::entries_match_amount(&view).is_pass() {
                failed.insert((MATCHES_AMOUNT, id.clone()));
            }
        }
        let all: Vec<LedgerEntry> = entries.values().flatten().cloned().collect();
        for (id, balance) in &wallets {
            let (account, asset) = id.rsplit_once(':').unwrap();
            let of_wallet: Vec<&LedgerEntry> = all
                .iter()
                .filter(|e| e.account_id == account && e.asset == asset)
                .collect();
            let sum: i128 = of_wallet
                .iter()
                .map(|e| match e.direction() {
                    Direction::Credit => i128::from(e.amount_minor),
                    _ => -i128::from(e.amount_minor),
                })
                .sum();
            let view = WalletWithTotals {
                wallet: Some(Wallet {
                    id: id.clone(),
                    balance_minor: *balance,
                }),
                entries: Some(Totals {
                    count: of_wallet.len() as u64,
                    sum: sum.to_string(),
                }),
            };
            if !overseer_checks::wallet_balance_matches_entries(&view).is_pass() {
                failed.insert((WALLET_BALANCE, id.clone()));
            }
        }
        assert_eq!(failed, truth);
        assert!(truth.iter().any(|(c, _)| *c == WALLET_BALANCE));
    }

    #[test]
    fn refuses_what_it_cannot_generate_exactly() {
        let e = |c: WorkloadConfig| Workload::generate(c).unwrap_err().to_string();
        assert!(
            e(WorkloadConfig {
                assets: vec![("ETH".into(), 18)],
                ..config(10)
            })
            .contains("decimals 18")
        );
        assert!(
            e(WorkloadConfig {
                assets: vec![("X".into(), 12)],
                transfers: 100_000,
                ..config(10)
            })
            .contains("overflow")
        );
        assert!(
            e(WorkloadConfig {
                fault_rate: 1.5,
                ..config(10)
            })
            .contains("fault_rate")
        );
    }

    #[test]
    fn amounts_render_exactly() {
        assert_eq!(render_amount(1234, 2), "12.34");
        assert_eq!(render_amount(5, 8), "0.00000005");
        assert_eq!(render_amount(7, 0), "7");
        assert_eq!(
            to_minor(&render_amount(123_456_789_012, 9), 9),
            Ok(123_456_789_012)
        );
    }

    #[test]
    fn lag_curve_interpolates() {
        let p = [(0, 0), (100, 1000), (200, 0)];
        assert_eq!(lag_at(&p, -5), 0);
        assert_eq!(lag_at(&p, 50), 500);
        assert_eq!(lag_at(&p, 100), 1000);
        assert_eq!(lag_at(&p, 150), 500);
        assert_eq!(lag_at(&p, 500), 0);
    }

    /// The replay source, on a paused clock: events no earlier than their arrival time, and
    /// no heartbeat ever claims a time at or past an event still to come.
    #[tokio::test(start_paused = true)]
    async fn replay_source_is_on_time_and_honest() {
        use overseer_ingestion::source::{Acks, Source, SourceContext, SourceMsg};
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        use tokio_util::sync::CancellationToken;

        let w = Arc::new(
            Workload::generate(WorkloadConfig {
                start_us: 1_000_000_000,
                ..config(200)
            })
            .unwrap(),
        );
        for system in System::ALL {
            let clock = live::Clock::starting_at(w.config.start_us - 10_000);
            let done = Arc::new(AtomicBool::new(false));
            let src = Box::new(live::ReplaySource::new(
                w.clone(),
                system,
                clock,
                done.clone(),
            ));
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let shutdown = CancellationToken::new();
            let ctx = SourceContext {
                name: system.name().into(),
                tx,
                acks: Acks::new(),
                shutdown: shutdown.clone(),
                resume: None,
                heartbeat: Duration::from_millis(20),
                caught_up_means_now: false,
            };
            let task = tokio::spawn(src.run(ctx));
            let mut got = Vec::new();
            let mut beats = Vec::new();
            let end = w.last_arrival_us() + 3_000_000;
            while clock.now_us() < end {
                match rx.recv().await.unwrap() {
                    SourceMsg::Event(e) => got.push((clock.now_us(), e)),
                    SourceMsg::Heartbeat { watermark_us, .. } => {
                        beats.push((got.len(), clock.now_us(), watermark_us))
                    }
                    SourceMsg::Lanes(l) => panic!("one lane per simulated system: {l:?}"),
                }
            }
            assert!(done.load(std::sync::atomic::Ordering::SeqCst));
            shutdown.cancel();
            task.await.unwrap().unwrap();
            let events = w.events(system);
            assert_eq!(got.len(), events.len());
            for ((at, e), want) in got.iter().zip(events) {
                assert_eq!(e.position, want.position);
                assert!(*at >= want.arrive_us, "{system:?} early");
            }
            assert!(beats.windows(2).all(|b| b[0].2 < b[1].2), "monotone");
            for &(sent, now, wm) in &beats {
                assert!(wm <= now - w.lag_us(system, now));
                if let Some(next) = events[sent..]
                    .iter()
                    .filter(|e| !e.duplicate)
                    .map(|e| e.commit_us)
                    .min()
                {
                    assert!(
                        wm < next,
                        "{system:?}: watermark {wm} ≥ pending commit {next}"
                    );
                }
            }
            let last = beats.last().unwrap();
            assert!(
                last.2 >= w.last_commit_us(),
                "{system:?} complete at the end"
            );
        }
    }
}
