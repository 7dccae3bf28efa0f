# Shared steps of the examples' lab.sh scripts (sourced, not run).
#
# The kernel lab itself (namespaces, veth, rules loading, traffic, counter reading) is
# `labelflow-lab` from the tests crate; this file only runs the binaries around it and
# compares what the collector reports with what the kernel counted.
#
# Environment:
#   LABELFLOW_BIN   directory holding labelflow-probe, labelflow-collector, labelflow-lab
#                   (default: $CARGO_TARGET_DIR/debug or target/debug, built if missing)
#   FIREWALL        iptables (default) or nft
#   KEEP=1          leave the lab up at the end (then: labelflow-lab down --lab $LAB)
#
# Set by a script before the steps:
#   LF_RULES_VARIANT   load rules$LF_RULES_VARIANT.$FIREWALL (e.g. `-libipsec`), without overlay
#   LF_PROBE_ARGS      array of extra probe arguments (e.g. --vici unix:///run/charon.vici)

set -euo pipefail

LF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FIREWALL=${FIREWALL:-iptables}

lf_die() {
    echo "example $EXAMPLE: $*" >&2
    exit 1
}

# Finds (or builds) the three binaries; sets PROBE, COLLECTOR, LABCLI.
lf_binaries() {
    [ "$(id -u)" -eq 0 ] || lf_die "needs root (network namespaces, NFLOG)"
    local dir=${LABELFLOW_BIN:-${CARGO_TARGET_DIR:-$LF_ROOT/target}/debug}
    if [ ! -x "$dir/labelflow-probe" ] || [ ! -x "$dir/labelflow-collector" ] || [ ! -x "$dir/labelflow-lab" ]; then
        [ -z "${LABELFLOW_BIN:-}" ] || lf_die "LABELFLOW_BIN=$dir lacks labelflow-probe, labelflow-collector or labelflow-lab"
        echo "== building labelflow-probe, labelflow-collector, labelflow-lab"
        (cd "$LF_ROOT" && cargo build --quiet -p labelflow-probe -p labelflow-collector -p labelflow-tests --bins)
    fi
    PROBE=$dir/labelflow-probe
    COLLECTOR=$dir/labelflow-collector
    LABCLI=$dir/labelflow-lab
}

