//! `overseer view`: one record, or a joined view of it, as of a time.
//!
//! The view is the model's record view (`Views::record_view`) unless `--view` names
//! another; a model without any view message still works, its state is printed as JSON.
//! Output is a `#` header (which protobuf text format reads as comments) and the message in
//! text format, or with `--json` exactly one JSON document and nothing else on stdout, so it
//! pipes into `jq`. A record that did not exist at the time is an error that says why,
//! from its history.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use chrono::DateTime;
use prost_reflect::{DynamicMessage, SerializeOptions};

use crate::config::Config;
use overseer_dal::Dal;
use overseer_dal::update::{IndexEntry, Micros, Op};

/// What `overseer view` was asked for.
pub(crate) struct Request {
    pub(crate) config: PathBuf,
    pub(crate) model: String,
    pub(crate) id: String,
    /// `--as-of` as typed; now when absent.
    pub(crate) as_of: Option<String>,
    /// `--view`: a view name, full or short.
    pub(crate) view: Option<String>,
    pub(crate) json: bool,
}

pub(crate) async fn run(req: Request, checks: &crate::engine::Checks) -> Result<()> {
    let as_of_us = match &req.as_of {
        Some(s) => parse_as_of(s)?,
        None => chrono::Utc::now().timestamp_micros(),
    };
    let cfg = Config::load(&req.config)?;
    let (model, id) = (req.model.as_str(), req.id.as_str());
    if cfg.model(model).is_none() {
        let known: Vec<_> = cfg.models.iter().map(|m| m.name.as_str()).collect();
        if known.is_empty() {
            bail!(
                "unknown model {model:?}: {} configures no [[models]]",
                req.config.display()
            );
        }
        bail!(
            "unknown model {model:?} (the config's models: {})",
            known.join(", ")
        );
    }
    // The views the checks registered in code, beside the built-in and configured ones.
    let registry = checks.registry(&cfg)?;
    let dal = overseer_ingestion::dal::open_dal(&cfg)
        .await?
        .with_descriptor_sets(registry.descriptor_sets().iter().copied())?;
    let def = match &req.view {
        Some(name) => {
            let def = dal.views().get(name)?;
            if def.subject_model() != model {
                bail!(
                    "view {} is a view of model {:?}, not {model:?} (its --id names a record of {:?})",
                    def.name(),
                    def.subject_model(),
                    def.subject_model()
                );
            }
            Some(def)
        }
        None => dal.views().record_view(model),
    };
    let at = rfc3339(as_of_us);

    let mut out = Vec::new();
    match def {
        Some(def) => {
            let Some(v) = dal.view_dynamic(&def, id, as_of_us).await? else {
                return Err(absent(&dal, model, id, as_of_us).await);
            };
            if req.json {
                out = json_of(&v.view)?;
            } else {
                let n = v.evidence.len();
                writeln!(out, "# view {} of {model} {id:?}", def.name())?;
                writeln!(
                    out,
                    "# as of {at}, evidence: {n} {} (the newest of each record shown, of an \
                     aggregate its newest member's): {}",
                    if n == 1 { "update" } else { "updates" },
                    v.evidence
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                )?;
                // What a failing verdict on this view as of this time names as its
                // view_digest: the view reproduced is the view the check saw.
                match overseer_dal::view::digest(&v.view) {
                    Some(d) => writeln!(out, "# content digest {d}")?,
                    None => writeln!(out, "# content digest: none (the view has no JSON form)")?,
                }
                writeln!(out, "{:#}", v.view)?;
            }
        }
        None => {
            let r = dal.record(model, id, as_of_us).await?;
            let Some(state) = &r.state else {
                return Err(absent(&dal, model, id, as_of_us).await);
            };
            let text = serde_json::to_string_pretty(state)?;
            if !req.json {
                let n = r.updates as usize;
                writeln!(
                    out,
                    "# record of {model} {id:?} (no view message for model {model:?}: its state as JSON)"
                )?;
                writeln!(out, "# as of {at}, built from {n} {}", updates(n))?;
            }
            writeln!(out, "{text}")?;
        }
    }
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("writing to stdout")
}

/// The protobuf-JSON of a view (canonical options: proto3 JSON field names, default values
/// left out, enums by name, 64-bit integers as strings), pretty, with a final newline.
fn json_of(msg: &DynamicMessage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::pretty(&mut out);
    msg.serialize_with_options(&mut ser, &SerializeOptions::new())
        .context("serialising the view as JSON")?;
    out.push(b'\n');
    Ok(out)
}

/// Why the record `id` of `model` has no state at `as_of_us`, from its whole history.
async fn absent(dal: &Dal, model: &str, id: &str, as_of_us: Micros) -> anyhow::Error {
    let all = match dal.catalog().record_updates(model, id, Micros::MAX).await {
        Ok(all) => all,
        Err(e) => return anyhow!(e).context(format!("reading the history of {model} {id:?}")),
    };
    anyhow!(why_absent(
        &all,
        model,
        id,
        as_of_us,
        &dal.catalog().describe()
    ))
}

