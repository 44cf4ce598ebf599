//! The command line: every subcommand, for whichever checks the binary registered. Each
//! subcommand is a few lines over the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use overseer_ingestion::pipeline::Storage;
use overseer_prs::check::Registry;

use crate::config::Config;
use crate::engine::{self, Checks};
use crate::{replay, view};

#[derive(Parser)]
#[command(name = "overseer", version, about = "Real-time reconciliation engine")]
struct Cli<E: Subcommand> {
    #[command(subcommand)]
    cmd: Cmd<E>,
}

/// No subcommands beyond the engine's own.
#[derive(Subcommand, Debug)]
pub enum NoCommands {}

#[derive(Subcommand)]
enum Cmd<E: Subcommand> {
    #[command(flatten)]
    Engine(Engine),
    #[command(flatten)]
    Extra(E),
}

/// The engine's own subcommands.
#[derive(Subcommand)]
enum Engine {
    /// Ingest change events from the configured sources until stopped.
    Ingest {
        #[arg(long)]
        config: PathBuf,
        /// Drain file sources and exit (every source must be a file without `follow`).
        #[arg(long)]
        once: bool,
    },
    /// List a record's updates in time-travel order.
    History {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        model: String,
        #[arg(long)]
        id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a record, or a joined view of it, as of a time.
    View {
        #[arg(long)]
        config: PathBuf,
        /// The record's model (for `--view`, the view's subject model).
        #[arg(long)]
        model: String,
        #[arg(long)]
        id: String,
        /// RFC 3339 (`2024-01-02T03:04:05Z`) or epoch milliseconds; now by default.
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// A view message, full or short name (`TransferWithLedger`); the model's record
        /// view by default.
        #[arg(long, value_name = "NAME")]
        view: Option<String>,
        /// The message as protobuf-JSON, alone on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run the checks on the events topic (Kafka bus) until stopped.
    Prs {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ingest and run the checks in one process until stopped.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Rebuild an empty catalog from the object store alone.
    Reindex {
        #[arg(long)]
        config: PathBuf,
    },
    /// Re-run checks over a past window of history and write a report.
    Replay(replay::Args),
    /// Check the configuration, the registered checks and their views against the
    /// configured models, and the secrets the configuration names; list every problem.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
}

/// The whole `overseer` command line for the checks `register` registers: a team's binary
/// is this one call.
///
/// ```text
/// fn main() -> std::process::ExitCode {
///     overseer::main(|registry| {
///         // registry.check("fee_is_booked", fee_is_booked).grace(Duration::from_secs(2));
///     })
/// }
/// ```
pub fn main(register: impl Fn(&mut Registry) + Send + Sync + 'static) -> ExitCode {
    main_with(register, |cmd: NoCommands, _| match cmd {})
}

/// [`main`] with subcommands of the binary's own (`E`, a clap subcommand enum), which
/// `extra` runs (on a runtime of its own, if it needs one) with the registered checks.
pub fn main_with<E: Subcommand>(
    register: impl Fn(&mut Registry) + Send + Sync + 'static,
    extra: impl FnOnce(E, Checks) -> Result<()>,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "overseer=info,overseer_ingestion=info,overseer_sim=info,warn".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::<E>::parse();
    let checks = Checks::new(register);
    let result = match cli.cmd {
        Cmd::Extra(cmd) => extra(cmd, checks),
        Cmd::Engine(cmd) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run(cmd, checks))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM. The handlers are in place when this returns (a
/// signal from then on stops the process cleanly, not by the signal's default action).
/// Call it inside the Tokio runtime (it panics outside one).
pub fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: finishing in-flight batches");
        token.cancel();
    });
}

async fn run(cmd: Engine, checks: Checks) -> Result<()> {
    match cmd {
        Engine::Ingest { config, once } => {
            let cfg = Config::load(&config)?;
            let token = CancellationToken::new();
            cancel_on_signal(token.clone());
            let Some(storage) = crate::engine::open_unless_stopped(&cfg, &token).await? else {
                // `--once` promises a pass over the sources: a stop before it is a failure.
                if once {
                    bail!("stopped before the storage was open: nothing was ingested");
                }
                return Ok(());
            };
            if !once {
                // `/ready` says whether ingestion waits out a storage fault or a full disk.
                crate::engine::serve_metrics_at(
                    cfg.ingestion.ingest.metrics_addr.as_deref(),
                    "ingest.metrics_addr",
                )?;
            }
            let reports =
                overseer_ingestion::service::run(&cfg.ingestion, storage, once, token).await?;
            for (name, r) in reports {
                eprintln!(
                    "{name}: {} events, {} updates, {} duplicates, {} quarantined, {} segments",
                    r.events, r.updates, r.duplicates, r.quarantined, r.segments
                );
            }
        }
        Engine::History {
            config,
            model,
            id,
            json,
        } => {
            let cfg = Config::load(&config)?;
            let catalog = overseer_dal::config::open_catalog_reader(&cfg.catalog).await?;
            let entries = catalog.record_updates(&model, &id, i64::MAX).await?;
            if entries.is_empty() && catalog.master(&model, &id).await?.is_none() {
                bail!(
                    "no record {id:?} of model {model:?} in {}",
                    catalog.describe()
                );
            }
            for e in entries {
                let time = chrono::DateTime::from_timestamp_micros(e.event_time_us)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                    .unwrap_or_else(|| e.event_time_us.to_string());
                let op = e.op.as_str_name().trim_start_matches("OP_").to_lowercase();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event_time": time, "event_time_us": e.event_time_us, "op": op,
                            "source": e.source, "position": e.position,
                            "segment": e.loc.segment_seq, "offset": e.loc.offset, "length": e.loc.len,
                            "refs": e.refs,
                        })
                    );
                } else {
                    println!("{time}  {op:<7} {}  {}", e.source, e.position);
                }
            }
        }
        Engine::View {
            config,
            model,
            id,
            as_of,
            view,
            json,
        } => {
            view::run(
                view::Request {
                    config,
                    model,
                    id,
                    as_of,
                    view,
                    json,
                },
                &checks,
            )
            .await?
        }
        Engine::Prs { config } => {
            let cfg = Config::load(&config)?;
            let token = CancellationToken::new();
            cancel_on_signal(token.clone());
            engine::prs(cfg, &checks, token).await?;
        }
        Engine::Run { config } => {
            let cfg = Config::load(&config)?;
            let token = CancellationToken::new();
            cancel_on_signal(token.clone());
            engine::run(cfg, &checks, token).await?;
        }
        Engine::Reindex { config } => {
            let cfg = Config::load(&config)?;
            let storage = Storage::open(&cfg).await?;
            let report = overseer_ingestion::reindex::reindex(&*storage.store, &*storage.catalog)
                .await
                .context("reindex")?;
            eprintln!(
                "reindexed {} segments: {} updates ({} duplicates ignored, {} foreign keys skipped)",
                report.segments, report.updates, report.duplicates, report.foreign
            );
            let dal = overseer_ingestion::dal::dal_over(&cfg, &storage)?;
            let snaps = overseer_ingestion::reindex::rebuild_snapshots(&dal)
                .await
                .context("rebuilding snapshots")?;
            eprintln!(
                "rebuilt {} snapshots of {} records with {} or more updates{}",
                snaps.snapshots,
                snaps.records,
                dal.snapshot_every(),
                match (snaps.failed, snaps.dropped) {
                    (0, 0) => String::new(),
                    (f, d) => format!(
                        " ({f} records whose history does not fold have none; {d} snapshots \
                         the catalog refused)"
                    ),
                }
            );
        }
        Engine::Replay(args) => replay::run(args, &checks).await?,
        Engine::Validate { config } => crate::validate::run(&config, &checks).await?,
    }
    Ok(())
}
