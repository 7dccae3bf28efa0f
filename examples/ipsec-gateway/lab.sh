#!/usr/bin/env bash
# Reproduces the ipsec-gateway example in network namespaces and checks the report against the
# kernel's own counters. Needs root. Usage: [FIREWALL=nft] [REPEAT=N] ./lab.sh
#
#   1. labelflow-lab builds the lab: Internet peer (also the tunnel's far end, playing the
#      remote subnet 10.99.0.0/24), the gateway, a LAN host.
#   2. labelflow-collector and labelflow-probe start in the gateway (probe.toml,
#      collector.toml); the probe binds its groups.
#   3. rules.iptables (or rules.nft) is loaded in the gateway, with the lab overlay that
#      recognises the played decrypted packets by their subnet.
#   4. labelflow-lab drives bounded traffic: tunnel traffic (UDP, TCP, ICMP, IPv4 and IPv6 in
#      nft) with each packet also sent as its ESP packet (one SPI per direction and family),
#      other uplink traffic both ways.
#   5. The rules are detached (counting and logging stop together), the kernel's counters read,
#      the probe stopped with SIGTERM (it flushes its flows), then the collector.
#   6. The collector's report is printed beside the kernel's counters; any difference fails.
EXAMPLE=ipsec-gateway
EXAMPLE_DIR=$(cd "$(dirname "$0")" && pwd)
. "$EXAMPLE_DIR/../lib.sh"

lf_binaries
lf_require_lab rules-file counters-all
lf_up
# The probe binds its groups before the rules exist: a packet counted while no listener is
# bound would be counted by the kernel and logged to nobody.
lf_start 1,2,3
lf_rules

if [ "${DEMO:-0}" = 1 ]; then
    # The one-command demo (scripts/demo.sh): rounds of the same mix for DEMO_SECONDS.
    echo "== traffic for ${DEMO_SECONDS:-30} s (labelflow-lab traffic --mix ipsec, in rounds)"
    end=$((SECONDS + ${DEMO_SECONDS:-30})) rounds=0
    while [ "$SECONDS" -lt "$end" ]; do
        "$LABCLI" traffic --lab "$LAB" --mix ipsec >/dev/null
        rounds=$((rounds + 1))
    done
    echo "   $rounds round(s) of the mix"
else
    echo "== traffic (labelflow-lab traffic --mix ipsec, ${REPEAT:-1}x)"
    "$LABCLI" traffic --lab "$LAB" --mix ipsec --repeat "${REPEAT:-1}"
fi

lf_freeze_counters
lf_stop

lf_report --by label --format csv | lf_csv_totals label >"$WORK/labels.txt"
lf_report --by view --format csv | lf_csv_totals view >"$WORK/views.txt"
lf_report --by tunnel --format csv | lf_csv_totals tunnel >"$WORK/tunnels.txt"

status=0
echo
echo "== per label: kernel counters (labelflow-count:LABEL) vs collector report"
lf_compare "$WORK/labels.txt" "$WORK/kernel.txt" "labelflow-count:" || status=1

read -r esp_p esp_b < <(lf_kernel "$WORK/kernel.txt" labelflow-count:esp)
read -r vpn_p vpn_b < <(lf_kernel "$WORK/kernel.txt" labelflow-count:vpn)
read -r oth_p oth_b < <(lf_kernel "$WORK/kernel.txt" labelflow-count:other)
read -r naive_p naive_b < <(lf_kernel "$WORK/kernel.txt" naive:wan)
read -r up_p up_b _ < <(awk '$1 == "uplink" { print $2, $3, $4 }' "$WORK/views.txt")
read -r rn_p rn_b _ < <(awk '$1 == "naive" { print $2, $3, $4 }' "$WORK/views.txt")

