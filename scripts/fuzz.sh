#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer, nightly toolchain: manifest,
# gossip_open, nflog_datagram, dns_message) for a bounded
# time each, starting from the committed seeds in fuzz/seeds/. Fails on any crash, panic,
# timeout or memory blow-up; the input that caused it is left in fuzz/artifacts/TARGET/.
#   FUZZ_SECONDS=N   seconds per target (default 30)
#   FUZZ_TARGETS="a b"  only these targets (default: all)
#   FUZZ_BUILD="--dev"  extra `cargo fuzz run` flags (test.sh builds unoptimised: its short run
#                       needs a quick build more than fast executions)
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "error: the nightly toolchain is required (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cd fuzz && cargo +nightly fuzz list)}"
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz: $t for ${secs}s"
  # New inputs go to fuzz/corpus/ (ignored by git); the seeds are only read. libFuzzer's
  # per-input progress lines are filtered out; its exit status decides.
  set +e
  # shellcheck disable=SC2086
  (cd fuzz && cargo +nightly fuzz run ${FUZZ_BUILD:-} "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) 2>&1 |
    grep -Ev '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" != 0 ]; then
    echo "error: fuzz target $t failed (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz: every target ran ${secs}s without a crash"
