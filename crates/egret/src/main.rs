//! `egret`: one binary for the controller, the agent, the lab and the operator's CLI.

/// `print!` through [`emit`].
macro_rules! out {
    ($($t:tt)*) => { $crate::emit(&format!($($t)*)) };
}
/// `println!` through [`emit`].
macro_rules! outln {
    ($($t:tt)*) => { $crate::emit(&format!("{}\n", format!($($t)*))) };
}

mod agent;
mod audit;
mod controller;
mod dns;
mod get;
mod heartbeat;
mod lab;
mod metrics;
mod objects;
mod offline;
mod publish;
mod serve;
mod snat;
mod table;
mod takeover;
mod trace;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "egret", version, about = "Egress gateway and egress firewall for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines on standard error: `text`, or `json` (one object per line, with the fields of
    /// the spans it is in, such as the agent's node).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRET_LOG").unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => fmt.json().with_current_span(false).with_span_list(true).init(),
    }
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
        #[command(flatten)]
        cluster: offline::ClusterArgs,
    },
    /// Show what manifests would do: allocations, gateway nodes and steering rules.
    Plan(offline::PlanArgs),
    /// Show what happens to one new connection from a pod: its Egress, gateway and egress IP,
    /// and the policy rule that allows or denies it.
    Trace(trace::TraceArgs),
    /// Show objects with their status, like `kubectl get`.
    Get {
        /// egress (eg), externalippools (eip), members, or datapath (a lab node's kernel).
        what: get::Resource,
        /// For members: the node whose view to show (default: the first that reported); for
        /// datapath: the node whose kernel to read.
        #[arg(long = "node")]
        node: Option<String>,
        /// The local store (default: the running lab's).
        #[arg(long, conflicts_with = "kubeconfig")]
        store: Option<PathBuf>,
        /// Read from the cluster of this kubeconfig instead of a store.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The lab whose store to read when --store is not given.
        #[arg(long, default_value = "egret")]
        name: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: get::GetOutput,
    },
    /// Create or update objects in a local store (all or nothing).
    Apply {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The local store.
        #[arg(long)]
        store: PathBuf,
    },
    /// Delete the objects named in manifests from a local store.
    Delete {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The local store.
        #[arg(long)]
        store: PathBuf,
    },
    /// A whole Egret cluster on this machine, in network namespaces.
    Lab(lab::LabArgs),
    /// Run a node's agent: program the datapath from the store, report hosted IPs.
    Agent(agent::AgentArgs),
    /// Run the controller: validate objects, allocate egress IPs, write status.
    Controller(controller::ControllerArgs),
    /// Translate Antrea and Cilium manifests into egret.dev manifests.
    Convert {
        /// Files or directories of YAML manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
}

/// Writes command output to stdout; a closed pipe (`egret get … | head`) ends the program
/// quietly instead of panicking like `print!` would.
pub fn emit(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing output: {e}");
        std::process::exit(1);
    }
}

/// The store of the lab called `name`.
fn lab_store(name: &str) -> PathBuf {
    PathBuf::from(lab::LABS_DIR).join(name).join("store")
}

/// Runs a daemon on a small multi-threaded runtime.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(fut)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let res = match cli.cmd {
        Cmd::Crds { dir } => offline::crds(dir.as_deref()),
        Cmd::Validate { files, cluster } => offline::validate(&files, &cluster),
        Cmd::Plan(args) => offline::plan(&args),
        Cmd::Trace(args) => trace::trace(&args),
        Cmd::Convert { files } => offline::convert(&files),
        Cmd::Controller(args) => {
            block_on(tracing::Instrument::instrument(controller::run(args), tracing::info_span!("controller")))
        }
        Cmd::Lab(args) => lab::run(args),
        Cmd::Agent(args) => agent::run(args).map(|()| ExitCode::SUCCESS),
        Cmd::Get { what, kubeconfig: Some(kc), output, .. } => get::get_from_cluster(what, &kc, output),
        Cmd::Get { what: get::Resource::Datapath, node, name, .. } => lab::datapath::get(&name, node.as_deref()),
        Cmd::Get { what: get::Resource::Members, node, store, name, output, .. } => {
            get::members(&store.unwrap_or_else(|| lab_store(&name)), node.as_deref(), output)
        }
        Cmd::Get { what, store, name, output, .. } => {
            get::get(what, &store.unwrap_or_else(|| lab_store(&name)), output)
        }
        Cmd::Apply { files, store } => get::apply(&files, &store),
        Cmd::Delete { files, store } => get::delete(&files, &store),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The arguments of every container of the install manifests, with `$(VAR)` references
    /// replaced by a plausible value.
    fn manifest_args(file: &str) -> Vec<Vec<String>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = serde_yaml_ng::Value::deserialize(doc).unwrap();
            let containers = &v["spec"]["template"]["spec"]["containers"];
            for c in containers.as_sequence().into_iter().flatten() {
                let args: Vec<String> = c["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        let a = a.as_str().unwrap();
                        a.replace("$(EGRET_NODE)", "node-1").replace("$(EGRET_HOST_IP)", "10.0.0.1")
                    })
                    .collect();
                out.push(args);
            }
        }
        out
    }
    use serde::Deserialize;

    #[test]
    fn the_install_manifests_run_commands_this_binary_accepts() {
        for file in ["agent.yaml", "controller.yaml"] {
            let all = manifest_args(file);
            assert!(!all.is_empty(), "{file}: no container");
            for args in all {
                let argv = std::iter::once("egret".to_string()).chain(args.clone());
                if let Err(e) = Cli::try_parse_from(argv) {
                    panic!("{file}: `egret {}` is refused:\n{e}", args.join(" "));
                }
            }
        }
    }
}
