//! The objects the agent and the controller act on: an event source feeding the index
//! (`egret_core::index`). The source is the local store (its changed files) or the Kubernetes
//! API (one watcher per kind, `egret_kube::Source`).

use anyhow::Context;
use egret_core::event::{Kind, ObjectRef};
use egret_core::index::Index;
use egret_core::planner::ClusterConfig;
use egret_kube::source::Update;
use egret_store::{Store, StoreSource};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{Receiver, channel};
use tracing::{info, warn};

/// Where objects come from (`--source`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// The local store directory (`--store`): the lab, the demo and single-machine tests.
    #[default]
    Store,
    /// The Kubernetes API (`--kubeconfig`, or the in-cluster service account).
    Kubernetes,
}

/// The options of a Kubernetes source, shared by the agent and the controller.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Kubeconfig file for `--source kubernetes` (default: in-cluster, then `$KUBECONFIG` or
    /// `~/.kube/config`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Also act on Antrea's `crd.antrea.io` Egress and ExternalIPPool objects (only once Antrea
    /// no longer acts on them itself: two systems would steer the same pods).
    #[arg(long)]
    pub antrea: bool,
    /// Also act on Cilium's `CiliumEgressGatewayPolicy` objects (same caution).
    #[arg(long)]
    pub cilium: bool,
    /// Watch and enforce NetworkPolicies (set by `egret agent --enforce-network-policy`).
    #[arg(skip)]
    pub network_policies: bool,
}

enum Feed {
    Store {
        source: StoreSource,
        /// The errors of the last poll, so each is logged once.
        errors: Vec<String>,
    },
    Kube(Receiver<Update>),
}

/// How many changes may wait between the watchers and the index.
const CHANGES_QUEUED: usize = 1024;

/// The source and the index it feeds.
pub struct Objects {
    feed: Feed,
    /// The index.
    pub index: Index,
    /// How far the source has come: the store's stamp, or the highest resourceVersion applied.
    pub stamp: u64,
    /// Whether the objects are complete enough to act on: with the store, once it has loaded
    /// without errors (until then a bad file's object is simply missing, and acting on that
    /// would, for instance, mark its Egresses invalid). The API server only serves objects its
    /// schema admitted, so a Kubernetes source is complete once listed.
    pub loaded_clean: bool,
    /// Objects of the Kubernetes source that do not parse, and why (the index keeps their last
    /// good version, if any).
    pub unreadable: BTreeMap<(Kind, ObjectRef), String>,
    /// With the Kubernetes source: per kind, the resourceVersion of the last change applied.
    pub versions: BTreeMap<Kind, u64>,
}

impl Objects {
    /// An index over `store`, filled by the first [`Objects::poll`].
    pub fn store(store: Store, config: ClusterConfig) -> Objects {
        Objects {
            feed: Feed::Store { source: StoreSource::new(store), errors: Vec::new() },
            index: Index::new(config, Index::core_kinds()),
            stamp: 0,
            loaded_clean: false,
            unreadable: BTreeMap::new(),
            versions: BTreeMap::new(),
        }
    }

    /// An index over the Kubernetes API: discovers the kinds to watch, then runs the watchers
    /// as a task of the current runtime, calling `wake` after each change so the caller polls.
    pub async fn kubernetes(
        client: kube::Client,
        args: &KubeArgs,
        pods_on_node: Option<String>,
        config: ClusterConfig,
        wake: impl Fn() + Send + 'static,
    ) -> anyhow::Result<Objects> {
        // Pods stream their listings: the index never receives (nor the source holds) a list of
        // every pod at once.
        let sc = egret_kube::SourceConfig {
            antrea: args.antrea,
            cilium: args.cilium,
            network_policies: args.network_policies,
            pods_on_node,
            stream_pods: true,
        };
        let source = egret_kube::Source::discover(client, sc).await?;
        let mut index = Index::new(config, source.kinds());
        if args.network_policies {
            index.enforce_network_policies();
        }
        // Bounded: while the index takes in a large listing, the watchers wait instead of
        // queueing every object (a queue the allocator would keep as resident memory).
        let (tx, rx) = channel(CHANGES_QUEUED);
        tokio::spawn(async move {
            let mut changes = source.updates();
            while let Some(v) = changes.next().await {
                if tx.send(v).await.is_err() {
                    return;
                }
                wake();
            }
        });
        info!("watching the Kubernetes API");
        Ok(Objects {
            feed: Feed::Kube(rx),
            index,
            stamp: 0,
            loaded_clean: true,
            unreadable: BTreeMap::new(),
            versions: BTreeMap::new(),
        })
    }

    /// Feeds what changed into the index, and tells whether anything did. With the store, a
    /// file that fails to load keeps its last good content there; its error is logged once.
    pub fn poll(&mut self) -> anyhow::Result<bool> {
        match &mut self.feed {
            Feed::Store { source, errors } => {
                let p = source.poll();
                let now: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
                if now != *errors {
                    for e in &now {
                        warn!("store: {e}; keeping that file's last good content");
                    }
                    *errors = now;
                }
                self.loaded_clean |= errors.is_empty();
                let changed = !p.changes.is_empty();
                for c in p.changes {
                    self.index.apply(c);
                }
                self.stamp = p.stamp;
                Ok(changed)
            }
            Feed::Kube(rx) => {
                let mut changed = false;
                loop {
                    match rx.try_recv() {
                        Ok(Update::Change(v)) => {
                            let seen = self.versions.entry(v.change.kind()).or_default();
                            *seen = (*seen).max(v.version);
                            self.index.apply(v.change);
                            self.stamp = self.stamp.max(v.version);
                            changed = true;
                        }
                        Ok(Update::Synced(kind)) => {
                            self.index.mark_synced(kind);
                            changed = true;
                        }
                        Ok(Update::Unreadable { kind, object, reason }) => {
                            match reason {
                                Some(why) => self.unreadable.insert((kind, object), why),
                                None => self.unreadable.remove(&(kind, object)),
                            };
                            changed = true;
                        }
                        Err(TryRecvError::Empty) => return Ok(changed),
                        Err(TryRecvError::Disconnected) => {
                            return Err(anyhow::anyhow!("the Kubernetes source stopped")).context("watching objects");
                        }
                    }
                }
            }
        }
    }
}
