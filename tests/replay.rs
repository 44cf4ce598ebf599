//! `overseer replay` as a user runs it, on the embedded default and the fixtures: a
//! report of every check's runs with each failure's evidence, byte-identical JSON across
//! runs (each a fresh process: a fresh DAL and cache), shadow checks replayed when asked
//! for, and clear errors for bad input; an empty window exits 0 and says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn overseer(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run overseer")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: &Output) -> String {
    assert!(!o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The embedded example over the fixtures, in `dir`, with `prs_keys` added to its `[prs]`
/// table and `extra` appended; ingested.
fn ingested(dir: &Path, prs_keys: &str, extra: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("ingestion/tests/fixtures");
    let text = std::fs::read_to_string(root.join("examples/embedded.toml"))
        .unwrap()
        .replace("overseer-data", &dir.join("data").display().to_string())
        .replace("ingestion/tests/fixtures", &fixtures.display().to_string())
        .replacen("[prs]\n", &format!("[prs]\n{prs_keys}"), 1);
    let p = dir.join("c.toml");
    std::fs::write(&p, format!("{text}\n{extra}")).unwrap();
    ok(&overseer(
        &["ingest", "--config", p.to_str().unwrap(), "--once"],
        dir,
    ));
    p
}

/// Every fixture update: 2024-03-01 is inside, 2096 far past the last.
const ALL: [&str; 4] = ["--from", "2024-01-01T00:00:00Z", "--to", "4000000000000"];

#[test]
fn replay_reports_failures_with_evidence_and_its_json_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ingested(dir.path(), "", "");
    let cfg = cfg.to_str().unwrap();
    let json = |extra: &[&str]| {
        let mut args = vec!["replay", "--config", cfg, "--format", "json"];
        args.extend_from_slice(&ALL);
        args.extend_from_slice(extra);
        ok(&overseer(&args, dir.path()))
    };
    let one = json(&[]);
    assert_eq!(one, json(&[]), "two replays, byte-identical JSON");
    let out = dir.path().join("r.json");
    json(&["--output", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), one);

    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(v["empty"], false);
    assert!(v["updates"].as_u64().unwrap() > 0, "{v}");
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["check"] == "transfer_nets_to_zero"));
    let failures = v["failures"].as_array().unwrap();
    assert!(!failures.is_empty(), "the fixtures hold mismatches: {v}");
    for f in failures {
        assert!(!f["evidence"].as_array().unwrap().is_empty(), "{f}");
        assert!(f["eval_us"].as_i64().unwrap() >= f["trigger_us"].as_i64().unwrap());
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let total: u64 = checks.iter().map(|c| c["failures"].as_u64().unwrap()).sum();
    assert_eq!(total, failures.len() as u64);
    assert!(!one.contains("finished"), "no wall-clock field");

    let mut args = vec!["replay", "--config", cfg, "--format", "csv"];
    args.extend_from_slice(&ALL);
    let csv = ok(&overseer(&args, dir.path()));
    assert!(csv.starts_with("check,subject,evaluated_at,"), "{csv}");
    let mut args = vec!["replay", "--config", cfg];
    args.extend_from_slice(&ALL);
    let table = ok(&overseer(&args, dir.path()));
    assert!(
        table.contains("failures:") && table.contains("evidence: "),
        "{table}"
    );
}

