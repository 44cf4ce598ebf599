//! The `overseer` binary as a user runs it: the demo on the embedded default, and
//! ingest → history → reindex → history on a config file, with clear errors for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn overseer(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args(args)
        .current_dir(cwd)
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

#[test]
fn demo_runs_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("demo");
    let out = ok(&overseer(
        &["demo", "--transfers", "3000", "--dir", d.to_str().unwrap()],
        dir.path(),
    ));
    assert!(out.contains("identical to the live catalog"), "{out}");
    assert!(out.contains("quarantined"), "{out}");
    assert!(
        out.contains("history of payments.transfers/t00000042"),
        "{out}"
    );
}

fn write_config(dir: &Path, catalog: &str) -> std::path::PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("ingestion/tests/fixtures");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/embedded.toml"),
    )
    .unwrap()
    .replace(
        "overseer-data/objects",
        &dir.join("objects").display().to_string(),
    )
    .replace(
        "overseer-data/catalog.redb",
        &dir.join(catalog).display().to_string(),
    )
    .replace("ingestion/tests/fixtures", &fixtures.display().to_string());
    let p = dir.join(format!("{catalog}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn ingest_history_and_reindex() {
    let dir = tempfile::tempdir().unwrap();
    let live = write_config(dir.path(), "live.redb");
    let cfg = live.to_str().unwrap();
    ok(&overseer(
        &["ingest", "--config", cfg, "--once"],
        dir.path(),
    ));
    let hist = |cfg: &str, model: &str, id: &str| {
        ok(&overseer(
            &[
                "history", "--config", cfg, "--model", model, "--id", id, "--json",
            ],
            dir.path(),
        ))
    };
    let h = hist(cfg, "ledger.entries", "65e1f1c0a1b2c3d4e5f64001");
    let lines: Vec<serde_json::Value> = h
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty(), "{h}");
    assert_eq!(lines[0]["op"], "create");
    let times: Vec<i64> = lines
        .iter()
        .map(|l| l["event_time_us"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "time-travel order");
    let table = ok(&overseer(
        &[
            "history",
            "--config",
            cfg,
            "--model",
            "ledger.entries",
            "--id",
            "65e1f1c0a1b2c3d4e5f64001",
        ],
        dir.path(),
    ));
    assert!(table.contains("ledger-change-stream"), "{table}");

    // ingesting the same files again (a fresh run, same checkpoints) changes nothing
    ok(&overseer(
        &["ingest", "--config", cfg, "--once"],
        dir.path(),
    ));
    assert_eq!(hist(cfg, "ledger.entries", "65e1f1c0a1b2c3d4e5f64001"), h);

    // reindex into a new catalog from the same object store yields the same history
    let re = write_config(dir.path(), "re.redb");
    let rcfg = re.to_str().unwrap();
    ok(&overseer(&["reindex", "--config", rcfg], dir.path()));
    for (model, id) in [
        ("ledger.entries", "65e1f1c0a1b2c3d4e5f64001"),
        ("payments.transfers", "t-1001"),
    ] {
        assert_eq!(hist(rcfg, model, id), hist(cfg, model, id), "{model}/{id}");
    }
    // and refuses to run twice into a catalog that is no longer empty
    let again = overseer(&["reindex", "--config", rcfg], dir.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty catalog"));

    // unknown records and bad configs fail with a clear message
    let missing = overseer(
        &[
            "history",
            "--config",
            cfg,
            "--model",
            "ledger.entries",
            "--id",
            "nope",
        ],
        dir.path(),
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no record \"nope\""));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[ingest]\nbatch_size = 3\n").unwrap();
    let o = overseer(
        &["ingest", "--config", bad.to_str().unwrap(), "--once"],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("batch_size"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
