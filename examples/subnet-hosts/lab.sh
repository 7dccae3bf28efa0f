#!/usr/bin/env bash
# Reproduces the subnet-hosts example in network namespaces and checks the report against the
# kernel's own counters, period by period. Needs root. Usage: [FIREWALL=nft] ./lab.sh
#
# The network is the lab's LAN, 198.51.100.0/24: hosts 198.51.100.2 and 198.51.100.3 (LAN
# namespace) and the gateway's 198.51.100.1. Traffic between them is internal: it is not
# logged (ipt_traffic's --nointernal) and the collector's exclude_internal drops any that
# would reach it.
#
# Read-and-reset, as `iptables -L -Z` or ipt_traffic's --clearonread: two periods of traffic;
# at the boundary the kernel's counters are read and zeroed, and the collector is asked for
# each period on its own. Nothing is lost in between, and nothing needs resetting in the
# collector: periods are time ranges of its buckets (5 s here).
EXAMPLE=subnet-hosts
EXAMPLE_DIR=$(cd "$(dirname "$0")" && pwd)
LF_UP_ARGS="--addr lan=198.51.100.3/24"
. "$EXAMPLE_DIR/../lib.sh"
H1=198.51.100.2
H2=198.51.100.3
INET=192.0.2.1
BUCKET=5

lf_binaries
lf_require_lab rules-file counters-all counters-zero send up-addr
lf_up
# The probe binds its groups before the rules exist: a packet counted while no listener is
# bound would be counted by the kernel and logged to nobody.
lf_start 1
lf_rules

send() { "$LABCLI" send --lab "$LAB" "$@"; }
rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
# Waits for the probe to expire the period's flows (idle_timeout 2s) and for the next bucket
# boundary, so that no flow spans two periods; prints the boundary (Unix seconds).
boundary() {
    sleep 3
    local now b
    now=$(date +%s)
    b=$(( (now / BUCKET + 1) * BUCKET ))
    sleep $(( b - now + 1 ))
    echo "$b"
}

start=$(( $(date +%s) / BUCKET * BUCKET ))
echo "== period 1"
send tcp  --from lan --src $H1 --to inet --dst $INET:80 --size 1000 --reply 30000
send tcp  --from lan --src $H1 --to inet --dst $INET:80 --size 1000 --reply 20000
send tcp  --from inet --src $INET --to lan --dst $H2:22 --size 4000 --reply 4000
send udp  --from lan --src $H2:40053 --to inet --dst $INET:53 --count 6 --size 40
send ping --from lan --src $H1 --dst $INET --count 3 --size 56
# Internal: a host to the gateway's LAN address. Not forwarded, so not even seen by the
# FORWARD rules; between subnets of a network routed here, `subnet:internal` would count it.
send udp  --from lan --src $H1:5000 --to gw --dst 198.51.100.1:5000 --count 5 --size 100
b1=$(boundary)
"$LABCLI" counters --lab "$LAB" --firewall "$FIREWALL" --all --zero >"$WORK/kernel-1.txt"

echo "== period 2"
send tcp  --from lan --src $H2 --to inet --dst $INET:443 --size 2000 --reply 50000
send udp  --from inet --src $INET:123 --to lan --dst $H1:123 --count 4 --size 48
send ping --from inet --src $INET --dst $H2 --count 2 --size 100
lf_freeze_counters
mv "$WORK/kernel.txt" "$WORK/kernel-2.txt"
lf_stop
end=$(( ($(date +%s) / BUCKET + 1) * BUCKET ))

status=0
for period in 1 2; do
    if [ $period = 1 ]; then from=$start to=$b1; else from=$b1 to=$end; fi
    range=(--from "$(rfc3339 "$from")" --to "$(rfc3339 "$to")")
    kern="$WORK/kernel-$period.txt"
    echo
    echo "== period $period: $(rfc3339 "$from") .. $(rfc3339 "$to")"
    (cd "$WORK" && "$COLLECTOR" report --db "$WORK/labelflow.db" "${range[@]}" --by label --format csv) |
        lf_csv_totals label >"$WORK/labels-$period.txt"
    lf_compare "$WORK/labels-$period.txt" "$kern" "labelflow-count:" || status=1
    (cd "$WORK" && "$COLLECTOR" report --db "$WORK/labelflow.db" "${range[@]}" --by host --format csv) |
        lf_csv_totals host >"$WORK/hosts-$period.txt"
    echo "-- per host (collector: bytes, packets, flows)"
    cat "$WORK/hosts-$period.txt"
    read -r in_p in_b < <(lf_kernel "$kern" subnet:in)
    read -r out_p out_b < <(lf_kernel "$kern" subnet:out)
    read -r h_p h_b < <(awk '{ p += $2; b += $3 } END { printf "%d %d\n", p, b }' "$WORK/hosts-$period.txt")
    echo "kernel: in $in_p packets $in_b bytes, out $out_p packets $out_b bytes; hosts total $h_p packets $h_b bytes"
    if [ "$h_p" -ne $((in_p + out_p)) ] || [ "$h_b" -ne $((in_b + out_b)) ]; then
        echo "per-host totals DIFFER from the kernel's subnet:in + subnet:out"; status=1
    fi
    if [ "$FIREWALL" = nft ]; then
        # The kernel's own per-host counters (dynamic sets host_in, host_out).
        awk '$1 ~ /^host_(in|out):/ { split($1, k, ":"); p[k[2]] += $2; b[k[2]] += $3 }
             END { for (h in p) printf "%s %d %d\n", h, p[h], b[h] }' "$kern" | sort >"$WORK/khosts-$period.txt"
        awk '{ print "host:" $0 }' "$WORK/khosts-$period.txt" >"$WORK/khosts-keys-$period.txt"
        lf_compare "$WORK/hosts-$period.txt" "$WORK/khosts-keys-$period.txt" "host:" || status=1
    fi
    echo "-- connections: kernel $(lf_kernel "$kern" subnet:connections | cut -d' ' -f1) (first packets);" \
         "internal, not counted: $(lf_kernel "$kern" subnet:internal | cut -d' ' -f1) packets"
    (cd "$WORK" && "$COLLECTOR" report --db "$WORK/labelflow.db" "${range[@]}" --by port --format table) || status=1
done

[ $status -eq 0 ] || lf_die "the report differs from the kernel's counters"
echo "example $EXAMPLE: OK"
