//! Start-up validation of the shipped example configurations: the payments checks fit the
//! models every `examples/*.toml` declares (the `asset` references of `ledger.entries`,
//! which the wallet check's multi-field join reads, and of `payments.transfers`, which the
//! asset lookup trigger reads), and removing one is caught, naming check, field and model.

use overseer::Config;
use overseer_dal::view::Views;
use overseer_prs::check::Registry;
use overseer_prs::validate::validate;

fn payments_checks() -> Registry {
    let mut r = Registry::new();
    overseer_checks::register(&mut r);
    r
}

#[test]
fn every_example_config_fits_the_payments_checks() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{path:?}: {e:#}"));
        let models = cfg.runner().models;
        let problems = validate(&payments_checks(), &Views::builtin(), &models);
        assert!(problems.is_empty(), "{path:?}: {problems:#?}");
        // Without the entries' asset reference (as the examples had it), the wallet check's
        // join is caught.
        let mut models = models;
        models.get_mut("ledger.entries").unwrap().remove("asset");
        let problems = validate(&payments_checks(), &Views::builtin(), &models);
        let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            ["check \"wallet_balance_matches_entries\": view \
              overseer.views.v1.WalletWithTotals field \"entries\" joins ledger.entries on \
              reference \"asset\", which [[models]] \"ledger.entries\" does not declare"],
            "{path:?}"
        );
        seen += 1;
    }
    assert_eq!(seen, 3, "compose, embedded, production");
}

/// `overseer validate` exits 0 on every shipped example config (with the environment
/// variables they name for secrets set), and lists every problem otherwise.
#[test]
fn overseer_validate_accepts_every_example_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let validate = |path: &std::path::Path, env: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_overseer"));
        cmd.args(["validate", "--config", path.to_str().unwrap()])
            .current_dir(root);
        if env {
            for var in [
                "OVERSEER_CATALOG_URL",
                "PAYMENTS_PG_URL",
                "PD_ROUTING_KEY",
                "WEBHOOK_URL",
            ] {
                cmd.env(var, "set-for-validate");
            }
        }
        cmd.output().unwrap()
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(format!("{root}/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = validate(&path, true);
        assert!(
            out.status.success(),
            "{path:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        seen += 1;
    }
    assert_eq!(seen, 3);
    // A config naming a secret's variable that is not set, and a model without the
    // reference a join reads: both listed, exit non-zero.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(format!("{root}/examples/embedded.toml"))
        .unwrap()
        .replace(
            "transfer_id = \"transfer_id\", account_id = \"account_id\", asset = \"asset\"",
            "transfer_id = \"transfer_id\", account_id = \"account_id\"",
        )
        + "\n[escalation.pager]\nkind = \"pagerduty\"\nrouting_key_env = \"OVERSEER_TEST_UNSET_KEY\"\n";
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = validate(&bad, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("OVERSEER_TEST_UNSET_KEY is not set"),
        "{stdout}"
    );
    assert!(
        stdout.contains("joins ledger.entries on reference \"asset\""),
        "{stdout}"
    );
    // `overseer run` refuses the same configuration before it opens or ingests anything.
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args(["run", "--config", bad.to_str().unwrap()])
        .current_dir(work.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("OVERSEER_TEST_UNSET_KEY is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("joins ledger.entries on reference \"asset\""),
        "{stderr}"
    );
    assert!(
        !work.path().join("overseer-data").exists(),
        "nothing was opened or ingested"
    );
}
