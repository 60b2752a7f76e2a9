#!/usr/bin/env bash
# Runs every check and test of the project: formatting, clippy, `cargo test` for the whole
# workspace, the offline validation of the Kubernetes manifests (scripts/check-manifests.sh) and
# of the alerting rules (scripts/check-monitoring.sh).
#
# Run as root (a bare root shell is enough, no sudo): it installs what the tests use with
# apt-get and runs the privileged tests too (network namespaces, nftables, the lab), with
# `EGRET_PRIVILEGED_TESTS=1 cargo test --workspace --locked -- --include-ignored`.
# Not as root, it runs the ordinary tests only and says plainly that the privileged ones were
# not run (they are `#[ignore]`d, and fail rather than pass if forced without root).
set -euo pipefail
cd "$(dirname "$0")/.."

root=false
[ "$(id -u)" = 0 ] && root=true

# command:package pairs of what the tests, the lab and the checks run.
need=()
for cmd in nft:nftables ip:iproute2 bridge:iproute2 sysctl:procps iperf3:iperf3 python3:python3 conntrack:conntrack dig:dnsutils iptables:iptables; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
# The lab tests under real CNI plugins (`lab up --cni`).
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if $root && command -v apt-get >/dev/null; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: missing ${need[*]} (run as root to have them installed)"
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "error: cargo is required (a Rust toolchain, 1.95 or newer)" >&2
  exit 1
fi
# A toolchain installed without its components still needs rustfmt and clippy.
if command -v rustup >/dev/null && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
./scripts/check-manifests.sh
./scripts/check-monitoring.sh

egret_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^egret' | sort || true; }
if $root; then
  before=$(egret_namespaces)
  EGRET_PRIVILEGED_TESTS=1 cargo test --workspace --locked -- --include-ignored
  # Privileged tests must clean up after themselves, even when they fail. Only namespaces that
  # appeared during this run count: a lab someone else runs on this machine is not ours.
  left=$(comm -13 <(echo "$before") <(egret_namespaces) | tr '\n' ' ')
  if [ -n "${left// /}" ]; then
    echo "error: network namespaces left behind by the tests: $left" >&2
    exit 1
  fi
else
  cargo test --workspace --locked
  echo
  echo "NOTE: the privileged tests (network namespaces, nftables, the lab) were NOT run: they"
  echo "need root. Run ./scripts/test.sh as root to run them."
fi

# Fuzz targets, briefly (scripts/fuzz.sh runs them longer); they need the nightly toolchain.
# Every target `cargo fuzz list` names (manifest, gossip_open, nflog_datagram, dns_message), 8 s
# each: about 30 s of fuzzing in all.
if cargo +nightly --version >/dev/null 2>&1; then FUZZ_SECONDS="${FUZZ_SECONDS:-8}" FUZZ_BUILD="${FUZZ_BUILD:---dev}" ./scripts/fuzz.sh; else echo "fuzz: skipped: no nightly toolchain (rustup toolchain install nightly)"; fi
