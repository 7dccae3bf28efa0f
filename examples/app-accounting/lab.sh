#!/usr/bin/env bash
# Reproduces the app-accounting example in network namespaces and checks the report against
# the kernel's own counters. Needs root. Usage: [FIREWALL=nft] [QUOTA_GB=20] ./lab.sh
#
# The lab's gateway namespace plays the seed's desktop: its uplink is `wan`, the application
# is whatever runs with group 4242, its published port is 21212. The hosts it talks to are in
# 10.99.0.0/24 (on the Internet peer); 192.0.2.1 is some other site this host also talks to.
EXAMPLE=app-accounting
EXAMPLE_DIR=$(cd "$(dirname "$0")" && pwd)
. "$EXAMPLE_DIR/../lib.sh"
APP_GID=4242
GW=192.0.2.2

lf_binaries
lf_require_lab rules-file counters-all send
lf_up
# The probe binds its groups before the rules exist: a packet counted while no listener is
# bound would be counted by the kernel and logged to nobody.
lf_start 1,2,3
lf_rules

echo "== traffic"
send() { "$LABCLI" send --lab "$LAB" "$@"; }
# The application's own connections (owner match, then CONNMARK for the replies).
send tcp  --from gw --src $GW --to inet --dst 10.99.0.1:443 --size 20000 --reply 60000 --gid $APP_GID
send udp  --from gw --src $GW:21212 --to inet --dst 10.99.0.7:3478 --count 30 --size 300 --gid $APP_GID
send ping --from gw --src $GW --dst 10.99.0.1 --count 5 --size 56 --gid $APP_GID
# Connections the Internet opens to the published port (marked on their first packet).
send tcp  --from inet --src 10.99.0.9 --to gw --dst $GW:21212 --size 5000 --reply 15000
send udp  --from inet --src 10.99.0.7:3478 --to gw --dst $GW:21212 --count 30 --size 200
# A peer of the application pings this host (the seed's `recent` list).
send ping --from inet --src 10.99.0.1 --dst $GW --count 4 --size 32
# Everything else (not the application).
send tcp  --from gw --src $GW --to inet --dst 192.0.2.1:80 --size 3000 --reply 90000
send udp  --from gw --src $GW:40000 --to inet --dst 192.0.2.1:53 --count 10 --size 60
send ping --from gw --src $GW --dst 192.0.2.1 --count 3 --size 56

lf_freeze_counters
lf_stop

lf_report --by label --format csv | lf_csv_totals label >"$WORK/labels.txt"
status=0
echo
echo "== per label: kernel counters (labelflow-count:LABEL) vs collector report"
lf_compare "$WORK/labels.txt" "$WORK/kernel.txt" "labelflow-count:" || status=1

if "$COLLECTOR" report --help | grep -q -- "--label"; then
    for dir in in out; do
        lf_report --by protocol --label "app-$dir" --format csv | lf_proto_totals >"$WORK/proto-$dir.txt"
        echo
        echo "== the application, $dir: kernel app:$dir:PROTO vs collector (label app-$dir by protocol)"
        lf_compare "$WORK/proto-$dir.txt" "$WORK/kernel.txt" "app:$dir:" || status=1
    done
else
    # This collector cannot filter a report by label yet: check the protocol split over all
    # labels instead (kernel app:in + app:out + rest, per protocol), and show the seed's six
    # counters from the kernel.
    echo
    echo "== the application in/out x tcp/udp/icmp (kernel counters, the seed's six figures)"
    grep "^app:" "$WORK/kernel.txt"
    awk '$1 ~ /^(app:(in|out)|rest):/ { n = split($1, k, ":"); p["proto:" k[n]] += $2; b["proto:" k[n]] += $3 }
         END { for (x in p) print x, p[x], b[x] }' "$WORK/kernel.txt" >"$WORK/kernel-proto.txt"
    lf_report --by protocol --format csv | lf_proto_totals >"$WORK/proto.txt"
    echo
    echo "== per protocol, all labels: kernel (app:in + app:out + rest) vs collector --by protocol"
    lf_compare "$WORK/proto.txt" "$WORK/kernel-proto.txt" "proto:" || status=1
fi

echo
echo "== per day (the 1d rollup) and the monthly quota"
lf_report --by view --bucket 1d --format table || status=1
read -r in_p in_b < <(lf_kernel "$WORK/kernel.txt" labelflow-count:app-in)
read -r out_p out_b < <(lf_kernel "$WORK/kernel.txt" labelflow-count:app-out)
awk -v i="$in_b" -v o="$out_b" -v q="${QUOTA_GB:-20}" 'BEGIN {
    printf "application: %d bytes in, %d bytes out\n", i, o
    printf "share of a %d GB monthly download quota: %.6f %%\n", q, 100 * i / (q * 1e9) }'

[ $status -eq 0 ] || lf_die "the report differs from the kernel's counters"
echo "example $EXAMPLE: OK"
