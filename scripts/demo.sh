#!/usr/bin/env bash
# The one-command demo: installs the Debian packages the lab needs, builds labelflow in release
# mode, and runs the ipsec-gateway example in network namespaces: ~30 s of ESP, decrypted
# tunnel traffic and other uplink traffic through one probe reading three NFLOG groups, into
# the collector. Prints the per-label, per-view and per-tunnel report checked against the
# kernel's own counters, then serves the dashboard until Ctrl-C, and removes the lab.
#
#   DEMO_SECONDS=30          how long to drive traffic
#   DEMO_HTTP=127.0.0.1:8080 where the dashboard listens
#   FIREWALL=nft             use the nftables ruleset instead of iptables
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "the demo builds network namespaces and NFLOG rules: run it as root (sudo $0)" >&2
  exit 1
fi
bash scripts/deps.sh
echo "== building (release)"
cargo build --release --quiet -p labelflow-probe -p labelflow-collector -p labelflow-tests --bins
target=${CARGO_TARGET_DIR:-$PWD/target}
DEMO=1 LABELFLOW_BIN="$target/release" exec bash examples/ipsec-gateway/lab.sh
