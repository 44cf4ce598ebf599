//! `overseer replay`: re-runs checks over a past window and writes a report.
//!
//! The work is `overseer_prs::replay`; this parses the window and flags, picks the checks
//! (the enabled ones, or those named with `--check`, shadow checks included), chooses the
//! sink (a report; with `--escalate` also the configured escalation policies) and shows a
//! progress bar on stderr when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use overseer_dal::update::Micros;
use overseer_prs::check::CheckSpec;
use overseer_prs::incident::Escalator;
use overseer_prs::replay::{Progress, ReplayOptions, ReportSink, Window, replay};
use overseer_prs::runner::Sink;
use overseer_prs::service::Fanout;

use crate::view::parse_as_of;

/// Report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Per-check counts, then every failure and error, for humans.
    Table,
    /// One JSON document; byte-identical for the same window and checks.
    Json,
    /// One row per failure, with a header.
    Csv,
}

/// `overseer replay`'s flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Start of the window (commit time, inclusive): RFC 3339 or epoch milliseconds.
    #[arg(long, value_name = "TIME")]
    from: String,
    /// End of the window (commit time, inclusive): RFC 3339 or epoch milliseconds.
    #[arg(long, value_name = "TIME")]
    to: String,
    /// A check to replay (repeatable; shadow checks too); every enabled check by default.
    #[arg(long = "check", value_name = "NAME")]
    checks: Vec<String>,
    /// Take only this model's updates from the window.
    #[arg(long, value_name = "M")]
    model: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write the report here instead of stdout.
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Send verdicts to the configured escalation policies too (by default nothing is
    /// escalated).
    #[arg(long)]
    escalate: bool,
    /// Memory for the window's records, folded once each in commit order and read by the
    /// runs from there, MiB (0: every run reads its records from the catalog).
    #[arg(long, value_name = "MIB", default_value_t = overseer_dal::timeline::DEFAULT_TIMELINE_BYTES >> 20)]
    timeline_mib: u64,
}

pub(crate) async fn run(args: Args, checks: &crate::engine::Checks) -> Result<()> {
    let from = parse_time("--from", &args.from)?;
    let to = parse_time("--to", &args.to)?;
    let window = Window::new(from, to)?;
    let cfg = Config::load(&args.config)?;
    if let Some(m) = &args.model
        && cfg.model(m).is_none()
    {
        let known: Vec<_> = cfg.models.iter().map(|m| m.name.as_str()).collect();
        bail!(
            "unknown model {m:?} (the config's models: {})",
            known.join(", ")
        );
    }
    let registry = checks.registry(&cfg)?;
    for name in &args.checks {
        registry.get(name)?;
    }
    let names = args.checks.clone();
    let include = move |s: &CheckSpec| {
        if names.is_empty() {
            s.enabled
        } else {
            names.contains(&s.name)
        }
    };
    // A replay reads beside a running engine; with --escalate it records incidents too.
    let dal = if args.escalate {
        overseer_ingestion::dal::open_dal_writing(&cfg).await?
    } else {
        overseer_ingestion::dal::open_dal(&cfg).await?
    };
    let report = Arc::new(ReportSink::new(
        &registry,
        &include,
        window,
        args.model.clone(),
    ));

    // With --escalate, verdicts also go to the incident state machine, whose outbox
    // delivers what they owe (drained before exit).
    let mut outbox = None;
    let sink: Arc<dyn Sink> = if args.escalate {
        let routes = overseer_prs::service::routes(&cfg.runner(), &registry)?;
        let checks = registry
            .iter()
            .filter(|s| include(s))
            .map(|s| s.name.clone());
        let (escalator, ob) = Escalator::new(dal.catalog().clone(), routes, checks)?;
        let stop = CancellationToken::new();
        outbox = Some((tokio::spawn(ob.run(stop.clone())), stop));
        Arc::new(Fanout(vec![report.clone(), Arc::new(escalator)]))
    } else {
        report.clone()
    };

    let options = ReplayOptions {
        model: args.model.clone(),
        timeline_bytes: args.timeline_mib.saturating_mul(1 << 20),
        ..ReplayOptions::default()
    };
    let mut bar = Bar::new(window);
    let summary = replay(
        &dal,
        &registry,
        &include,
        window,
        &options,
        &*sink,
        &mut |p| bar.update(p),
    )
    .await;
    bar.finish();
    if let Some((task, stop)) = outbox {
        stop.cancel();
        task.await.context("the escalation outbox")??;
    }
    let summary = summary?;
    let report = report.report(&summary);
    let text = match args.format {
        Format::Table => report.to_table(),
        Format::Json => report.to_json(),
        Format::Csv => report.to_csv(),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("writing the report to {}", path.display()))?,
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing to stdout")?,
    }
    Ok(())
}

/// A window bound, with the view command's parser (RFC 3339 or epoch ms), its error naming
/// the flag.
fn parse_time(flag: &str, s: &str) -> Result<Micros> {
    parse_as_of(s).map_err(|e| anyhow!("{flag}: {}", e.to_string().replacen("--as-of ", "", 1)))
}

/// The progress bar: how far through the window (by commit time), with the update rate and
/// an ETA; absent when stderr is not a terminal.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    window: Window,
    started: Instant,
}

impl Bar {
    fn new(window: Window) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            // Positions are milliseconds of commit time through the window.
            let len = ((window.to_us - window.from_us) / 1000).max(1) as u64;
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "replay [{bar:30}] {percent:>3}% {msg} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Bar {
            bar,
            window,
            started: Instant::now(),
        }
    }

    fn update(&mut self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(((p.at_us - self.window.from_us) / 1000).max(0) as u64);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{} updates ({:.0}/s), {} runs",
            p.updates,
            p.updates as f64 / secs,
            p.runs
        ));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
