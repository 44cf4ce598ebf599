//! Checks of the payments domain (DESIGN.md's worked example), and how a team registers
//! them: [`register`] is the whole deployment's check list, one line each.
//!
//! - [`transfer_nets_to_zero`]: a completed transfer's ledger entries balance (credits =
//!   debits, at least two entries). Catches a missing or unbalanced entry.
//! - [`entries_match_amount`]: a completed transfer's credits equal its amount at the
//!   asset's precision (`amount × 10^decimals = amount_minor`), and every entry uses the
//!   asset's `decimals`. Catches the 100x slip of one system taking new decimals before
//!   another.
//! - [`wallet_balance_matches_entries`]: a wallet's balance equals the sum of the entries of
//!   its account and asset (credits add, debits subtract). Catches wallet drift. Its view,
//!   `WalletWithTotals`, joins the entries on two references (`account_id`, `asset`)
//!   matching the parts of the wallet id `account_id:asset`, so its view and selection are
//!   derived like the others'; it declares their count and signed sum as an aggregate,
//!   which the DAL keeps up to date as entries arrive, so a run costs what changed, not
//!   the account's age.
//!
//! Amounts are exact: decimals are parsed as strings ([`decimal`]), sums are `i128`.

use serde_json::json;

use overseer_protos::views::{
    Direction, LedgerEntry, TransferStatus, TransferWithLedger, WalletWithTotals,
};
use overseer_prs::Verdict;
use overseer_prs::check::Registry;

pub mod decimal;

/// Model names of the payments domain.
pub mod models {
    pub const TRANSFERS: &str = "payments.transfers";
    pub const ASSETS: &str = "payments.assets";
    pub const ENTRIES: &str = "ledger.entries";
    pub const WALLETS: &str = "ledger.wallets";
}

/// Registers every payments check with its defaults (freshness-aware; the grace is
/// `[prs] grace_ms`).
pub fn register(registry: &mut Registry) {
    registry.check("transfer_nets_to_zero", transfer_nets_to_zero);
    registry.check("entries_match_amount", entries_match_amount);
    registry.check(
        "wallet_balance_matches_entries",
        wallet_balance_matches_entries,
    );
}

fn signed(e: &LedgerEntry) -> i128 {
    match e.direction() {
        Direction::Credit => i128::from(e.amount_minor),
        Direction::Debit => -i128::from(e.amount_minor),
        Direction::Unspecified => 0,
    }
}

fn entries_json(entries: &[LedgerEntry]) -> serde_json::Value {
    entries
        .iter()
        .map(|e| {
            json!({"id": e.id, "direction": e.direction().as_str_name(),
                   "amount_minor": e.amount_minor, "decimals": e.decimals})
        })
        .collect()
}

/// A completed transfer's ledger entries net to zero: at least two, credits = debits.
pub fn transfer_nets_to_zero(v: &TransferWithLedger) -> Verdict {
    let Some(t) = &v.transfer else {
        return Verdict::fail("the view has no transfer");
    };
    if t.status() != TransferStatus::Completed {
        return Verdict::Pass;
    }
    let details = || {
        json!({"transfer": t.id, "amount": t.amount, "asset": t.asset,
                            "entries": entries_json(&v.entries)})
    };
    if v.entries.len() < 2 {
        return Verdict::fail_with(
            format!(
                "completed transfer {} has {} ledger entries, expected at least 2",
                t.id,
                v.entries.len()
            ),
            details(),
        );
    }
    let net: i128 = v.entries.iter().map(signed).sum();
    Verdict::check(net == 0, || {
        Verdict::fail_with(
            format!("ledger entries of transfer {} net to {net}, not 0", t.id),
            details(),
        )
    })
}

