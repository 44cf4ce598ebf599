//! The `overseer` binary as a user runs it: the demo on the embedded default, and
//! ingest → history → reindex → history on a config file, with clear errors for bad input.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    // The default traffic, live: every injected fault detected, no false alarm (else the
    // demo exits non-zero), duplicates ignored, nothing quarantined.
    let out = ok(&overseer(
        &["demo", "--dir", d.to_str().unwrap()],
        dir.path(),
    ));
    assert!(
        out.contains("result: recall 1.00 (") && out.contains(" 0 missed), 0 false alarms"),
        "{out}"
    );
    let dups = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("ingested "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(dups.contains(", 0 quarantined"), "{out}");
    assert!(out.contains("OPEN      entries_match_amount t"), "{out}");
    assert!(
        out.contains("OPEN      wallet_balance_matches_entries acct"),
        "{out}"
    );
    assert!(out.contains("time to detect  p50 "), "{out}");
    // Its data stays in --dir, which a second demo refuses to reuse.
    let again = overseer(&["demo", "--dir", d.to_str().unwrap()], dir.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("use an empty --dir"));
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

/// `history`, `view` and `replay` read the embedded catalog while `overseer run` writes
/// it — two at once, too — and a second writer is refused, naming the file.
#[test]
fn readers_work_while_run_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let live = write_config(dir.path(), "live.redb");
    let cfg = live.to_str().unwrap();
    let log_path = dir.path().join("run.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args(["run", "--config", cfg])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let run_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let of_the_entry = |command| {
        [
            command,
            "--config",
            cfg,
            "--model",
            "ledger.entries",
            "--id",
            "65e1f1c0a1b2c3d4e5f64001",
            "--json",
        ]
    };
    let history = of_the_entry("history");
    // Each try is a reader beside the writer: until ingestion has stored the record, it
    // is not there (or the catalog file is not yet).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = overseer(&history, dir.path());
        if o.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("no record") || stderr.contains("no embedded catalog at"),
            "{stderr}"
        );
        assert!(
            Instant::now() < deadline,
            "the entry was not stored within 60 s:\n{}",
            run_log()
        );
        assert!(
            run.try_wait().unwrap().is_none(),
            "run exited:\n{}",
            run_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let view = of_the_entry("view");
    let replay = [
        "replay",
        "--config",
        cfg,
        "--format",
        "json",
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "4000000000000",
    ];
    // All at once, with two of each, while run is up.
    let outputs: Vec<(String, Output)> = std::thread::scope(|s| {
        let dir = dir.path();
        let jobs: Vec<_> = [
            &history[..],
            &history[..],
            &view[..],
            &view[..],
            &replay[..],
        ]
        .into_iter()
        .map(|args| s.spawn(move || (args[0].to_owned(), overseer(args, dir))))
        .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (command, o) in &outputs {
        let out = ok(o);
        match command.as_str() {
            "history" => {
                let first: serde_json::Value =
                    serde_json::from_str(out.lines().next().unwrap()).unwrap();
                assert_eq!(first["op"], "create", "{out}");
            }
            "view" => {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert!(v.is_object(), "{out}");
            }
            _ => {
                // The checks ran over what the reader saw (the entry, at least).
                let r: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert!(r["runs"].as_u64().unwrap() > 0, "{out}");
            }
        }
    }
    assert!(
        run.try_wait().unwrap().is_none(),
        "run exited:\n{}",
        run_log()
    );

    // One writer at a time.
    fails(
        &overseer(&["ingest", "--config", cfg, "--once"], dir.path()),
        "is written by another process",
    );

    // The writer killed: its file needs the repair a crash leaves, and with no writer
    // left to vouch for it, a reader repairs it first (as the next writer would).
    run.kill().unwrap();
    run.wait().unwrap();
    for _ in 0..2 {
        let out = ok(&overseer(&history, dir.path()));
        assert!(out.contains("\"op\":\"create\""), "{out}");
    }
    // And the next writer starts.
    ok(&overseer(
        &["ingest", "--config", cfg, "--once"],
        dir.path(),
    ));
}

/// A MongoDB change-stream event (`wallTime` in epoch ms) of `ns`, or of the source's model.
fn change(
    n: u32,
    op: &str,
    ns: Option<&str>,
    wall_ms: i64,
    id: serde_json::Value,
    body: serde_json::Value,
) -> serde_json::Value {
    let mut ev = serde_json::json!({
        "_id": {"_data": format!("resume-{n:04}")},
        "operationType": op,
        "wallTime": {"$date": {"$numberLong": wall_ms.to_string()}},
        "documentKey": {"_id": id},
    });
    if let Some(ns) = ns {
        let (db, coll) = ns.split_once('.').unwrap();
        ev["ns"] = serde_json::json!({"db": db, "coll": coll});
    }
    match op {
        "update" => ev["updateDescription"] = serde_json::json!({"updatedFields": body}),
        "delete" => {}
        _ => {
            let mut doc = body;
            doc["_id"] = ev["documentKey"]["_id"].clone();
            ev["fullDocument"] = doc;
        }
    }
    ev
}

/// A Debezium PostgreSQL change (bare payload) of `schema.table`, committed at `us`.
fn debezium(table: &str, op: &str, lsn: u64, us: i64, row: serde_json::Value) -> serde_json::Value {
    let (schema, table) = table.split_once('.').unwrap();
    serde_json::json!({
        "before": null, "after": row, "op": op,
        "source": {"connector": "postgresql", "db": "payments", "schema": schema, "table": table,
                   "lsn": lsn, "ts_us": us},
    })
}

fn write_jsonl(path: &Path, events: &[serde_json::Value]) {
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// The failure of `o`: non-zero exit, nothing on stdout, `needle` on stderr.
fn fails(o: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && o.stdout.is_empty(),
        "exit {}\nstdout:\n{}\nstderr:\n{stderr}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

/// `overseer view` over a toy (a MongoDB change stream: watergun/blue, then balloon/blue,
/// then deleted), a transfer with its ledger entries and asset, and a model with no view.
#[test]
fn view_as_of_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 2024-01-02T03:04:05Z, in epoch ms
    let t0: i64 = 1_704_164_645_000;
    write_jsonl(
        &d.join("toys.jsonl"),
        &[
            change(
                1,
                "insert",
                None,
                t0,
                "toy-1".into(),
                serde_json::json!({"type": "watergun", "color": "blue"}),
            ),
            change(
                2,
                "update",
                None,
                t0 + 1250,
                "toy-1".into(),
                serde_json::json!({"type": "balloon"}),
            ),
            change(
                3,
                "delete",
                None,
                t0 + 3000,
                "toy-1".into(),
                serde_json::Value::Null,
            ),
        ],
    );
    // transfer t-1 at 2024-01-02T04:00:00Z, completed one second later
    let t1_us: i64 = 1_704_168_000_000_000;
    let transfer = |status: &str, at_us: i64| {
        serde_json::json!({"id": "t-1", "account_id": "acc-1", "asset": "BTC",
            "amount": "0.50000000", "status": status,
            "updated_at": format!("2024-01-02T04:00:0{}.000000Z", (at_us - t1_us) / 1_000_000)})
    };
    write_jsonl(
        &d.join("payments.jsonl"),
        &[
            debezium(
                "payments.assets",
                "r",
                100,
                t1_us - 3_600_000_000,
                serde_json::json!({"symbol": "BTC", "decimals": 8}),
            ),
            debezium(
                "payments.transfers",
                "c",
                200,
                t1_us,
                transfer("pending", t1_us),
            ),
            debezium(
                "payments.transfers",
                "u",
                300,
                t1_us + 1_000_000,
                transfer("completed", t1_us + 1_000_000),
            ),
        ],
    );
    let oid = |n: u32| serde_json::json!({"$oid": format!("65e1f1c0a1b2c3d4e5f6{n:04}")});
    let entry = |transfer: &str, account: &str, direction: &str| {
        serde_json::json!({"transfer_id": transfer, "account_id": account, "asset": "BTC",
            "direction": direction, "amount_minor": {"$numberLong": "50000000"}, "decimals": 8})
    };
    let t1_ms = t1_us / 1000;
    write_jsonl(
        &d.join("ledger.jsonl"),
        &[
            change(
                1,
                "insert",
                Some("ledger.entries"),
                t1_ms + 100,
                oid(1),
                entry("t-1", "acc-1", "debit"),
            ),
            change(
                2,
                "insert",
                Some("ledger.entries"),
                t1_ms + 200,
                oid(2),
                entry("t-1", "acc-2", "credit"),
            ),
            // an entry of t-1 for a while, then moved to another transfer
            change(
                3,
                "insert",
                Some("ledger.entries"),
                t1_ms + 300,
                oid(3),
                entry("t-1", "acc-3", "credit"),
            ),
            change(
                4,
                "update",
                Some("ledger.entries"),
                t1_ms + 900,
                oid(3),
                serde_json::json!({"transfer_id": "t-9"}),
            ),
            // a model without a view message
            change(
                5,
                "insert",
                Some("crm.customers"),
                t1_ms,
                "c-1".into(),
                serde_json::json!({"name": "Ada", "tier": 2}),
            ),
        ],
    );
    let cfg = d.join("view.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[store]
kind = "local"
path = "{d}/objects"
[catalog]
kind = "embedded"
path = "{d}/catalog.redb"
[dal]
cache_mib = 8

[[models]]
name = "toys"
id_field = "_id"
[[models]]
name = "payments.transfers"
references = {{ account_id = "account_id", asset = "asset" }}
[[models]]
name = "payments.assets"
id_field = "symbol"
[[models]]
name = "ledger.entries"
id_field = "_id"
references = {{ transfer_id = "transfer_id", account_id = "account_id", asset = "asset" }}
[[models]]
name = "crm.customers"
id_field = "_id"

[[sources]]
name = "toys"
format = "mongo-change-stream"
model = "toys"
[sources.file]
path = "{d}/toys.jsonl"
[[sources]]
name = "payments"
format = "debezium-postgres"
[sources.file]
path = "{d}/payments.jsonl"
[[sources]]
name = "ledger"
format = "mongo-change-stream"
[sources.file]
path = "{d}/ledger.jsonl"
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    ok(&overseer(&["ingest", "--config", cfg, "--once"], d));
    let view = |args: &[&str]| {
        let mut all = vec!["view", "--config", cfg];
        all.extend_from_slice(args);
        overseer(&all, d)
    };
    let toy = |as_of: &str| {
        ok(&view(&[
            "--model", "toys", "--id", "toy-1", "--as-of", as_of,
        ]))
    };

    // as of the first update, in RFC 3339 and in epoch ms
    for as_of in [
        "2024-01-02T03:04:05Z",
        "1704164645000",
        "2024-01-02T03:04:06.249999Z",
    ] {
        let out = toy(as_of);
        assert!(
            out.starts_with("# view overseer.views.v1.Toy of toys \"toy-1\"\n"),
            "{out}"
        );
        assert!(
            out.contains("evidence: 1 update (the newest of each record shown, "),
            "{out}"
        );
        assert!(
            out.contains("type: \"watergun\"") && out.contains("color: \"blue\""),
            "{out}"
        );
    }
    assert!(toy("2024-01-02T03:04:05Z").contains("# as of 2024-01-02T03:04:05.000000Z,"));
    // as of the second: the update changed the type only
    for as_of in [
        "2024-01-02T03:04:06.250Z",
        "1704164646250",
        "2024-01-02T04:04:07+01:00",
    ] {
        let out = toy(as_of);
        assert!(
            out.contains("evidence: 1 update (the newest of each record shown, "),
            "{out}"
        );
        assert!(
            out.contains("type: \"balloon\"") && out.contains("color: \"blue\""),
            "{out}"
        );
        assert!(out.contains("id: \"toy-1\""), "{out}");
    }
    // --json: one protobuf-JSON document, nothing else
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = ok(&view(&all));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let j = json(&[
        "--model",
        "toys",
        "--id",
        "toy-1",
        "--as-of",
        "1704164645000",
    ]);
    assert_eq!(
        j,
        serde_json::json!({"id": "toy-1", "type": "watergun", "color": "blue"})
    );
    let j = json(&[
        "--model",
        "toys",
        "--id",
        "toy-1",
        "--as-of",
        "2024-01-02T03:04:07Z",
    ]);
    assert_eq!(j["type"], "balloon");
    assert_eq!(j["color"], "blue");

    // the model's record view; now by default
    let j = json(&["--model", "payments.transfers", "--id", "t-1"]);
    assert_eq!(j["id"], "t-1");
    assert_eq!(j["accountId"], "acc-1");
    assert_eq!(j["amount"], "0.50000000");
    assert_eq!(j["status"], "TRANSFER_STATUS_COMPLETED");
    assert_eq!(j["updatedAt"], "2024-01-02T04:00:01Z");

    // the joined view: the transfer, the entries referencing it then, its asset
    fn joined_args(as_of: &str) -> [&str; 8] {
        [
            "--model",
            "payments.transfers",
            "--id",
            "t-1",
            "--view",
            "TransferWithLedger",
            "--as-of",
            as_of,
        ]
    }
    let joined = |as_of: &str| json(&joined_args(as_of));
    let j = joined("2024-01-02T04:00:01Z");
    assert_eq!(j["transfer"]["status"], "TRANSFER_STATUS_COMPLETED");
    assert_eq!(
        j["asset"],
        serde_json::json!({"symbol": "BTC", "decimals": 8})
    );
    let entries = j["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{j}");
    assert_eq!(entries[0]["id"], "65e1f1c0a1b2c3d4e5f60001");
    assert_eq!(entries[0]["transferId"], "t-1");
    assert_eq!(entries[0]["accountId"], "acc-1");
    assert_eq!(entries[0]["direction"], "DIRECTION_DEBIT");
    assert_eq!(entries[0]["amountMinor"], "50000000");
    assert_eq!(entries[0]["decimals"], 8);
    assert_eq!(entries[1]["id"], "65e1f1c0a1b2c3d4e5f60002");
    assert_eq!(entries[1]["direction"], "DIRECTION_CREDIT");
    // before the third entry moved to another transfer, and before the transfer completed
    let j = joined("2024-01-02T04:00:00.500Z");
    assert_eq!(j["transfer"]["status"], "TRANSFER_STATUS_PENDING");
    assert_eq!(j["entries"].as_array().unwrap().len(), 3, "{j}");
    assert_eq!(j["entries"][2]["accountId"], "acc-3");
    // in text format, with the full name of the view and every update it reflects
    let out = ok(&view(&[
        "--model",
        "payments.transfers",
        "--id",
        "t-1",
        "--view",
        "overseer.views.v1.TransferWithLedger",
        "--as-of",
        "2024-01-02T04:00:01Z",
    ]));
    assert!(
        out.starts_with(
            "# view overseer.views.v1.TransferWithLedger of payments.transfers \"t-1\"\n"
        ),
        "{out}"
    );
    // the transfer, 2 entries, 1 asset (the moved entry is not part of it)
    assert!(
        out.contains("evidence: 4 updates (the newest of each record shown, "),
        "{out}"
    );
    assert!(out.contains("entries: [{"), "{out}");
    assert_eq!(
        out.matches("id: \"65e1f1c0a1b2c3d4e5f6000").count(),
        2,
        "{out}"
    );
    assert!(out.contains("status: TRANSFER_STATUS_COMPLETED"), "{out}");
    // with the content digest a failing verdict on this view names (the same on every
    // rebuild, another at another time)
    let digest_at = |as_of: &str| {
        let out = ok(&view(&joined_args(as_of)));
        let line = out
            .lines()
            .find(|l| l.starts_with("# content digest sha256:"))
            .unwrap_or_else(|| panic!("{out}"))
            .to_owned();
        assert_eq!(line.len(), "# content digest sha256:".len() + 64, "{line}");
        line
    };
    assert!(out.contains(&digest_at("2024-01-02T04:00:01Z")), "{out}");
    assert_ne!(
        digest_at("2024-01-02T04:00:01Z"),
        digest_at("2024-01-02T04:00:00.500Z")
    );

    // a model without a view message: its state as JSON
    let out = ok(&view(&["--model", "crm.customers", "--id", "c-1"]));
    assert!(
        out.contains("no view message for model \"crm.customers\""),
        "{out}"
    );
    assert!(out.contains("\"name\": \"Ada\""), "{out}");
    let j = json(&["--model", "crm.customers", "--id", "c-1"]);
    assert_eq!(j["name"], "Ada");
    assert_eq!(j["tier"], 2);

    // errors: non-zero exit, a message that says why, nothing on stdout
    let toy_at = |as_of: &str| {
        view(&[
            "--model", "toys", "--id", "toy-1", "--as-of", as_of, "--json",
        ])
    };
    fails(
        &view(&["--model", "toy", "--id", "toy-1"]),
        "unknown model \"toy\" (the config's models: toys, payments.transfers,",
    );
    fails(
        &view(&["--model", "toys", "--id", "toy-1", "--view", "Toyz"]),
        "no such view (known: ",
    );
    fails(
        &view(&["--model", "toys", "--id", "toy-1", "--view", "Toyz"]),
        "overseer.views.v1.Toy",
    );
    fails(
        &view(&[
            "--model",
            "toys",
            "--id",
            "toy-1",
            "--view",
            "TransferWithLedger",
        ]),
        "view overseer.views.v1.TransferWithLedger is a view of model \"payments.transfers\", not \"toys\"",
    );
    fails(
        &toy_at("2024-01-02T03:04:04.999Z"),
        "record \"toy-1\" of model \"toys\" did not exist at 2024-01-02T03:04:04.999000Z: \
         first update at 2024-01-02T03:04:05.000000Z",
    );
    fails(
        &toy_at("2024-01-02T03:04:08Z"),
        "record \"toy-1\" of model \"toys\" did not exist at 2024-01-02T03:04:08.000000Z: \
         it was deleted at 2024-01-02T03:04:08.000000Z",
    );
    fails(
        &view(&["--model", "toys", "--id", "toy-1"]),
        "it was deleted at 2024-01-02T03:04:08.000000Z",
    );
    fails(
        &view(&["--model", "toys", "--id", "toy-2"]),
        "no record \"toy-2\" of model \"toys\"",
    );
    for bad in ["tomorrow", "2024-01-02 03:04", "1704164645.5"] {
        let o = toy_at(bad);
        fails(&o, &format!("--as-of {bad:?}"));
        fails(&o, "RFC 3339");
        fails(&o, "milliseconds since the epoch");
    }
}
