//! `overseer bench` as a user runs it, small: every phase runs the generated traffic
//! through the real pipeline and the JSON results agree with the ground truth (every fault
//! detected and no false alarm under freshness-aware; immediate, on the same lagging
//! traffic, raising the false alarms it exists to show). Numbers are only checked for
//! consistency, never against a speed: speed is measured, not asserted.

use std::process::Command;

/// `overseer bench ARGS --dir D --json J` in a fresh directory: must succeed; its standard
/// output and its JSON results.
fn bench_embedded(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(dir.path().join("data"))
        .arg("--json")
        .arg(&json)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap())
        .expect("the --json file is one JSON document");
    (stdout, v)
}

#[test]
fn bench_measures_every_phase_and_writes_json() {
    let (stdout, v) = bench_embedded(&[
        "--updates",
        "6000",
        "--paced-rate",
        "3000",
        "--paced-secs",
        "1.5",
        "--lag-ms",
        "1000",
        "--grace-ms",
        "1500",
        "--fault-rate",
        "0.05",
    ]);
    for text in [
        "Throughput",
        "Latency",
        "Accuracy",
        "baseline",
        "side by side",
    ] {
        assert!(stdout.contains(text), "{text} missing from:\n{stdout}");
    }

    assert_eq!(v["mode"], "embedded");
    let phases = v["phases"].as_array().unwrap();
    let names: Vec<(&str, &str)> = phases
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().unwrap(),
                p["strategy"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("throughput", "freshness-aware"),
            ("latency", "freshness-aware"),
            ("accuracy", "immediate"),
            ("accuracy", "fixed-delay 1500 ms"),
            ("accuracy", "freshness-aware"),
        ]
    );
    for p in phases {
        let t = &p["traffic"];
        assert!(t["updates"].as_u64().unwrap() > 0, "{p}");
        assert!(p["problems"].as_array().unwrap().is_empty(), "{p}");
        assert!(
            p["expected_failures"].as_u64().unwrap() > 0,
            "faults injected: {p}"
        );
        assert!(p["runs"].as_u64().unwrap() > 0, "{p}");
        assert!(p["ingest_updates_per_s"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["end_to_end_updates_per_s"].as_f64().unwrap() > 0.0, "{p}");
        let segments = p["segments"].as_u64().unwrap();
        assert!(segments > 0, "{p}");
        let per_put = p["updates_per_put"].as_f64().unwrap();
        assert!((per_put * segments as f64 - t["updates"].as_f64().unwrap()).abs() < 1.0);
        if p["strategy"] == "freshness-aware" {
            assert_eq!(p["recall"], 1.0, "{p}");
            assert_eq!(p["false_alarms"], 0, "{p}");
            let ttd = &p["ttd"];
            assert!(ttd["p50_us"].as_i64().unwrap() <= ttd["max_us"].as_i64().unwrap());
        }
    }
    // Whole transfers: the requested count, rounded to the traffic's shape.
    let updates = phases[0]["traffic"]["updates"].as_i64().unwrap();
    assert!((updates - 6000).abs() <= 60, "{updates}");
    assert!(
        phases[2]["false_alarms"].as_u64().unwrap() > 0,
        "immediate checks before the lagging ledger arrives: {}",
        phases[2]
    );
    let b = &v["baselines"];
    assert!(b["disk_write_updates_per_s"].as_f64().unwrap() > 0.0, "{b}");
    assert!(
        b["json_decode_updates_per_s"].as_f64().unwrap() > 0.0,
        "{b}"
    );
}

#[test]
fn bench_refuses_bad_settings() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_overseer"))
            .arg("bench")
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    let out = run(&["--paced-rate", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--paced-rate"));
    let out = run(&["--strategy", "sometimes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));
    let out = run(&["--skew-ms", "5000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ledger-partitions"));
}

/// Real mode: the same traffic through the broker (tansu), the S3 server (garage) and a
/// PostgreSQL catalog, all started by the bench itself and stopped after it; the broker's
/// consume-only baseline comes from the same topics.
#[test]
fn bench_runs_on_the_real_stack() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args([
            "bench",
            "--mode",
            "real",
            "--phases",
            "throughput,latency",
            "--updates",
            "3000",
            "--paced-rate",
            "1000",
            "--paced-secs",
            "1",
            "--fault-rate",
            "0.05",
        ])
        .arg("--json")
        .arg(&json)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["mode"], "real");
    let phases = v["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    for p in phases {
        assert!(p["problems"].as_array().unwrap().is_empty(), "{p}");
        assert_eq!(p["recall"], 1.0, "{p}");
        assert_eq!(p["false_alarms"], 0, "{p}");
        assert!(p["segments"].as_u64().unwrap() > 0, "{p}");
        assert!(p["run"].as_str().is_some(), "{p}");
    }
    assert!(
        v["baselines"]["broker_consume_only_per_s"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{v}"
    );
}

/// The partition-skew profile: the ledger's topic in four partitions, the last 3 s behind
/// the others, checked with a 1 s grace. Freshness-aware waits for the slowest partition
/// (the watermark is the minimum over them): every fault found, no false alarm; immediate,
/// on the same traffic, raises false alarms.
#[test]
fn bench_partition_skew_profile() {
    let (stdout, v) = bench_embedded(&[
        "--phases",
        "accuracy",
        "--strategy",
        "immediate,freshness-aware",
        "--paced-rate",
        "3000",
        "--paced-secs",
        "1.5",
        "--lag-ms",
        "0",
        "--ledger-partitions",
        "4",
        "--skew-ms",
        "3000",
        "--grace-ms",
        "1000",
        "--fault-rate",
        "0.05",
    ]);
    assert!(
        stdout.contains("4 ledger partitions, the last 3000 ms behind"),
        "{stdout}"
    );
    let phases = v["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    let (immediate, aware) = (&phases[0], &phases[1]);
    assert_eq!(aware["strategy"], "freshness-aware", "{aware}");
    assert_eq!(aware["recall"], 1.0, "{aware}");
    assert_eq!(aware["false_alarms"], 0, "{aware}");
    assert!(aware["problems"].as_array().unwrap().is_empty(), "{aware}");
    assert_eq!(immediate["strategy"], "immediate", "{immediate}");
    assert!(
        immediate["false_alarms"].as_u64().unwrap() > 0,
        "looking at once sees the skewed partition's entries missing: {immediate}"
    );
}