/// The message for a record with no state at `as_of_us`, given all its updates in
/// time-travel order.
fn why_absent(
    all: &[IndexEntry],
    model: &str,
    id: &str,
    as_of_us: Micros,
    catalog: &str,
) -> String {
    let at = rfc3339(as_of_us);
    let Some(first) = all.first() else {
        return format!("no record {id:?} of model {model:?} in {catalog}");
    };
    let record = format!("record {id:?} of model {model:?}");
    let Some(last) = all.iter().rev().find(|e| e.event_time_us <= as_of_us) else {
        return format!(
            "{record} did not exist at {at}: first update at {}",
            rfc3339(first.event_time_us)
        );
    };
    if last.op == Op::Delete {
        return format!(
            "{record} did not exist at {at}: it was deleted at {}",
            rfc3339(last.event_time_us)
        );
    }
    let n = all.iter().filter(|e| e.event_time_us <= as_of_us).count();
    format!(
        "{record} did not exist at {at}: its {n} {} up to then leave no state (the last: {} at {}, {}@{})",
        updates(n),
        op_name(last.op),
        rfc3339(last.event_time_us),
        last.source,
        last.position
    )
}

fn updates(n: usize) -> &'static str {
    if n == 1 { "update" } else { "updates" }
}

fn op_name(op: Op) -> String {
    op.as_str_name().trim_start_matches("OP_").to_lowercase()
}

pub(crate) use overseer_dal::update::rfc3339;

/// `--as-of`: an RFC 3339 time (fractional seconds and any offset; below microseconds is
/// cut off) or integer milliseconds since the epoch, as microseconds since the epoch.
pub(crate) fn parse_as_of(s: &str) -> Result<Micros> {
    let forms = "expected an RFC 3339 time such as 2024-01-02T03:04:05Z or \
                 2024-01-02T04:04:05.250+01:00, or integer milliseconds since the epoch such as \
                 1704164645000";
    if let Ok(ms) = s.parse::<i64>() {
        return ms
            .checked_mul(1000)
            .ok_or_else(|| anyhow!("--as-of {s:?}: epoch milliseconds out of range; {forms}"));
    }
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| anyhow!("--as-of {s:?} is not a time ({e}); {forms}"))?;
    Ok(t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-02T03:04:05Z
    const T: Micros = 1_704_164_645_000_000;

    #[test]
    fn as_of_forms() {
        for (s, us) in [
            ("2024-01-02T03:04:05Z", T),
            ("2024-01-02T03:04:05.123456Z", T + 123_456),
            ("2024-01-02T03:04:05.5Z", T + 500_000),
            // below microseconds is cut off
            ("2024-01-02T03:04:05.123456789Z", T + 123_456),
            ("2024-01-02T04:04:05.25+01:00", T + 250_000),
            ("2024-01-01T22:04:05-05:00", T),
            ("1704164645000", T),
            ("1704164645001", T + 1000),
            ("0", 0),
            ("1970-01-01T00:00:00Z", 0),
        ] {
            assert_eq!(parse_as_of(s).unwrap(), us, "{s}");
        }
    }

    #[test]
    fn bad_as_of_names_the_value_and_both_forms() {
        for s in [
            "yesterday",
            "2024-01-02",
            "2024-01-02T03:04:05",
            "1.5",
            "",
            "9223372036854775807",
        ] {
            let e = parse_as_of(s).unwrap_err().to_string();
            assert!(e.contains(&format!("{s:?}")), "{e}");
            assert!(e.contains("RFC 3339") && e.contains("epoch"), "{e}");
        }
    }

    #[test]
    fn rfc3339_has_micros() {
        assert_eq!(rfc3339(T + 7), "2024-01-02T03:04:05.000007Z");
    }

    fn entry(t: Micros, op: Op) -> IndexEntry {
        IndexEntry {
            source: "s".into(),
            position: t.to_string(),
            model: "m".into(),
            record_id: "r".into(),
            op,
            event_time_us: t,
            ingest_time_us: t,
            loc: overseer_dal::update::UpdateLoc {
                segment_seq: 0,
                offset: 0,
                len: 0,
            },
            refs: vec![],
        }
    }

    #[test]
    fn absence_is_explained() {
        let h = [
            entry(T, Op::Create),
            entry(T + 1, Op::Update),
            entry(T + 2, Op::Delete),
        ];
        let why = |h: &[IndexEntry], at| why_absent(h, "m", "r", at, "cat");
        assert_eq!(why(&[], T), "no record \"r\" of model \"m\" in cat");
        assert_eq!(
            why(&h, T - 1),
            "record \"r\" of model \"m\" did not exist at 2024-01-02T03:04:04.999999Z: \
             first update at 2024-01-02T03:04:05.000000Z"
        );
        assert_eq!(
            why(&h, T + 5),
            "record \"r\" of model \"m\" did not exist at 2024-01-02T03:04:05.000005Z: \
             it was deleted at 2024-01-02T03:04:05.000002Z"
        );
        let e = why(&h[..2], T + 5);
        assert!(e.contains("its 2 updates up to then leave no state"), "{e}");
        assert!(
            e.contains("update at 2024-01-02T03:04:05.000001Z, s@1704164645000001"),
            "{e}"
        );
    }
}