/// A completed transfer's credits equal its amount at the asset's precision, and every
/// entry uses the asset's decimals.
pub fn entries_match_amount(v: &TransferWithLedger) -> Verdict {
    let Some(t) = &v.transfer else {
        return Verdict::fail("the view has no transfer");
    };
    let has_credit = v.entries.iter().any(|e| e.direction() == Direction::Credit);
    if t.status() != TransferStatus::Completed || !has_credit {
        // No entries, or no credit, is transfer_nets_to_zero's finding: one incident per
        // fault.
        return Verdict::Pass;
    }
    let Some(asset) = &v.asset else {
        return Verdict::fail_with(
            format!(
                "transfer {} is in asset {:?}, which payments.assets does not have",
                t.id, t.asset
            ),
            json!({"transfer": t.id, "asset": t.asset}),
        );
    };
    let decimals = asset.decimals;
    let details = |expected: Option<i128>| {
        json!({"transfer": t.id, "amount": t.amount, "asset": asset.symbol,
               "asset_decimals": decimals, "expected_minor": expected.map(|e| e.to_string()),
               "entries": entries_json(&v.entries)})
    };
    if let Some(e) = v.entries.iter().find(|e| e.decimals != decimals) {
        return Verdict::fail_with(
            format!(
                "entry {} of transfer {} uses {} decimals, asset {} has {decimals}",
                e.id, t.id, e.decimals, asset.symbol
            ),
            details(None),
        );
    }
    let expected = match decimal::to_minor(&t.amount, decimals) {
        Ok(x) => x,
        Err(why) => {
            return Verdict::fail_with(
                format!("transfer {} amount {:?}: {why}", t.id, t.amount),
                details(None),
            );
        }
    };
    let credits: i128 = v
        .entries
        .iter()
        .filter(|e| e.direction() == Direction::Credit)
        .map(|e| i128::from(e.amount_minor))
        .sum();
    Verdict::check(credits == expected, || {
        Verdict::fail_with(
            format!(
                "transfer {} credits {credits} minor units, its amount {} {} is {expected}",
                t.id, t.amount, asset.symbol
            ),
            details(Some(expected)),
        )
    })
}

/// A wallet's balance equals the sum of its account's entries in its asset (credits add,
/// debits subtract). The entries themselves: `overseer view WalletWithEntries --id <wallet>
/// --as-of <time>`.
pub fn wallet_balance_matches_entries(v: &WalletWithTotals) -> Verdict {
    let Some(w) = &v.wallet else {
        return Verdict::fail("the view has no wallet");
    };
    let (count, sum) = match &v.entries {
        Some(t) => (t.count, t.sum.as_str()),
        None => (0, "0"),
    };
    let Ok(sum) = sum.parse::<i128>() else {
        return Verdict::fail(format!(
            "wallet {}: its entries' sum {sum:?} is not an integer",
            w.id
        ));
    };
    Verdict::check(sum == i128::from(w.balance_minor), || {
        Verdict::fail_with(
            format!(
                "wallet {} balance {} differs from its entries' sum {sum} by {}",
                w.id,
                w.balance_minor,
                i128::from(w.balance_minor) - sum
            ),
            json!({"wallet": w.id, "balance_minor": w.balance_minor,
                   "entries_sum": sum.to_string(), "entry_count": count}),
        )
    })
}