# Checks that labelflow-lab has what this example uses (the features listed under "Status" in
# examples/README.md); arguments: `rules-file`, `counters-all`, `send`, `up-addr`.
lf_require_lab() {
    local missing=()
    for f in "$@"; do
        case $f in
            rules-file) "$LABCLI" rules --help | grep -q -- "--file" || missing+=("rules --file") ;;
            counters-all) "$LABCLI" counters --help | grep -q -- "--all" || missing+=("counters --all") ;;
            counters-zero) "$LABCLI" counters --help | grep -q -- "--zero" || missing+=("counters --zero") ;;
            send) "$LABCLI" send --help >/dev/null 2>&1 || missing+=("send") ;;
            ipsec) "$LABCLI" ipsec --help >/dev/null 2>&1 || missing+=("ipsec") ;;
            up-addr) "$LABCLI" up --help | grep -q -- "--addr" || missing+=("up --addr") ;;
        esac
    done
    if ((${#missing[@]})); then
        lf_die "this labelflow-lab lacks: ${missing[*]} (see \"Status\" in examples/README.md)"
    fi
}

# Builds the lab (namespaces LAB-inet, LAB-gw, LAB-lan), a work directory, and the cleanup.
lf_up() {
    WORK=$(mktemp -d "/tmp/labelflow-$EXAMPLE.XXXXXX")
    LAB="lfex$$"
    PROBE_PID="" COLLECTOR_PID=""
    trap lf_cleanup EXIT
    # shellcheck disable=SC2086 # LF_UP_ARGS: extra words for `labelflow-lab up`
    eval "$("$LABCLI" up --lab "$LAB" ${LF_UP_ARGS:-})"
    echo "== lab $LAB: $INET_NS, $GW_NS, $LAN_NS (work directory $WORK)"
}

lf_cleanup() {
    local rc=$?
    [ -z "$PROBE_PID" ] || kill "$PROBE_PID" 2>/dev/null || true
    [ -z "$COLLECTOR_PID" ] || kill "$COLLECTOR_PID" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then
        echo "lab kept: labelflow-lab down --lab $LAB; files in $WORK"
    else
        "$LABCLI" down --lab "$LAB" >/dev/null 2>&1 || true
        if [ $rc -eq 0 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
    fi
    exit $rc
}

# Loads the example's rules (and lab overlay, if any) into the gateway.
lf_rules() {
    local files=()
    case $FIREWALL in
        iptables|nft) ;;
        *) lf_die "FIREWALL must be iptables or nft, not $FIREWALL" ;;
    esac
    files=("$EXAMPLE_DIR/rules${LF_RULES_VARIANT:-}.$FIREWALL")
    if [ -z "${LF_RULES_VARIANT:-}" ] && [ -f "$EXAMPLE_DIR/lab-overlay.$FIREWALL" ]; then
        files+=("$EXAMPLE_DIR/lab-overlay.$FIREWALL")
    fi
    local args=()
    for f in "${files[@]}"; do args+=(--file "$f"); done
    "$LABCLI" rules --lab "$LAB" --firewall "$FIREWALL" "${args[@]}" load
    echo "== rules loaded ($FIREWALL): ${files[*]##*/}"
}

# Starts the collector and the probe inside the gateway namespace, and waits until the
# probe has bound its NFLOG groups ($1: comma-separated groups).
lf_start() {
    local groups=$1
    (cd "$WORK" && exec ip netns exec "$GW_NS" "$COLLECTOR" --config "$EXAMPLE_DIR/collector.toml" \
        >"$WORK/collector.log" 2>&1) &
    COLLECTOR_PID=$!
    ip netns exec "$GW_NS" "$PROBE" --config "$EXAMPLE_DIR/probe.toml" ${LF_PROBE_ARGS[@]+"${LF_PROBE_ARGS[@]}"} \
        >"$WORK/probe.log" 2>&1 &
    PROBE_PID=$!
    "$LABCLI" ready --lab "$LAB" --groups "$groups" --timeout 10 ||
        { cat "$WORK/probe.log" >&2; lf_die "the probe did not bind groups $groups"; }
    echo "== probe (pid $PROBE_PID) bound groups $groups; collector pid $COLLECTOR_PID"
}

# Stops counting and logging at once (the rules' base chains are emptied; counters stay),
# reads the kernel's counters into $WORK/kernel.txt (`KEY PACKETS BYTES`).
lf_freeze_counters() {
    "$LABCLI" rules --lab "$LAB" --firewall "$FIREWALL" --file "$EXAMPLE_DIR/rules${LF_RULES_VARIANT:-}.$FIREWALL" detach
    "$LABCLI" counters --lab "$LAB" --firewall "$FIREWALL" --all >"$WORK/kernel.txt"
}

# SIGTERM to the probe (it flushes its cache and sends the last records), then to the
# collector (it commits its open buckets); both must exit 0 within their grace periods.
lf_stop() {
    kill -TERM "$PROBE_PID"
    wait "$PROBE_PID" || lf_die "the probe exited with status $? (log: $WORK/probe.log)"
    PROBE_PID=""
    # The collector commits at least every second (store.commit_interval): give the last
    # datagrams time to arrive and be committed before asking it to stop.
    sleep 2
    kill -TERM "$COLLECTOR_PID"
    wait "$COLLECTOR_PID" || lf_die "the collector exited with status $? (log: $WORK/collector.log)"
    COLLECTOR_PID=""
    echo "== probe and collector stopped"
    grep -h -i -E "lost|gap|enobufs" "$WORK/probe.log" | tail -3 || true
}

# Runs `labelflow-collector report` on the example's database; extra arguments follow.
lf_report() {
    (cd "$WORK" && "$COLLECTOR" report --db "$WORK/labelflow.db" --last 1d "$@")
}

# Sums a CSV report per key column: prints `KEY PACKETS BYTES FLOWS`, sorted (spaces in a
# key, as in ESP security associations `esp A>B spi 0x...`, become `_`).
# $1: the key column's header name. Reads the CSV on stdin.
lf_csv_totals() {
    awk -F, -v key="$1" '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { k = $(col[key]); gsub(/ /, "_", k); p[k] += $(col["packets"]); b[k] += $(col["bytes"]); f[k] += $(col["flows"]) }
        END { for (k in p) printf "%s %d %d %d\n", k, p[k], b[k], f[k] }' | sort
}

# Compares the collector's totals ($1: file `KEY PACKETS BYTES ...`) with the kernel's
# counters ($2: file `KEY PACKETS BYTES`) for the kernel keys starting with $3 (the prefix is
# stripped before matching, e.g. `labelflow-count:`). Prints a table; returns non-zero on any
# difference, including a key only one side has.
lf_compare() {
    local rc=0
    awk -v strip="$3" '
        FNR == NR { if (index($1, strip) == 1) { k = substr($1, length(strip) + 1); kp[k] += $2; kb[k] += $3 } next }
        { cp[$1] = $2; cb[$1] = $3 }
        END {
            printf "%-28s %12s %14s %12s %14s\n", "", "kernel pkts", "kernel bytes", "report pkts", "report bytes"
            bad = 0
            for (k in kp) {
                ok = (kp[k] == cp[k] + 0 && kb[k] == cb[k] + 0) ? "ok" : "DIFFERS"
                if (ok != "ok") bad = 1
                printf "%-28s %12d %14d %12d %14d  %s\n", k, kp[k], kb[k], cp[k], cb[k], ok
            }
            for (k in cp) if (!(k in kp)) { printf "%-28s %12s %14s %12d %14d  %s\n", k, "-", "-", cp[k], cb[k], "NOT IN KERNEL"; bad = 1 }
            exit bad
        }' "$2" "$1" >"$WORK/compare.out" || rc=$?
    head -1 "$WORK/compare.out"
    tail -n +2 "$WORK/compare.out" | sort
    return "${rc:-0}"
}

# Prints `PACKETS BYTES` of one kernel counter key ($2) from a counters file ($1); 0 0 if absent.
lf_kernel() {
    awk -v k="$2" '$1 == k { p += $2; b += $3 } END { printf "%d %d\n", p, b }' "$1"
}

# Sums a per-protocol CSV report into `PROTO PACKETS BYTES FLOWS` with PROTO one of tcp, udp,
# icmp (the report may name protocols or number them; ICMPv6 counts as icmp).
lf_proto_totals() {
    lf_csv_totals protocol | awk '{ n = $1; if (n == "6") n = "tcp"; else if (n == "17") n = "udp"; else if (n == "1" || n == "58" || n == "icmpv6") n = "icmp";
        p[n] += $2; b[n] += $3; f[n] += $4 } END { for (k in p) printf "%s %d %d %d\n", k, p[k], b[k], f[k] }' | sort
}

# The demo's last step: serves the run's database (dashboard, JSON API, /metrics) from the
# root namespace, where a browser can reach it, until Ctrl-C; the EXIT trap then cleans up.
lf_serve_dashboard() {
    local http=${DEMO_HTTP:-127.0.0.1:8080}
    "$COLLECTOR" --config "$EXAMPLE_DIR/collector.toml" --db "$WORK/labelflow.db" \
        --listen 127.0.0.1:0 --http "$http" >"$WORK/dashboard.log" 2>&1 &
    COLLECTOR_PID=$!
    sleep 1
    kill -0 "$COLLECTOR_PID" 2>/dev/null || { cat "$WORK/dashboard.log" >&2; lf_die "the dashboard did not start (DEMO_HTTP=$http busy?)"; }
    echo
    echo "== dashboard: http://$http/   JSON: http://$http/api/report?by=label&last=1h   metrics: http://$http/metrics"
    echo "   (reports from the shell: $COLLECTOR report --db $WORK/labelflow.db --by tunnel)"
    echo "   Ctrl-C stops it and removes the lab."
    trap 'echo; echo "== stopping"; exit 0' INT TERM
    wait "$COLLECTOR_PID" || true
}
