//! What the runner tests over a joined history share: transfers with 8–12 ledger entries
//! each (some changed, some moved, every fourth unbalanced) and the check that finds them.
#![allow(dead_code)] // each test crate uses its own share of this module

use serde_json::json;

use overseer_dal::catalog::DynCatalog;
use overseer_dal::store::DynStore;
use overseer_dal::update::{IndexEntry, Micros};
use overseer_protos::views::{Direction, TransferWithLedger};
use overseer_prs::check::Verdict;
use overseer_testkit::history::{Changes, write_segment};

/// Transfers in [`history`].
pub(crate) const TRANSFERS: usize = 24;

/// The commit time of [`history`]'s first records.
pub(crate) const T0: Micros = 1_000_000;

/// A transfer's entries net to zero (credits add, debits subtract).
pub(crate) fn nets_to_zero(v: &TransferWithLedger) -> Verdict {
    let net: i64 = v
        .entries
        .iter()
        .map(|e| match e.direction() {
            Direction::Credit => e.amount_minor,
            _ => -e.amount_minor,
        })
        .sum();
    Verdict::check(net == 0, || {
        Verdict::fail_with(format!("net {net}"), json!({"entries": v.entries.len()}))
    })
}

/// Transfers with 8–12 entries each, written in rounds (one segment each): entries
/// appear, some change amount, some move to another transfer; every fourth transfer ends
/// unbalanced. Returns each round's index entries.
pub(crate) async fn history(catalog: &DynCatalog, store: &DynStore) -> Vec<Vec<IndexEntry>> {
    let mut pay = Changes::new("payments");
    let mut ledger = Changes::new("ledger").refs(&["transfer_id"]);
    let t0: Micros = T0;
    let mut rounds = Vec::new();
    let mut recs = vec![pay.row(
        "payments.assets",
        "USD",
        t0,
        "r",
        json!({"symbol": "USD", "decimals": 2}),
    )];
    for i in 0..TRANSFERS {
        let id = format!("T{i:02}");
        recs.push(pay.row(
            "payments.transfers",
            &id,
            t0 + i as Micros,
            "c",
            json!({"id": id, "account_id": "a", "asset": "USD", "amount": "1.00",
                   "status": "pending", "updated_at": "2024-01-02T03:04:05Z"}),
        ));
    }
    rounds.push(
        write_segment(&**store, &**catalog, recs, vec![])
            .await
            .unwrap(),
    );
    let entry = |id: &str, transfer: &str, direction: &str, minor: i64| {
        json!({"_id": id, "transfer_id": transfer, "account_id": "a", "asset": "USD",
               "direction": direction, "amount_minor": {"$numberLong": minor.to_string()},
               "decimals": 2})
    };
    // Rounds of entries: in round r, each transfer gets a debit and a credit of r + 1.
    for r in 0..6i64 {
        let mut recs = Vec::new();
        let t = t0 + 1_000 * (r + 1);
        for i in 0..TRANSFERS {
            let tr = format!("T{i:02}");
            for (k, dir) in ["debit", "credit"].iter().enumerate() {
                let id = format!("{tr}-e{r}{k}");
                recs.push(ledger.insert(
                    "ledger.entries",
                    &id,
                    t + i as Micros,
                    entry(&id, &tr, dir, r + 1),
                ));
            }
        }
        if r >= 4 {
            // Changes to earlier entries: every fourth transfer's first debit grows (it
            // ends unbalanced); the round-0 pair of every fifth transfer (not a fourth)
            // moves to the next transfer (the pair is balanced: neither verdict changes).
            for i in 0..TRANSFERS {
                let tr = format!("T{i:02}");
                if i % 4 == 0 && r == 4 {
                    recs.push(ledger.update(
                        "ledger.entries",
                        &format!("{tr}-e00"),
                        t + 500 + i as Micros,
                        json!({"amount_minor": {"$numberLong": "7"}}),
                        &[],
                    ));
                }
                if i % 5 == 0 && i % 4 != 0 && r == 5 {
                    let next = format!("T{:02}", (i + 1) % TRANSFERS);
                    for k in 0..2 {
                        recs.push(ledger.update(
                            "ledger.entries",
                            &format!("{tr}-e0{k}"),
                            t + 500 + i as Micros,
                            json!({"transfer_id": next}),
                            &[],
                        ));
                    }
                }
            }
        }
        rounds.push(
            write_segment(&**store, &**catalog, recs, vec![])
                .await
                .unwrap(),
        );
    }
    rounds
}
