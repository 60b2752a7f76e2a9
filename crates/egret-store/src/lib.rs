//! The local store: a file or directory of multi-document Kubernetes-style YAML holding Egret's
//! kinds, the Antrea and Cilium kinds Egret translates, and core/v1 Nodes, Namespaces and Pods.
//!
//! Reading never stops at the first bad document: every problem is reported with its file,
//! document index, kind and name, and the good documents are still returned.

mod read;
mod report;
mod source;
mod store;
mod watch;

pub use read::{Document, LoadError, Objects, Origin, read_paths, read_str};
pub use report::{AgentReport, MemberReport, now_ms};
pub use source::{Poll, StoreSource};
pub use store::{Applied, HasMeta, Key, Store, StoreError, StoreLock, write_atomic};
pub use watch::{StoreWatcher, WatchError, watch};
