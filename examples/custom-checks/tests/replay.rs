//! The team's own binary end to end: it ingests the fixture (orders and shipments from a
//! MongoDB change stream) and `replay` finds the planted fault (order O2 marked shipped
//! with 5 items, its shipments hold 3) and nothing else.

use std::path::Path;
use std::process::{Command, Output};

fn overseer(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_custom-checks"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the team's binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shipped config, with the fixture's absolute path, in a fresh directory (the data
/// goes there too).
fn deployment() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = std::fs::read_to_string(here.join("overseer.toml"))
        .unwrap()
        .replace(
            "fixtures/shop.jsonl",
            here.join("fixtures/shop.jsonl").to_str().unwrap(),
        );
    std::fs::write(dir.path().join("overseer.toml"), cfg).unwrap();
    dir
}

#[test]
fn replay_through_the_teams_binary_finds_the_planted_fault() {
    let dir = deployment();
    let d = dir.path();
    ok(&overseer(&["validate", "--config", "overseer.toml"], d));
    ok(&overseer(
        &["ingest", "--config", "overseer.toml", "--once"],
        d,
    ));
    let report = ok(&overseer(
        &[
            "replay",
            "--config",
            "overseer.toml",
            "--from",
            "2025-12-01T00:00:00Z",
            "--to",
            "2025-12-02T00:00:00Z",
            "--format",
            "json",
        ],
        d,
    ));
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let failures: Vec<(String, String)> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_owned(),
                f["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        failures,
        [("shipped_order_is_fully_shipped".to_owned(), "O2".to_owned())],
        "{v:#}"
    );
    let message = v["failures"][0]["message"].as_str().unwrap();
    assert!(message.contains("shipments hold 3"), "{message}");
    // O1 and O3 ran and passed.
    let checks = v["checks"].as_array().unwrap();
    assert!(checks[0]["passes"].as_u64().unwrap() >= 2, "{v:#}");
}

/// `view` in the team's binary knows the team's view (registered in code, no config
/// entry): order O2 as of the end of the fixture, with its one shipment.
#[test]
fn view_shows_the_teams_own_view() {
    let dir = deployment();
    let d = dir.path();
    ok(&overseer(
        &["ingest", "--config", "overseer.toml", "--once"],
        d,
    ));
    let out = ok(&overseer(
        &[
            "view",
            "--config",
            "overseer.toml",
            "--model",
            "shop.orders",
            "--id",
            "O2",
            "--view",
            "OrderWithShipments",
            "--json",
        ],
        d,
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["order"]["status"], "shipped", "{v:#}");
    let shipments = v["shipments"].as_array().unwrap();
    assert_eq!(shipments.len(), 1, "{v:#}");
    assert_eq!(shipments[0]["id"], "S2", "{v:#}");
}