#[test]
fn shadow_checks_replay_only_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ingested(
        dir.path(),
        "",
        "[prs.checks.transfer_nets_to_zero]\nenabled = false\n",
    );
    let cfg = cfg.to_str().unwrap();
    let mut args = vec!["replay", "--config", cfg, "--format", "json"];
    args.extend_from_slice(&ALL);
    let v: serde_json::Value = serde_json::from_str(&ok(&overseer(&args, dir.path()))).unwrap();
    let names: Vec<_> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !names.contains(&"transfer_nets_to_zero".into()),
        "{names:?}"
    );

    args.extend_from_slice(&["--check", "transfer_nets_to_zero"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&overseer(&args, dir.path()))).unwrap();
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{v}");
    assert_eq!(checks[0]["check"], "transfer_nets_to_zero");
    assert_eq!(checks[0]["shadow"], true);
    assert!(checks[0]["runs"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn bad_input_is_refused_clearly_and_an_empty_window_is_an_empty_report() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ingested(dir.path(), "", "");
    let cfg = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["replay", "--config", cfg];
        all.extend_from_slice(args);
        overseer(&all, dir.path())
    };
    let e = fails(&run(&["--from", "2000", "--to", "1000"]));
    assert!(e.contains("inverted"), "{e}");
    let e = fails(&run(&["--from", "yesterday", "--to", "1000"]));
    assert!(e.contains("--from") && e.contains("\"yesterday\""), "{e}");
    assert!(e.contains("RFC 3339"), "{e}");
    let e = fails(&run(&["--from", "0", "--to", "tomorrow"]));
    assert!(e.contains("--to"), "{e}");
    let e = fails(&run(&["--from", "0", "--to", "1000", "--check", "nope"]));
    assert!(
        e.contains("\"nope\"") && e.contains("transfer_nets_to_zero"),
        "lists the registered checks: {e}"
    );
    let e = fails(&run(&["--from", "0", "--to", "1000", "--model", "nope"]));
    assert!(e.contains("payments.transfers"), "{e}");

    let out = ok(&run(&["--from", "0", "--to", "1000", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["empty"], true);
    assert_eq!(v["runs"], 0);
    assert!(
        v["note"].as_str().unwrap().contains("holds no updates"),
        "{v}"
    );
    let table = ok(&run(&["--from", "0", "--to", "1000"]));
    assert!(table.contains("holds no updates"), "{table}");
}

/// `--escalate` sends the replayed verdicts through the configured policies (here PagerDuty,
/// served locally): every failing (check, subject) of the report pages under its dedup key,
/// nothing else pages; without the flag the same replay sends nothing.
#[test]
fn escalate_pages_the_replayed_failures_and_only_with_the_flag() {
    use overseer_prs::escalate::dedup_key;
    use overseer_testkit::pagerduty::{FakePagerDuty, TEST_ROUTING_KEY};
    use std::collections::BTreeSet;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pd = rt.block_on(FakePagerDuty::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ingested(
        dir.path(),
        "default_escalation = \"pd\"\n",
        &format!(
            "[escalation.pd]\nkind = \"pagerduty\"\n\
             routing_key_env = \"REPLAY_PD_KEY\"\nurl = \"{}\"\n",
            pd.url()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", "--config", cfg, "--format", "json"];
        args.extend_from_slice(&ALL);
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_overseer"))
            .args(&args)
            .current_dir(dir.path())
            .env("REPLAY_PD_KEY", TEST_ROUTING_KEY)
            .output()
            .expect("run overseer");
        serde_json::from_str::<serde_json::Value>(&ok(&out)).unwrap()
    };

    let quiet = replay(&[]);
    assert!(pd.requests().is_empty(), "no --escalate, no pages");

    let paged = replay(&["--escalate"]);
    assert_eq!(paged, quiet, "escalating does not change the report");
    let failing: BTreeSet<String> = paged["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| dedup_key(f["check"].as_str().unwrap(), f["subject"].as_str().unwrap()))
        .collect();
    assert!(!failing.is_empty(), "the fixtures hold mismatches");
    let triggered: BTreeSet<String> = pd
        .requests()
        .iter()
        .filter_map(|r| r.json.as_ref())
        .filter(|j| j["event_action"] == "trigger")
        .map(|j| {
            assert_eq!(j["routing_key"], TEST_ROUTING_KEY);
            j["dedup_key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(triggered, failing, "one page per failing (check, subject)");
    // An incident a later passing run resolved is a resolve of one of those keys.
    for i in pd.open_incidents().iter().chain(&pd.resolved_incidents()) {
        assert!(failing.contains(&i.dedup_key), "{i:?}");
    }
    assert!(pd.incidents_opened_total() as usize >= failing.len());
}
