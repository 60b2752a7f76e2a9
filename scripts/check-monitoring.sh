#!/usr/bin/env bash
# Checks the alerting rules of deploy/monitoring/ with promtool (Debian's `prometheus` package,
# installed when missing): syntax (`promtool check rules`) and their unit tests
# (`promtool test rules alerts.test.yaml`). That every metric they use exists is a unit test of
# the egret crate (metrics.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: promtool missing; run as root to have Debian's prometheus package installed" >&2
    exit 1
  fi
  echo "installing: prometheus (for promtool)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

cd deploy/monitoring
promtool check rules alerts.yaml
promtool test rules alerts.test.yaml
