#!/usr/bin/env bash
# Installs the Debian packages labelflow's lab, tests, demo and benchmarks use.
# Safe to run again: only missing packages are installed.
set -euo pipefail

packages=(
  iproute2 iptables nftables ethtool procps time iputils-ping   # the lab: namespaces, veth, rules, counters
  tcpdump tshark nfdump softflowd                   # interop: decoders and exporters nobody here wrote
  netsniff-ng pmacct python3-scapy                  # benchmarks: trafgen, uacctd, bench/scapy-capture.py
  strongswan-charon strongswan-swanctl libcharon-extra-plugins  # real IPsec in the lab (kernel-libipsec)
  chromium                                          # dashboard test (headless)
  clickhouse-server clickhouse-client               # the ClickHouse sink's tests and benchmark (own server processes)
  systemd                                           # systemd-analyze verify for the example units
  iperf3                                            # bench/probe.sh (d): TCP through the gateway
  ulogd2 conntrack                                  # bench/probe.sh (d): ulogd2 NFCT -> IPFIX, conntrack -F
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "labelflow: installing ${missing[*]} needs root (run with sudo)" >&2
    exit 1
  fi
  echo "labelflow: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
