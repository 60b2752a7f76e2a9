//! `egret`: one binary for the controller, the agent, the lab and the operator's CLI.

mod offline;
mod table;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "egret", version, about = "Egress gateway and egress firewall for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the CustomResourceDefinitions of Egret's kinds as YAML.
    Crds {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check manifests: exit 0 with a summary, or 1 with one line per problem.
    Validate {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Show what manifests would do: allocations, gateway nodes and steering rules.
    Plan(offline::PlanArgs),
    /// Translate Antrea and Cilium manifests into egret.dev manifests.
    Convert {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EGRET_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Crds { dir } => offline::crds(dir.as_deref()),
        Cmd::Validate { files } => offline::validate(&files),
        Cmd::Plan(args) => offline::plan(&args),
        Cmd::Convert { files } => offline::convert(&files),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