echo
echo "== the uplink on the wire (view uplink = esp + other) and the VPN's share"
printf "%-34s %12s %14s\n" "" packets bytes
printf "%-34s %12d %14d\n" "uplink (report, view uplink)" "${up_p:-0}" "${up_b:-0}"
printf "%-34s %12d %14d\n" "  esp: the tunnels on the wire" "$esp_p" "$esp_b"
printf "%-34s %12d %14d\n" "  other" "$oth_p" "$oth_b"
awk -v e="$esp_b" -v u="${up_b:-0}" 'BEGIN { if (u > 0) printf "VPN share of the uplink: %.1f %% of the bytes\n", 100 * e / u }'
if [ "${up_p:-0}" -ne $((esp_p + oth_p)) ] || [ "${up_b:-0}" -ne $((esp_b + oth_b)) ]; then
    echo "view uplink DIFFERS from kernel esp + other"; status=1
fi

echo
echo "== the naive per-interface count (everything netfilter sees on wan)"
printf "%-34s %12d %14d\n" "kernel naive:wan" "$naive_p" "$naive_b"
printf "%-34s %12d %14d\n" "report view naive (esp+vpn+other)" "${rn_p:-0}" "${rn_b:-0}"
printf "%-34s %12d %14d\n" "counted twice (vpn)" "$vpn_p" "$vpn_b"
if [ "$naive_p" -ne $((esp_p + vpn_p + oth_p)) ] || [ "$naive_b" -ne $((esp_b + vpn_b + oth_b)) ]; then
    echo "kernel naive:wan is not esp + vpn + other: a packet escaped classification"; status=1
fi
if [ "${rn_p:-0}" -ne "$naive_p" ] || [ "${rn_b:-0}" -ne "$naive_b" ]; then
    echo "view naive DIFFERS from kernel naive:wan"; status=1
fi

echo
echo "== per tunnel: on the wire (ESP, per SA) vs inside (inner subnets of tunnel hq)"
cat "$WORK/tunnels.txt"
read -r hq_esp_p hq_esp_b < <(lf_kernel "$WORK/kernel.txt" tunnel:hq:esp)
read -r hq_in_p hq_in_b < <(lf_kernel "$WORK/kernel.txt" tunnel:hq:inner)
read -r rep_in_p rep_in_b _ < <(awk '$1 == "hq" { print $2, $3, $4 }' "$WORK/tunnels.txt")
# The SAs the collector names after tunnel hq (its `peers`): their sum is hq on the wire.
read -r rep_esp_p rep_esp_b < <(awk '$1 ~ /^hq:/ { p += $2; b += $3 } END { printf "%d %d\n", p, b }' "$WORK/tunnels.txt")
printf "%-34s %12s %14s %12s %14s\n" "tunnel hq" "kernel pkts" "kernel bytes" "report pkts" "report bytes"
printf "%-34s %12d %14d %12d %14d\n" "  on the wire (ESP)" "$hq_esp_p" "$hq_esp_b" "$rep_esp_p" "$rep_esp_b"
printf "%-34s %12d %14d %12d %14d\n" "  inside (inner packets)" "$hq_in_p" "$hq_in_b" "${rep_in_p:-0}" "${rep_in_b:-0}"
overhead=$((hq_esp_b - hq_in_b))
if [ "$overhead" -ge 0 ] && [ "$hq_in_b" -gt 0 ]; then
    awk -v o="$overhead" -v i="$hq_in_b" 'BEGIN { printf "  encapsulation overhead: %d bytes (%.1f %% on top of the inner bytes)\n", o, 100 * o / i }'
else
    # The lab sends one ESP packet per inner packet, sized from it: never fewer bytes.
    echo "  encapsulation overhead: ESP bytes - inner bytes = $overhead: ESP and inner traffic do not pair up"
    status=1
fi
if [ "$rep_esp_p" -ne "$hq_esp_p" ] || [ "$rep_esp_b" -ne "$hq_esp_b" ] ||
   [ "${rep_in_p:-0}" -ne "$hq_in_p" ] || [ "${rep_in_b:-0}" -ne "$hq_in_b" ]; then
    echo "per-tunnel report DIFFERS from the kernel's tunnel:hq counters"; status=1
fi

echo
lf_report --by tunnel --format table || true
[ $status -eq 0 ] || lf_die "the report differs from the kernel's counters"
echo "example $EXAMPLE: OK"
[ "${DEMO:-0}" != 1 ] || lf_serve_dashboard
