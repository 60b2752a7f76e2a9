//! `egret lab logs [--node N] [--follow]`: the agents' audit logs, oldest first.

use super::state::LabState;
use anyhow::bail;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The audit log file of a node's agent in the lab.
pub fn audit_log(st: &LabState, node: &str) -> PathBuf {
    st.dir().join("audit").join(format!("{node}.log"))
}

/// A file's lines, and its rotated predecessors' before them (`.N` oldest ... `.1`).
fn history(path: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = (1..=64).map(|n| crate::audit::rotated(path, n)).take_while(|p| p.exists()).collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The `time` field of a record (RFC 3339 in UTC with a fixed precision, so it sorts as text).
fn time_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("time").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// Prints the audit logs of `node` (or every node, merged by time); with `follow`, keeps
/// printing new records until interrupted.
pub fn run(name: &str, node: Option<&str>, follow: bool) -> anyhow::Result<ExitCode> {
    let st = LabState::load(name)?;
    let nodes: Vec<&String> = match node {
        Some(n) if st.nodes.contains_key(n) => st.nodes.keys().filter(|k| *k == n).collect(),
        Some(n) => {
            bail!("no node {n:?} in lab {name} (nodes: {})", st.nodes.keys().cloned().collect::<Vec<_>>().join(", "))
        }
        None => st.nodes.keys().collect(),
    };
    let paths: Vec<PathBuf> = nodes.iter().map(|n| audit_log(&st, n)).collect();
    let mut lines: Vec<String> = paths.iter().flat_map(|p| history(p)).collect();
    // A stable sort keeps each file's order among equal times.
    lines.sort_by_cached_key(|l| time_of(l));
    let mut out = std::io::stdout().lock();
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut offsets: Vec<u64> = paths.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).collect();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for (p, off) in paths.iter().zip(offsets.iter_mut()) {
            let Ok(mut f) = std::fs::File::open(p) else { continue };
            let len = f.metadata().map_or(0, |m| m.len());
            if len < *off {
                *off = 0; // rotated
            }
            if len == *off {
                continue;
            }
            f.seek(SeekFrom::Start(*off))?;
            let mut buf = String::new();
            f.read_to_string(&mut buf)?;
            // Only whole lines; the rest is read next time.
            let whole = buf.rfind('\n').map_or(0, |i| i + 1);
            out.write_all(&buf.as_bytes()[..whole])?;
            out.flush()?;
            *off += whole as u64;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_come_first_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.log");
        std::fs::write(&p, "c\n").unwrap();
        std::fs::write(dir.path().join("n.log.1"), "b\n").unwrap();
        std::fs::write(dir.path().join("n.log.2"), "a1\na2\n").unwrap();
        assert_eq!(history(&p), vec!["a1", "a2", "b", "c"]);
    }
}
