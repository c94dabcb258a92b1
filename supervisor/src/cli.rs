//! The command line: `run`, `validate`, `graph`, `cleanup`.
//!
//! Errors are typed per operation everywhere else and mapped to exit codes here, once:
//! 0 succeeded, 1 failed, 2 usage or configuration error (nothing was started),
//! 3 finished with partial results.

use crate::config::{self, ConfigError};
use crate::run::{self, manifest::RunStatus, RunError, RunOptions};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "livecalc-supervisor",
    version,
    about = "Run actuarial calculation pipelines (JSON DAGs of C++ and Python engines) over shared memory"
)]
pub struct Cli {
    /// Print a machine-readable JSON result on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a DAG and write its outputs and manifest.json into DIR.
    Run {
        dag: PathBuf,
        /// Output folder (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Worker processes per engine, overriding every node's `workers`.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
        workers: Option<u32>,
        /// Continue the interrupted run in DIR: completed chunks are kept, the rest computed.
        #[arg(long)]
        resume: bool,
    },
    /// Check a DAG without starting anything; lists every problem with its JSON path.
    Validate { dag: PathBuf },
    /// Print the DAG as a graph.
    Graph {
        dag: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Remove shared-memory segments left by supervisors that are no longer running.
    Cleanup,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

/// Everything that can end a command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cleanup: {0}")]
    Cleanup(std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 2,
            CliError::Run(RunError::Load { .. }) | CliError::Run(RunError::Resume(_)) => 2,
            CliError::Run(_) | CliError::Cleanup(_) => 1,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            CliError::Config(e) => serde_json::json!({
                "status": "invalid",
                "file": e.file.display().to_string(),
                "problems": e.problems.iter().map(|p| serde_json::json!({"path": p.path, "message": p.message})).collect::<Vec<_>>(),
            }),
            other => serde_json::json!({"status": "failed", "error": other.to_string()}),
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LIVECALC_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if std::env::var_os("LIVECALC_LOG_JSON").is_some() {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let json = cli.json;
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json {
                println!("{}", e.to_json());
            }
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Validate { dag } => {
            let d = config::load(&dag)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "status": "valid",
                        "dag_sha256": d.hash,
                        "sources": d.sources.iter().map(|s| serde_json::json!({"name": s.name, "rows": s.rows})).collect::<Vec<_>>(),
                        "nodes": d.nodes.iter().map(|n| serde_json::json!({"id": n.id, "type": n.type_name, "rows": n.rows, "chunks": n.chunk_count(), "workers": n.workers})).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "{}: valid ({} data source(s), {} engine(s): {})",
                    dag.display(),
                    d.sources.len(),
                    d.nodes.len(),
                    d.nodes
                        .iter()
                        .map(|n| n.id.as_str())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                );
            }
            Ok(0)
        }
        Command::Graph { dag, format } => {
            let d = config::load(&dag)?;
            print!(
                "{}",
                match format {
                    GraphFormat::Dot => crate::graph::dot(&d),
                    GraphFormat::Mermaid => crate::graph::mermaid(&d),
                }
            );
            Ok(0)
        }
        Command::Cleanup => {
            let removed = livecalc_protocol::shm::remove_stale().map_err(CliError::Cleanup)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"removed": removed.iter().map(|n| n.file_name()).collect::<Vec<_>>()})
                );
            } else {
                println!("removed {} stale segment(s)", removed.len());
                for n in removed {
                    println!("  /dev/shm/{}", n.file_name());
                }
            }
            Ok(0)
        }
        Command::Run {
            dag,
            out,
            workers,
            resume,
        } => {
            let mut d = config::load(&dag)?;
            if let Some(w) = workers {
                config::override_workers(&mut d, w);
            }
            let mut opts = RunOptions::new(out.clone());
            opts.resume = resume;
            let outcome = run::run(&d, &opts)?;
            let m = &outcome.manifest;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(m).unwrap_or_default());
            } else {
                match m.status {
                    RunStatus::Succeeded => eprintln!(
                        "run {} succeeded in {:.0} ms: {} output(s) in {}",
                        m.run_id,
                        m.wall_ms,
                        m.outputs.len(),
                        out.display()
                    ),
                    RunStatus::Partial | RunStatus::Failed => {
                        let word = if m.status == RunStatus::Partial {
                            "finished partial"
                        } else {
                            "failed"
                        };
                        eprintln!("run {} {word} after {:.0} ms:", m.run_id, m.wall_ms);
                        for e in &m.errors {
                            eprintln!("  - {e}");
                        }
                    }
                }
            }
            Ok(outcome.status().exit_code())
        }
    }
}
