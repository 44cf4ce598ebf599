//! Start-up validation: one test per kind of mismatch between a check's view and the
//! configured models, each asserting the problem names the check, the view field and the
//! model; every problem is collected; the runner refuses to start, listing them all; the
//! payments checks fit the payments models.

use std::collections::BTreeMap;
use std::sync::Arc;

use overseer_dal::Dal;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::view::Views;
use overseer_protos::views::{Asset, Toy, Transfer, TransferWithLedger, WalletWithEntries};
use overseer_prs::Error;
use overseer_prs::check::{Registry, Verdict};
use overseer_prs::runner::{Runner, RunnerOptions};
use overseer_prs::validate::{Models, Problem, validate};

fn pass_transfer(_: &TransferWithLedger) -> Verdict {
    Verdict::Pass
}

fn pass_wallet(_: &WalletWithEntries) -> Verdict {
    Verdict::Pass
}

/// The payments models, as the shipped examples declare them.
fn payments() -> Models {
    let refs = |r: &[&str]| {
        r.iter()
            .map(|n| ((*n).to_owned(), (*n).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    BTreeMap::from([
        ("payments.transfers".into(), refs(&["account_id", "asset"])),
        ("payments.assets".into(), refs(&[])),
        (
            "ledger.entries".into(),
            refs(&["transfer_id", "account_id", "asset"]),
        ),
        ("ledger.wallets".into(), refs(&[])),
    ])
}

fn without_model(model: &str) -> Models {
    let mut m = payments();
    m.remove(model);
    m
}

fn without_ref(model: &str, reference: &str) -> Models {
    let mut m = payments();
    m.get_mut(model).unwrap().remove(reference);
    m
}

/// The one problem of `registry` under `models`, checked to name check, field and model.
fn one_problem(
    registry: &Registry,
    models: &Models,
    check: &str,
    field: &str,
    model: &str,
) -> String {
    let problems = validate(registry, &Views::builtin(), models);
    let [p] = problems.as_slice() else {
        panic!("expected one problem, got {problems:#?}");
    };
    let text = p.to_string();
    assert_eq!(p.check, check);
    assert_eq!(p.field.as_deref(), Some(field), "{text}");
    assert_eq!(p.model.as_deref(), Some(model), "{text}");
    for part in [
        format!("check {check:?}"),
        format!("field {field:?}"),
        model.to_owned(),
    ] {
        assert!(text.contains(&part), "{part:?} not in: {text}");
    }
    text
}

fn transfer_check() -> Registry {
    let mut r = Registry::new();
    r.check("nets", pass_transfer);
    r
}

fn wallet_check() -> Registry {
    let mut r = Registry::new();
    r.check("wallet_balance_matches_entries", pass_wallet);
    r
}

#[test]
fn the_payments_views_fit_the_payments_models() {
    let mut r = transfer_check();
    r.check("wallet_balance_matches_entries", pass_wallet);
    r.check("toy", |_: &Toy| Verdict::Pass);
    let mut models = payments();
    models.insert("toys".into(), BTreeMap::new());
    assert_eq!(validate(&r, &Views::builtin(), &models), []);
}

#[test]
fn missing_subject_model() {
    let text = one_problem(
        &transfer_check(),
        &without_model("payments.transfers"),
        "nets",
        "transfer",
        "payments.transfers",
    );
    assert!(text.contains("no [[models]] entry configures"), "{text}");
    // A record view: the view's model, no field.
    let mut r = Registry::new();
    r.check("toy", |_: &Toy| Verdict::Pass);
    let problems = validate(&r, &Views::builtin(), &payments());
    let [p] = problems.as_slice() else {
        panic!("{problems:#?}")
    };
    assert_eq!(
        (p.check.as_str(), p.model.as_deref()),
        ("toy", Some("toys"))
    );
    assert!(
        p.to_string()
            .contains("view overseer.views.v1.Toy views model \"toys\""),
        "{p}"
    );
}

#[test]
fn missing_join_model() {
    // The lookup trigger's reference is still declared; only the joined model is missing.
    let text = one_problem(
        &transfer_check(),
        &without_model("ledger.entries"),
        "nets",
        "entries",
        "ledger.entries",
    );
    assert!(
        text.contains("joins model \"ledger.entries\", which no [[models]]"),
        "{text}"
    );
}

#[test]
fn undeclared_join_ref() {
    let text = one_problem(
        &transfer_check(),
        &without_ref("ledger.entries", "transfer_id"),
        "nets",
        "entries",
        "ledger.entries",
    );
    assert_eq!(
        text,
        "check \"nets\": view overseer.views.v1.TransferWithLedger field \"entries\" joins \
         ledger.entries on reference \"transfer_id\", which [[models]] \"ledger.entries\" does \
         not declare"
    );
}

#[test]
fn undeclared_multi_field_join_ref() {
    let text = one_problem(
        &wallet_check(),
        &without_ref("ledger.entries", "asset"),
        "wallet_balance_matches_entries",
        "entries",
        "ledger.entries",
    );
    assert_eq!(
        text,
        "check \"wallet_balance_matches_entries\": view overseer.views.v1.WalletWithEntries \
         field \"entries\" joins ledger.entries on reference \"asset\", which [[models]] \
         \"ledger.entries\" does not declare"
    );
    // Both keys missing: both reported.
    let mut m = without_ref("ledger.entries", "asset");
    m.get_mut("ledger.entries").unwrap().remove("account_id");
    assert_eq!(validate(&wallet_check(), &Views::builtin(), &m).len(), 2);
}

/// A team's view whose lookup path is not a field of its subject message.
const TEAM_PROTO: &str = r#"
syntax = "proto3";
package team.v1;
import "overseer/views.proto";

message TransferWithCurrency {
  overseer.views.v1.Transfer transfer = 1 [(overseer.views.v1.subject) = true];
  overseer.views.v1.Asset currency = 2 [(overseer.views.v1.lookup) = "currency"];
}

// An aggregate whose sum path is misspelt (the record view LedgerEntry has amount_minor).
message TransferNet {
  overseer.views.v1.Transfer transfer = 1 [(overseer.views.v1.subject) = true];
  overseer.views.v1.Totals entries = 2 [
    (overseer.views.v1.join_ref) = "transfer_id",
    (overseer.views.v1.aggregate) = {
      model: "ledger.entries", sum: "amount_minr",
      sign_by: "direction", add: "credit", subtract: "debit"
    }
  ];
}

// The payments example's TransferWithLedger with the asset lookup opted into triggering.
message TransferWithLedger {
  overseer.views.v1.Transfer transfer = 1 [(overseer.views.v1.subject) = true];
  repeated overseer.views.v1.LedgerEntry entries = 2 [(overseer.views.v1.join_ref) = "transfer_id"];
  overseer.views.v1.Asset asset = 3 [(overseer.views.v1.lookup) = "asset", (overseer.views.v1.lookup_ref) = "asset"];
}
"#;

/// The Rust type of `team.v1.TransferWithLedger`.
#[derive(Clone, PartialEq, prost::Message)]
struct TriggeredTransfer {
    #[prost(message, optional, tag = "1")]
    transfer: Option<overseer_protos::views::Transfer>,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<overseer_protos::views::LedgerEntry>,
    #[prost(message, optional, tag = "3")]
    asset: Option<Asset>,
}

impl prost::Name for TriggeredTransfer {
    const NAME: &'static str = "TransferWithLedger";
    const PACKAGE: &'static str = "team.v1";
}

/// A check over the team's view whose asset lookup triggers.
fn triggered_transfer_check() -> Registry {
    let mut r = Registry::new();
    r.views(team_descriptor_set());
    r.check("nets", |_: &TriggeredTransfer| Verdict::Pass);
    r
}

/// The Rust type of `team.v1.TransferWithCurrency` (what prost-build would generate).
#[derive(Clone, PartialEq, prost::Message)]
struct TransferWithCurrency {
    #[prost(message, optional, tag = "1")]
    transfer: Option<Transfer>,
    #[prost(message, optional, tag = "2")]
    currency: Option<Asset>,
}

impl prost::Name for TransferWithCurrency {
    const NAME: &'static str = "TransferWithCurrency";
    const PACKAGE: &'static str = "team.v1";
}

/// [`TEAM_PROTO`] compiled with its imports, as a team's build script embeds it.
fn team_descriptor_set() -> &'static [u8] {
    overseer_testkit::proto::compile_static(TEAM_PROTO)
}

/// The Rust type of `team.v1.TransferNet`.
#[derive(Clone, PartialEq, prost::Message)]
struct TransferNet {
    #[prost(message, optional, tag = "1")]
    transfer: Option<Transfer>,
    #[prost(message, optional, tag = "2")]
    entries: Option<overseer_protos::views::Totals>,
}

impl prost::Name for TransferNet {
    const NAME: &'static str = "TransferNet";
    const PACKAGE: &'static str = "team.v1";
}

#[test]
fn aggregate_path_not_a_field() {
    let mut r = Registry::new();
    r.views(team_descriptor_set());
    r.check("net", |_: &TransferNet| Verdict::Pass);
    let text = one_problem(&r, &payments(), "net", "entries", "ledger.entries");
    assert!(
        text.contains(
            "(aggregate) sum \"amount_minr\": no field of ledger.entries's record view \
             (overseer.views.v1.LedgerEntry) shows that record path"
        ),
        "{text}"
    );
    // The shipped wallet totals' paths are fields of LedgerEntry.
    let mut shipped = Registry::new();
    shipped.check("wallet", |_: &overseer_protos::views::WalletWithTotals| {
        Verdict::Pass
    });
    let problems = validate(&shipped, &Views::builtin(), &payments());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn lookup_path_not_a_field() {
    let mut r = Registry::new();
    r.views(team_descriptor_set());
    r.check("currency_known", |_: &TransferWithCurrency| Verdict::Pass);
    let text = one_problem(
        &r,
        &payments(),
        "currency_known",
        "currency",
        "payments.transfers",
    );
    assert!(
        text.contains(
            "looks up path \"currency\", which is not a field of the subject message \
             overseer.views.v1.Transfer"
        ),
        "{text}"
    );
    // Without the registered descriptor set the view is unknown: a problem too.
    let mut bare = Registry::new();
    bare.check("currency_known", |_: &TransferWithCurrency| Verdict::Pass);
    let problems = validate(&bare, &Views::builtin(), &payments());
    assert!(
        problems.len() == 1 && problems[0].to_string().contains("is not a known view"),
        "{problems:#?}"
    );
}

#[test]
fn lookup_trigger_without_subject_reference() {
    let text = one_problem(
        &triggered_transfer_check(),
        &without_ref("payments.transfers", "asset"),
        "nets",
        "asset",
        "payments.transfers",
    );
    assert_eq!(
        text,
        "check \"nets\": view team.v1.TransferWithLedger field \"asset\" triggers on \
         changes of payments.assets through payments.transfers on reference \"asset\", which \
         [[models]] \"payments.transfers\" does not declare"
    );
    // Declared, but read from another field than the lookup's path.
    let mut m = payments();
    m.get_mut("payments.transfers")
        .unwrap()
        .insert("asset".into(), "currency.code".into());
    let text = one_problem(
        &triggered_transfer_check(),
        &m,
        "nets",
        "asset",
        "payments.transfers",
    );
    assert!(
        text.contains("reads from field \"currency.code\", not the lookup path \"asset\""),
        "{text}"
    );
}

#[test]
fn custom_selection_reading_an_undeclared_reference() {
    let mut r = Registry::new();
    r.check("wallet_balance_matches_entries", pass_wallet)
        .select_reading(
            &[
                ("ledger.entries", "account_id"),
                ("ledger.entries", "asset"),
            ],
            |_| Vec::new(),
        );
    let problems = validate(
        &r,
        &Views::builtin(),
        &without_ref("ledger.entries", "asset"),
    );
    // The view's own join and the custom selection's declaration, both.
    let texts: Vec<String> = problems.iter().map(Problem::to_string).collect();
    assert_eq!(problems.len(), 2, "{texts:#?}");
    let sel = problems
        .iter()
        .find(|p| p.field.is_none())
        .expect("{texts:#?}");
    assert_eq!(sel.model.as_deref(), Some("ledger.entries"));
    assert_eq!(
        sel.to_string(),
        "check \"wallet_balance_matches_entries\": custom selection reads reference \"asset\" \
         of ledger.entries, which [[models]] \"ledger.entries\" does not declare"
    );
}

#[tokio::test]
async fn every_problem_is_listed_and_the_runner_refuses_to_start() {
    let mut r = triggered_transfer_check();
    r.check("wallet_balance_matches_entries", pass_wallet);
    let mut models = without_ref("ledger.entries", "asset");
    models
        .get_mut("payments.transfers")
        .unwrap()
        .remove("asset");
    let problems = validate(&r, &Views::builtin(), &models);
    assert_eq!(problems.len(), 2, "{problems:#?}");

    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let dal = Dal::new(catalog, Arc::new(MemoryStore::new()));
    let sources = |ms: &[&str]| {
        ms.iter()
            .map(|m| ((*m).to_owned(), vec!["src".to_owned()]))
            .collect::<BTreeMap<_, _>>()
    };
    let options = RunnerOptions {
        model_sources: sources(&[
            "payments.transfers",
            "payments.assets",
            "ledger.entries",
            "ledger.wallets",
        ]),
        models: Some(models),
        ..RunnerOptions::default()
    };
    let err = match Runner::new(dal.clone(), Arc::new(r), options.clone()) {
        Err(e) => e,
        Ok(_) => panic!("the runner started"),
    };
    let text = err.to_string();
    assert!(
        matches!(err, Error::Invalid(ref ps) if ps.len() == 2),
        "{text}"
    );
    for p in &problems {
        assert!(text.contains(&p.to_string()), "{text}");
    }
    // With the references declared, it starts.
    let mut r = transfer_check();
    r.check("wallet_balance_matches_entries", pass_wallet);
    let options = RunnerOptions {
        models: Some(payments()),
        ..options
    };
    assert!(Runner::new(dal, Arc::new(r), options).is_ok());
}
