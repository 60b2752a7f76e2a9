#!/usr/bin/env bash
# The main demo: builds Egret, brings up the lab (a whole cluster in network namespaces on this
# machine: a router, six nodes each running a real agent, a controller, pods and outside
# servers), applies the seed scenarios one after another, shows what the outside server sees
# from which pod, and tears everything down. Run as root on Linux (a root shell, no sudo
# needed: the script never calls it); a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "error: the lab creates network namespaces: run $0 as root" >&2
  exit 1
fi
# command:package pairs of what the lab and this script run.
need=()
for cmd in nft:nftables ip:iproute2 conntrack:conntrack sysctl:procps python3:python3 dig:dnsutils; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "error: cargo is required (a Rust toolchain, 1.95 or newer)" >&2
  exit 1
fi
cargo build --release --locked -p egret
egret=$PWD/target/release/egret
lab=demo

"$egret" lab down --name "$lab" >/dev/null 2>&1 || true
trap '"$egret" lab down --name "$lab"' EXIT

say() { printf '\n\033[1m=== %s\033[0m\n' "$*"; }
run() { echo "\$ egret $*"; "$egret" "$@"; }
seen() { # pod [target]
  printf '  %-20s -> %-9s sees %s\n' "$1" "${2:-db-a}" "$("$egret" lab whoami "$1" --to "${2:-db-a}" --name "$lab" 2>&1 || true)"
}
get() { sleep 0.3; "$egret" get egress --name "$lab"; }

say "Bring up the lab: 6 nodes (node-4..6 labelled network-role=egress-gateway), 7 pods"
run lab up --name "$lab"

say "Every pod resolves names through the lab's DNS server (203.0.113.53, zone test.)"
run lab exec --name "$lab" prod/web-1 -- dig +short alias.github.test
run lab exec --name "$lab" prod/web-1 -- getent hosts www.example.test

say "Without Egret objects every pod leaves with its node's IP"
seen prod/web-1; seen staging/web-1; seen default/client-1

say "Seed 002, highly available Egresses from a pool (Antrea's YAML, unchanged)"
run lab apply -f examples/seed-002-ha/egress.yaml --name "$lab"
seen prod/web-1; seen prod/web-2; seen staging/web-1; seen default/client-1
get
gw=$("$egret" get egress --name "$lab" -o json | python3 -c '
import json, sys
print(next(e["status"]["egressNode"] for e in json.load(sys.stdin)["items"] if e["metadata"]["name"] == "egress-prod-web"))')
probe=prod/web-2; [ "$gw" = node-2 ] && probe=prod/web-1
say "Power loss on $gw, the gateway of egress-prod-web: 10.10.0.11 moves to another node"
run lab kill-node "$gw" --name "$lab"
for _ in $(seq 1 40); do
  out=$("$egret" lab whoami "$probe" --timeout-ms 200 --name "$lab" 2>/dev/null || true)
  [ "$out" = 10.10.0.11 ] && break
  sleep 0.1
done
seen "$probe"
get
run lab restore-node "$gw" --name "$lab"
run lab delete -f examples/seed-002-ha/egress.yaml --name "$lab"

say "Seed 002, static egress IPs: node-4's and node-5's own addresses"
run lab apply -f examples/seed-002-static/egress.yaml --name "$lab"
seen prod/web-1; seen prod/payment-1; seen staging/web-1; seen default/client-1
get
run lab delete -f examples/seed-002-static/egress.yaml --name "$lab"

say "Seed 004, Cilium's CiliumEgressGatewayPolicy, unchanged (mediabot on node1 via node2)"
run lab apply -f examples/seed-004-cilium/policy.yaml --name "$lab"
seen default/mediabot-1; seen default/client-1
get
run lab delete -f examples/seed-004-cilium/policy.yaml --name "$lab"

say "Seed 004's other two ways: no egressIP (the gateway's own address), interface eth1 (its address, through it)"
run lab apply -f examples/gateway-node/cilium.yaml --name "$lab"
sleep 0.5; seen default/mediabot-1
get
run lab delete -f examples/gateway-node/cilium.yaml --name "$lab"
run lab apply -f examples/gateway-node/interface.yaml --name "$lab"
# The gateway's agent first publishes its eth1 address on its Node.
for _ in $(seq 1 40); do
  out=$("$egret" lab whoami default/mediabot-1 --timeout-ms 200 --name "$lab" 2>/dev/null || true)
  case "$out" in 192.168.100.*) break ;; esac
  sleep 0.1
done
seen default/mediabot-1
get
run lab delete -f examples/gateway-node/interface.yaml --name "$lab"

say "Seed 000: app=web reaches database A (203.0.113.5) as 198.51.100.100; other traffic unchanged"
run lab apply -f examples/seed-000-web-to-db/egress.yaml --name "$lab"
seen prod/web-1 db-a; seen prod/web-1 bad-host; seen default/malicious-1 db-a
get

say "Store change -> every node's datapath programmed"
run lab bench latency --name "$lab"

say "Tear down"