/// A wallet's id is `account_id:asset`.
pub fn wallet_id(account: &str, asset: &str) -> String {
    format!("{account}:{asset}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_protos::views::{Asset, Totals, Transfer, Wallet};

    fn transfer(status: TransferStatus, amount: &str) -> Transfer {
        Transfer {
            id: "T1".into(),
            account_id: "a".into(),
            asset: "USD".into(),
            amount: amount.into(),
            status: status as i32,
            updated_at: None,
        }
    }

    fn entry(id: &str, dir: Direction, minor: i64, decimals: i32) -> LedgerEntry {
        LedgerEntry {
            id: id.into(),
            transfer_id: "T1".into(),
            account_id: "a".into(),
            asset: "USD".into(),
            direction: dir as i32,
            amount_minor: minor,
            decimals,
        }
    }

    fn view(status: TransferStatus, amount: &str, entries: Vec<LedgerEntry>) -> TransferWithLedger {
        TransferWithLedger {
            transfer: Some(transfer(status, amount)),
            entries,
            asset: Some(Asset {
                symbol: "USD".into(),
                decimals: 2,
            }),
        }
    }

    fn balanced() -> Vec<LedgerEntry> {
        vec![
            entry("d", Direction::Debit, 1250, 2),
            entry("c", Direction::Credit, 1250, 2),
        ]
    }

    fn message(v: Verdict) -> String {
        match v {
            Verdict::Fail { message, .. } => message,
            Verdict::Pass => panic!("expected a failure"),
        }
    }

    #[test]
    fn nets_to_zero() {
        use TransferStatus::*;
        assert!(transfer_nets_to_zero(&view(Completed, "12.50", balanced())).is_pass());
        assert!(
            transfer_nets_to_zero(&view(Pending, "12.50", vec![])).is_pass(),
            "not yet due"
        );
        let m = message(transfer_nets_to_zero(&view(
            Completed,
            "12.50",
            vec![entry("d", Direction::Debit, 1250, 2)],
        )));
        assert!(m.contains("has 1 ledger entries"), "{m}");
        let m = message(transfer_nets_to_zero(&view(
            Completed,
            "12.50",
            vec![
                entry("d", Direction::Debit, 1250, 2),
                entry("c", Direction::Credit, 1200, 2),
            ],
        )));
        assert!(m.contains("net to -50"), "{m}");
        // Details carry the evidence a human needs.
        match transfer_nets_to_zero(&view(Completed, "1", vec![])) {
            Verdict::Fail { details, .. } => assert_eq!(details["transfer"], "T1"),
            Verdict::Pass => panic!(),
        }
    }

    #[test]
    fn amount_at_precision_catches_the_100x_slip() {
        use TransferStatus::*;
        assert!(entries_match_amount(&view(Completed, "12.50", balanced())).is_pass());
        assert!(entries_match_amount(&view(Completed, "12.5", balanced())).is_pass());
        // The ledger took 4 decimals while payments still has 2: 100x the minor units.
        let slipped = vec![
            entry("d", Direction::Debit, 125_000, 4),
            entry("c", Direction::Credit, 125_000, 4),
        ];
        assert!(transfer_nets_to_zero(&view(Completed, "12.50", slipped.clone())).is_pass());
        let m = message(entries_match_amount(&view(Completed, "12.50", slipped)));
        assert!(m.contains("uses 4 decimals, asset USD has 2"), "{m}");
        // Same decimals, amounts 100x off.
        let m = message(entries_match_amount(&view(
            Completed,
            "12.50",
            vec![
                entry("d", Direction::Debit, 125_000, 2),
                entry("c", Direction::Credit, 125_000, 2),
            ],
        )));
        assert!(
            m.contains("credits 125000 minor units") && m.contains("is 1250"),
            "{m}"
        );
        // Sub-minor-unit amounts cannot be represented.
        let m = message(entries_match_amount(&view(Completed, "12.505", balanced())));
        assert!(m.contains("12.505"), "{m}");
        // Unknown asset.
        let mut v = view(Completed, "12.50", balanced());
        v.asset = None;
        assert!(message(entries_match_amount(&v)).contains("does not have"));
        assert!(entries_match_amount(&view(Pending, "12.50", vec![])).is_pass());
        // A missing credit is transfer_nets_to_zero's finding alone.
        let debit_only = vec![entry("d", Direction::Debit, 1250, 2)];
        assert!(entries_match_amount(&view(Completed, "12.50", debit_only.clone())).is_pass());
        assert!(!transfer_nets_to_zero(&view(Completed, "12.50", debit_only)).is_pass());
    }

    #[test]
    fn wallet_drift() {
        let v = |balance, sum: &str| WalletWithTotals {
            wallet: Some(Wallet {
                id: "a:USD".into(),
                balance_minor: balance,
            }),
            entries: Some(Totals {
                count: 2,
                sum: sum.into(),
            }),
        };
        assert!(wallet_balance_matches_entries(&v(750, "750")).is_pass());
        let m = message(wallet_balance_matches_entries(&v(760, "750")));
        assert!(m.contains("by 10"), "{m}");
        // A sum past 64 bits is exact.
        let big = (i128::from(i64::MAX) + 10).to_string();
        let m = message(wallet_balance_matches_entries(&v(i64::MAX, &big)));
        assert!(m.contains("by -10"), "{m}");
        // No entries: the balance must be 0.
        let none = WalletWithTotals {
            entries: None,
            ..v(0, "0")
        };
        assert!(wallet_balance_matches_entries(&none).is_pass());
        let m = message(wallet_balance_matches_entries(&WalletWithTotals {
            entries: None,
            ..v(5, "0")
        }));
        assert!(m.contains("sum 0 by 5"), "{m}");
    }

    #[test]
    fn registers_every_check() {
        let mut reg = Registry::new();
        register(&mut reg);
        assert_eq!(reg.len(), 3);
        assert!(
            reg.iter().all(|s| s.select.is_none()),
            "every selection is derived from the view"
        );
    }
}
