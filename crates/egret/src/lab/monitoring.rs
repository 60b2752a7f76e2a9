//! `egret lab up --monitoring`: Debian's Prometheus inside the lab (the router's namespace,
//! which reaches every node on the node network), scraping every agent (and, with
//! `--api-server`, both controller replicas) each second and evaluating the alerting rules of
//! `deploy/monitoring/alerts.yaml`; `egret lab metrics QUERY` asks it.

use super::state::LabState;
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Prometheus listens, in the router's namespace.
pub const LISTEN: &str = "127.0.0.1:9099";
/// Where each agent serves `/metrics` (every address of its node).
pub const AGENT_PORT: u16 = 9090;
/// The first controller replica's `/metrics` port in the router's namespace (the next is +1).
pub const CONTROLLER_PORT: u16 = 9091;
/// The alerting rules, compiled in: the lab needs no checkout.
const ALERTS: &str = include_str!("../../../../deploy/monitoring/alerts.yaml");

/// prometheus.yml for the lab (pure).
pub fn config(st: &LabState, rules: &str) -> String {
    let mut agents = String::new();
    for n in st.nodes.values() {
        agents
            .push_str(&format!("      - targets: ['{}:{AGENT_PORT}']\n        labels: {{node: '{}'}}\n", n.ip, n.name));
    }
    let mut out = format!(
        "# Written by `egret lab up --monitoring`.\nglobal:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{rules}'\nscrape_configs:\n  - job_name: egret-agent\n    static_configs:\n{agents}"
    );
    // Two replicas with the API server double, the one controller of the store otherwise.
    let controllers = if st.api {
        format!("'127.0.0.1:{CONTROLLER_PORT}', '127.0.0.1:{}'", CONTROLLER_PORT + 1)
    } else {
        format!("'127.0.0.1:{CONTROLLER_PORT}'")
    };
    out.push_str(&format!("  - job_name: egret-controller\n    static_configs:\n      - targets: [{controllers}]\n"));
    out
}

/// Starts Prometheus in the router's namespace and waits until it is ready; returns its pid.
pub fn start(st: &LabState) -> anyhow::Result<u32> {
    if Command::new("prometheus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        bail!("--monitoring needs Prometheus: apt-get install prometheus");
    }
    let dir = st.dir().join("prometheus");
    std::fs::create_dir_all(dir.join("data"))?;
    let rules = dir.join("alerts.yaml");
    std::fs::write(&rules, ALERTS)?;
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, config(st, &rules.to_string_lossy()))?;
    let log = std::fs::File::options().create(true).append(true).open(st.log("prometheus"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &st.router, "prometheus"])
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={LISTEN}"))
        .arg("--storage.tsdb.retention.time=1d")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting prometheus")?;
    let pid = child.id();
    super::wait_until(Duration::from_secs(30), || Ok(get(st, "/-/ready").is_ok_and(|(code, _)| code == 200)))
        .with_context(|| format!("Prometheus did not become ready; see {}", st.log("prometheus").display()))?;
    Ok(pid)
}

/// An HTTP GET to the lab's Prometheus: status code and body.
fn get(st: &LabState, path: &str) -> anyhow::Result<(u16, String)> {
    let ns = egret_netns::Netns::attach(&st.router)?;
    ns.run(|| -> anyhow::Result<(u16, String)> {
        let addr: SocketAddr = LISTEN.parse()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
        Ok((code, body.to_string()))
    })?
}

/// One series of a query's result: its labels (as PromQL writes them) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `{name="v",...}` (empty for a scalar).
    pub labels: String,
    /// The value.
    pub value: f64,
}

/// Reads Prometheus' answer to an instant query (pure).
pub fn parse_query(body: &str) -> anyhow::Result<Vec<Sample>> {
    let v: serde_json::Value = serde_json::from_str(body).context("Prometheus answered something else than JSON")?;
    if v["status"] != "success" {
        bail!("{}: {}", v["errorType"].as_str().unwrap_or("error"), v["error"].as_str().unwrap_or("no reason given"));
    }
    let value = |p: &serde_json::Value| -> anyhow::Result<f64> {
        let s = p.get(1).and_then(|x| x.as_str()).context("a sample without a value")?;
        s.parse::<f64>().with_context(|| format!("{s:?} is not a number"))
    };
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let labels: Vec<String> = r["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or(""))).collect())
                    .unwrap_or_default();
                Ok(Sample { labels: format!("{{{}}}", labels.join(",")), value: value(&r["value"])? })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample { labels: String::new(), value: value(&data["result"])? }]),
        other => bail!("result type {other:?} is not shown (ask an instant vector or a scalar)"),
    }
}

/// `egret lab metrics QUERY`: an instant query against the lab's Prometheus.
pub fn query(lab: &str, q: &str) -> anyhow::Result<Vec<Sample>> {
    let st = LabState::load(lab)?;
    if st.prometheus_pid.is_none() {
        bail!("lab {lab:?} runs no Prometheus: start it with `egret lab up --monitoring`");
    }
    let path =
        format!("/api/v1/query?{}", form_urlencoded::Serializer::new(String::new()).append_pair("query", q).finish());
    let (code, body) = get(&st, &path)?;
    if code != 200 && code != 400 && code != 422 {
        bail!("Prometheus answered HTTP {code}");
    }
    parse_query(&body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vectors_and_scalars_are_read_and_errors_said() {
        let v = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"egress_ip":"10.10.0.11","node":"node-3"},"value":[1795370000.1,"2"]}]}}"#;
        assert_eq!(
            parse_query(v).unwrap(),
            vec![Sample { labels: r#"{egress_ip="10.10.0.11",node="node-3"}"#.into(), value: 2.0 }]
        );
        let s = r#"{"status":"success","data":{"resultType":"scalar","result":[1795370000.1,"0.35"]}}"#;
        assert_eq!(parse_query(s).unwrap(), vec![Sample { labels: String::new(), value: 0.35 }]);
        let e = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert!(parse_query(e).unwrap_err().to_string().contains("bad_data: parse error"));
        let m = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_query(m).unwrap_err().to_string().contains("matrix"));
    }
}
