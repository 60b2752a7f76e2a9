//! The objects the agent and the controller act on: the local store as an event source feeding
//! the index (`egret_core::index`).

use egret_core::index::Index;
use egret_core::planner::ClusterConfig;
use egret_store::{Store, StoreSource};
use tracing::warn;

/// The store source and the index it feeds.
pub struct StoreIndex {
    source: StoreSource,
    /// The index.
    pub index: Index,
    /// The store stamp of the last state fed into the index.
    pub stamp: u64,
    /// The errors of the last poll, so each is logged once.
    errors: Vec<String>,
    /// Whether the store has ever loaded without errors: until then a bad file's object is
    /// simply missing (acting on that would, for instance, mark its Egresses invalid).
    pub loaded_clean: bool,
}

impl StoreIndex {
    /// An index over `store`, filled by the first [`StoreIndex::poll`].
    pub fn new(store: Store, config: ClusterConfig) -> StoreIndex {
        StoreIndex {
            source: StoreSource::new(store),
            index: Index::new(config, Index::core_kinds()),
            stamp: 0,
            errors: Vec::new(),
            loaded_clean: false,
        }
    }

    /// Feeds what changed in the store into the index, and tells whether anything did. A file
    /// that fails to load keeps its last good content there; its error is logged once.
    pub fn poll(&mut self) -> bool {
        let p = self.source.poll();
        let errors: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        if errors != self.errors {
            for e in &errors {
                warn!("store: {e}; keeping that file's last good content");
            }
            self.errors = errors;
        }
        self.loaded_clean |= self.errors.is_empty();
        let changed = !p.changes.is_empty();
        for c in p.changes {
            self.index.apply(c);
        }
        self.stamp = p.stamp;
        changed
    }
}
