#!/usr/bin/env bash
# The one-command demo: installs the Debian packages the lab needs, builds labelflow in release
# mode, and runs the ipsec-gateway example in network namespaces over real IPsec: strongSwan
# negotiates a site tunnel and a road warrior behind a NAT (IKEv2, ESP in UDP 4500, rekeyed
# every 10 s), ~30 s of traffic through them and beside them go through one probe reading
# three NFLOG groups and naming each flow after its IKE connection, into the collector.
# Prints the per-label and per-connection report checked against the kernel's own counters
# and strongSwan's, then serves the dashboard until Ctrl-C, and removes the lab. Without
# strongSwan's charon it runs the played-IPsec variant (examples/ipsec-gateway/lab.sh).
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
script=examples/ipsec-gateway/lab-real.sh
if [ ! -x /usr/lib/ipsec/charon ]; then
  echo "== strongSwan's charon is missing: played IPsec instead (examples/ipsec-gateway/lab.sh)"
  script=examples/ipsec-gateway/lab.sh
fi
DEMO=1 LABELFLOW_BIN="$target/release" exec bash "$script"
