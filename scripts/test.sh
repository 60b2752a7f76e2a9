#!/usr/bin/env bash
# Runs every check and test of the project: formatting, clippy, and `cargo test` for the whole
# workspace, including the privileged network-namespace tests (they skip, saying why, when not
# run as root). Installs the system packages the privileged tests need when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for cmd in nft:nftables ip:iproute2 iperf3:iperf3; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: missing ${need[*]}; privileged tests will skip (run as root to install them)"
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Privileged tests must clean up after themselves, even when they fail.
left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^egret' || true)
if [ -n "$left" ]; then
  echo "error: network namespaces left behind by the tests: $left" >&2
  exit 1
fi

# Fuzz targets, briefly (scripts/fuzz.sh runs them longer); they need the nightly toolchain.
if cargo +nightly --version >/dev/null 2>&1; then FUZZ_SECONDS="${FUZZ_SECONDS:-10}" ./scripts/fuzz.sh; else echo "fuzz: skipped: no nightly toolchain (rustup toolchain install nightly)"; fi
