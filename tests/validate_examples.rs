//! Start-up validation of the shipped example configurations: the payments checks fit the
//! models every `examples/*.toml` declares (the `asset` references of `ledger.entries`,
//! which the wallet check's multi-field join reads, and of `payments.transfers`, which the
//! asset lookup trigger reads), and removing one is caught, naming check, field and model.

use std::time::Duration;

use overseer_dal::view::Views;
use overseer_ingestion::config::Config;
use overseer_prs::check::Registry;
use overseer_prs::validate::validate;

fn payments_checks() -> Registry {
    let mut r = Registry::new();
    overseer_checks::register(&mut r, Duration::from_secs(1));
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
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let models = overseer_prs::service::models(&cfg);
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
              overseer.views.v1.WalletWithEntries field \"entries\" joins ledger.entries on \
              reference \"asset\", which [[models]] \"ledger.entries\" does not declare"],
            "{path:?}"
        );
        seen += 1;
    }
    assert_eq!(seen, 3, "compose, embedded, production");
}
