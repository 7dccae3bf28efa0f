#!/usr/bin/env bash
# Runs every labelflow test: formatting, lints, unit/property/interop tests, the kernel lab
# end-to-end tests (network namespaces; needs root), the fuzz targets over their seed corpus,
# and the example systemd units.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "labelflow tests build network namespaces and NFLOG rules: run as root (sudo $0)" >&2
  exit 1
fi

bash scripts/deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== build binaries (the end-to-end tests run them)"
cargo build --workspace --bins --quiet

echo "== cargo test"
cargo test --workspace --quiet -- --test-threads=2

echo "== fuzz targets (built on stable, run over their seed corpus)"
bash scripts/fuzz-smoke.sh

echo "== example rules and configs (iptables-restore --test, nft -c, --check-config)"
bash examples/check-rules.sh

echo "== example systemd units (systemd-analyze verify)"
bash examples/systemd/verify.sh
echo "labelflow: all tests passed"
