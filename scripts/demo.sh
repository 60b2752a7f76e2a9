#!/usr/bin/env bash
# The main demo: builds Egret and walks through the seed scenarios.
# Today it shows what each scenario does (allocations, gateway nodes, steering rules) with
# `egret plan`; the in-namespace lab that sends real traffic is being built (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "error: cargo is required (a Rust toolchain, 1.95 or newer)" >&2
  exit 1
fi
cargo build --release --locked -p egret
egret=target/release/egret

show() {
  local title=$1 dir=$2; shift 2
  echo
  echo "=== $title"
  echo "\$ egret plan -f $dir $*"
  "$egret" plan -f "$dir" "$@"
}

show "Seed 002: highly available Egresses from a pool (Antrea YAML, unchanged)" examples/seed-002-ha
show "Seed 002: the same after the gateway of egress-prod-web dies" examples/seed-002-ha \
  --nodes "$("$egret" plan -f examples/seed-002-ha -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
dead = next(e["egressNode"] for e in p["egresses"] if e["name"] == "egress-prod-web")
print(",".join(f"node-{i}" for i in range(1, 7) if f"node-{i}" != dead))')"
show "Seed 002: static egress IPs on node-4 and node-5" examples/seed-002-static
show "Seed 002: the reference Egress and ExternalIPPool" examples/seed-002-reference
show "Seed 004: Cilium's CiliumEgressGatewayPolicy, unchanged" examples/seed-004-cilium
show "Seed 000: app=web reaches database A (203.0.113.5) as 198.51.100.100" examples/seed-000-web-to-db
echo
echo "=== Cilium and Antrea manifests converted to egret.dev"
"$egret" convert -f examples/seed-004-cilium/policy.yaml
