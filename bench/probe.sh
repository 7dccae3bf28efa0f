#!/usr/bin/env bash
# labelflow-probe benchmarks, side by side with its peers, in one run (needs root):
#   (a) replay of a generated capture: labelflow-probe --replay vs softflowd -r (packets/s, peak RSS)
#   (b) live NFLOG through the lab gateway at increasing trafgen rates: highest rate with zero
#       loss and CPU% there, labelflow-probe (all groups, one process) vs pmacct uacctd (one
#       process per group, uacctd_threshold 64)
#   (c) memory per flow with 1M live flows (replay with long timeouts, peak RSS)
#   (d) a TCP transfer (iperf3) through the lab gateway, masqueraded and marked: throughput
#       without a probe, with the conntrack source and with the NFLOG source; probe CPU per GB
#       and exactness against nftables counters; then ulogd2 NFCT -> IPFIX on the same traffic
#
# Environment: CT_SECONDS (5, per (d) step), CT_CONNS (10000, (d) connection burst), PACKETS (2000000), FLOWS (5000), RATES ("50000 100000 200000 300000 max"),
# STEP_SECONDS (3), MEM_FLOWS (1000000), BIN_DIR (target/release), SKIP ("" or e.g. "b c"),
# PROBE_ARGS (extra probe flags for (b), e.g. "--queue-threshold 256"),
# TOOLS ("labelflow softflowd uacctd": leave one out to skip its rows).
# Every step is bounded with timeout(1); the whole run stays well under 10 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BIN_DIR:-$TARGET/release}
PACKETS=${PACKETS:-2000000}
FLOWS=${FLOWS:-5000}
RATES=${RATES:-"50000 100000 200000 300000 max"}
STEP_SECONDS=${STEP_SECONDS:-3}
MEM_FLOWS=${MEM_FLOWS:-1000000}
SKIP=${SKIP:-}
TOOLS=${TOOLS:-"labelflow softflowd uacctd"}
CT_SECONDS=${CT_SECONDS:-5}
CT_CONNS=${CT_CONNS:-10000}
PROBE=$BIN_DIR/labelflow-probe
LABBIN=$BIN_DIR/labelflow-lab
GEN=$BIN_DIR/labelflow-gen-capture
TIME=/usr/bin/time
WORK=$(mktemp -d /tmp/labelflow-bench.XXXXXX)
LABNAME=bench$$
PIDS=()

say() { printf '%s\n' "$*" >&2; }
die() { say "bench/probe.sh: $*"; exit 1; }

cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    [ -x "$LABBIN" ] && "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, NFLOG)"
for t in softflowd uacctd trafgen "$TIME"; do
    command -v "$t" >/dev/null || die "missing $t (apt-get install softflowd pmacct netsniff-ng time)"
done
use() { case " $TOOLS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ ! -x "$LABBIN" ] || [ ! -x "$GEN" ]; then
    say "building labelflow-lab and labelflow-gen-capture (release) into $TARGET ..."
    (cd "$ROOT" && cargo build --release -q -p labelflow-tests --bins)
fi
if use labelflow && [ ! -x "$PROBE" ]; then
    say "building labelflow-probe (release) into $TARGET ..."
    (cd "$ROOT" && cargo build --release -q -p labelflow-probe --bins)
fi
if use labelflow; then
    [ -x "$PROBE" ] || die "no $PROBE: run cargo build --release --workspace --bins first"
fi

skip() { case " $SKIP " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# `/usr/bin/time -v` report -> "wall_seconds max_rss_kb cpu_percent"
time_fields() {
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; wall = s }
        /Maximum resident set size/ { rss = $2 }
        /Percent of CPU/ { cpu = $2; sub("%", "", cpu) }
        END { printf "%s %s %s\n", wall, rss, cpu }' "$1"
}

# Start a flow sink (decodes IPFIX/v9 with netflow_parser); prints its pid.
start_sink() { # ns|- addr out
    # Own stdio: a background job holding the $(...) pipe would block the caller.
    if [ "$1" = - ]; then
        "$LABBIN" sink --bind "$2" --out "$3" </dev/null >/dev/null 2>>"$WORK/sink.err" &
    else
        "$LABBIN" sink --ns "$1" --bind "$2" --out "$3" </dev/null >/dev/null 2>>"$WORK/sink.err" &
    fi
    PIDS+=($!)
    echo $!
}
stop_pid() { # pid signal
    kill -"$2" "$1" 2>/dev/null || true
    timeout 20 tail --pid="$1" -f /dev/null || { kill -KILL "$1" 2>/dev/null || true; }
}
json_num() { # file key -> number (top-level key)
    sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$1" | head -1
}

printf '\n== labelflow-probe benchmarks (%s, %s cores) ==\n' "$(uname -r)" "$(nproc)"

# ---------------------------------------------------------------- (a) replay
if ! skip a; then
    CAP=$WORK/mix.pcap
    say "(a) generating $PACKETS packets / $FLOWS flows ..."
    timeout 120 "$GEN" --packets "$PACKETS" --flows "$FLOWS" --out "$CAP" 2>"$WORK/gen.log" || die "capture generation failed: $(cat "$WORK/gen.log")"
    printf '\n(a) replay of %s packets, %s flows (%s MB, mixed TCP/UDP/ICMP/ESP, IPv4+IPv6)\n' \
        "$PACKETS" "$FLOWS" "$(( $(stat -c %s "$CAP") / 1000000 ))"
    printf '%-18s %12s %10s %12s %10s %12s\n' tool seconds pkts/s peak_RSS_kB flows packets
    # Warm the page cache so neither tool pays the disk.
    cat "$CAP" >/dev/null

    if use labelflow; then
    S=$(start_sink - 127.0.0.1:47391 "$WORK/a-probe.json")
    # Unpaced (--max-rate 0), as softflowd sends: the sink's buffer holds the 5000 records, and
    # the default pacing would add the flush's 0.1 s to the replay time.
    timeout 120 "$TIME" -v -o "$WORK/a-probe.time" "$PROBE" --replay "$CAP" --label x \
        --max-rate 0 --export ipfix://127.0.0.1:47391 >"$WORK/a-probe.log" 2>&1 || say "labelflow-probe replay failed: $(tail -3 "$WORK/a-probe.log")"
    stop_pid "$S" TERM
    read -r w r _ < <(time_fields "$WORK/a-probe.time")
    printf '%-18s %12s %10s %12s %10s %12s\n' labelflow-probe "$w" "$(awk -v p="$PACKETS" -v w="$w" 'BEGIN{ if (w > 0) printf "%d", p / w; else print "-" }')" "$r" \
        "$(json_num "$WORK/a-probe.json" flows)" "$(json_num "$WORK/a-probe.json" packets)"
    fi

    if use softflowd; then
    S=$(start_sink - 127.0.0.1:47392 "$WORK/a-softflowd.json")
    # softflowd: no -c (it hangs after the file with it); -v 10 = IPFIX; -d stays in foreground.
    timeout 120 "$TIME" -v -o "$WORK/a-softflowd.time" softflowd -d -r "$CAP" -v 10 -n 127.0.0.1:47392 \
        >"$WORK/a-softflowd.log" 2>&1 || say "softflowd failed: $(tail -3 "$WORK/a-softflowd.log")"
    stop_pid "$S" TERM
    read -r w r _ < <(time_fields "$WORK/a-softflowd.time")
    printf '%-18s %12s %10s %12s %10s %12s\n' softflowd "$w" "$(awk -v p="$PACKETS" -v w="$w" 'BEGIN{ if (w > 0) printf "%d", p / w; else print "-" }')" "$r" \
        "$(json_num "$WORK/a-softflowd.json" flows)" "$(json_num "$WORK/a-softflowd.json" packets)"
    fi
    rm -f "$CAP"
fi

# ---------------------------------------------------------------- (b) live NFLOG
cpu_ticks() { # pids... -> utime+stime ticks summed
    local t=0 p
    for p in "$@"; do
        if [ -r "/proc/$p/stat" ]; then
            t=$(( t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat") ))
        fi
    done
    echo "$t"
}

# One step: tool (labelflow|uacctd), rate (pps or max). Prints a result row; returns 0 if lossless.
live_step() {
    local tool=$1 rate=$2 n pids=() sinks=() outs=() g
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
    eval "$("$LABBIN" up --lab "$LABNAME")"
    "$LABBIN" trafgen-conf --lab "$LABNAME" >"$WORK/trafgen.cfg"
    if [ "$tool" = labelflow ]; then
        sinks+=("$(start_sink "$GW_NS" 127.0.0.1:4739 "$WORK/b-sink.json")"); outs+=("$WORK/b-sink.json")
        # shellcheck disable=SC2086 # PROBE_ARGS: extra words for the probe
        ip netns exec "$GW_NS" "$PROBE" --group 1=esp --group 2=vpn --group 3=other \
            --export ipfix://127.0.0.1:4739 ${PROBE_ARGS:-} >"$WORK/b-probe.log" 2>&1 &
        pids+=($!); PIDS+=($!)
    else
        for g in 1 2 3; do
            sinks+=("$(start_sink "$GW_NS" "127.0.0.1:474$g" "$WORK/b-sink$g.json")"); outs+=("$WORK/b-sink$g.json")
            cat >"$WORK/uacctd$g.conf" <<EOF
daemonize: false
uacctd_group: $g
uacctd_threshold: 64
plugins: nfprobe
nfprobe_receiver: 127.0.0.1:474$g
nfprobe_version: 10
aggregate: src_host, dst_host, src_port, dst_port, proto
EOF
            ip netns exec "$GW_NS" uacctd -f "$WORK/uacctd$g.conf" >"$WORK/b-uacctd$g.log" 2>&1 &
            pids+=($!); PIDS+=($!)
        done
    fi
    "$LABBIN" ready --lab "$LABNAME" --groups 1,2,3 --timeout 10 || { say "$tool did not bind the groups"; return 2; }
    "$LABBIN" rules --lab "$LABNAME" --firewall iptables load
    if [ "$rate" = max ]; then n=1000000; else n=$(( rate * STEP_SECONDS )); fi
    local t0 c0 t1 t2 c1 rate_arg=()
    [ "$rate" = max ] || rate_arg=(-b "${rate}pps")
    c0=$(cpu_ticks "${pids[@]}"); t0=$(date +%s.%N)
    timeout 60 ip netns exec "$INET_NS" trafgen --no-sock-mem -o eth0 -i "$WORK/trafgen.cfg" -n "$n" -P 1 -q "${rate_arg[@]}" \
        >"$WORK/trafgen.log" 2>&1 || say "trafgen: $(tail -2 "$WORK/trafgen.log")"
    t1=$(date +%s.%N)
    # Let the kernel's flush timer deliver the last partial batches before stopping; the
    # CPU the tools spend on the backlog counts too.
    "$LABBIN" drained --lab "$LABNAME" --groups 1,2,3 --timeout 10 || true
    c1=$(cpu_ticks "${pids[@]}"); t2=$(date +%s.%N)
    "$LABBIN" rules --lab "$LABNAME" --firewall iptables detach
    local counted exported=0 ignored=0 p
    counted=$("$LABBIN" counters --lab "$LABNAME" --firewall iptables | awk '{ s += $2 } END { print s + 0 }')
    for p in "${pids[@]}"; do
        if [ "$tool" = labelflow ]; then stop_pid "$p" TERM; else stop_pid "$p" INT; fi
    done
    for p in "${sinks[@]}"; do stop_pid "$p" TERM; done
    for p in "${outs[@]}"; do
        exported=$(( exported + $(json_num "$p" packets) ))
        ignored=$(( ignored + $(sed -n 's/.*"ignored":{\([^}]*\)}.*/\1/p' "$p" | tr ',' '\n' | awk -F: '{ s += $2 } END { print s + 0 }') ))
    done
    local secs pps cpu
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    pps=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%d", n / s }')
    cpu=$(awk -v c="$(( c1 - c0 ))" -v hz="$(getconf CLK_TCK)" -v a="$t0" -v b="$t2" 'BEGIN { printf "%.1f", 100 * c / hz / (b - a) }')
    # CPU time per counted packet: the figure comparable across rates and tools.
    local us
    us=$(awk -v c="$(( c1 - c0 ))" -v hz="$(getconf CLK_TCK)" -v n="$counted" 'BEGIN { if (n > 0) printf "%.2f", 1e6 * c / hz / n; else print "-" }')
    printf '%-16s %10s %10s %10s %10s %10s %10s %8s %8s\n' "$tool" "$rate" "$pps" "$counted" "$exported" "$(( counted - exported ))" "$ignored" "$cpu" "$us"
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
    # Lossless: nothing the kernel counted is missing. An over-count (negative "lost") is not
    # loss but an accounting error of its own, flagged beside the row.
    [ "$exported" -le "$counted" ] || printf '%-16s %10s over-counts by %d packet(s)\n' "$tool" "$rate" "$(( exported - counted ))" >&2
    [ "$counted" -gt 0 ] && [ "$exported" -ge "$counted" ]
}

if ! skip b; then
    printf '\n(b) live: trafgen 60-byte frames inet -> gw FORWARD (3 NFLOG groups) -> lan, %ss per step\n' "$STEP_SECONDS"
    printf '%-16s %10s %10s %10s %10s %10s %10s %8s %8s\n' tool target achieved counted exported lost reported CPU% us/pkt
    declare -A BEST BEST_CPU BEST_US
    for tool in labelflow uacctd; do
        use "$tool" || continue
        BEST[$tool]=none; BEST_CPU[$tool]=-; BEST_US[$tool]=-
        for rate in $RATES; do
            row=$(live_step "$tool" "$rate") && ok=1 || ok=0
            printf '%s\n' "$row"
            if [ "$ok" = 1 ]; then
                BEST[$tool]=$(awk '{ print $3 }' <<<"$row"); BEST_CPU[$tool]=$(awk '{ print $8 }' <<<"$row"); BEST_US[$tool]=$(awk '{ print $9 }' <<<"$row")
            else
                break
            fi
        done
    done
    use labelflow && printf '%-16s highest lossless rate %10s pps at %s%% CPU, %s us CPU per packet\n' labelflow-probe "${BEST[labelflow]}" "${BEST_CPU[labelflow]}" "${BEST_US[labelflow]}"
    use uacctd && printf '%-16s highest lossless rate %10s pps at %s%% CPU, %s us CPU per packet (3 processes)\n' uacctd "${BEST[uacctd]}" "${BEST_CPU[uacctd]}" "${BEST_US[uacctd]}"
fi

# ---------------------------------------------------------------- (c) memory per flow
if ! skip c && use labelflow; then
    printf '\n(c) memory per live flow (replay, timeouts 1h, one packet per flow)\n'
    timeout 120 "$GEN" --packets 1000 --flows 1000 --seconds 1 --out "$WORK/small.pcap" 2>/dev/null
    timeout 180 "$GEN" --packets "$MEM_FLOWS" --flows "$MEM_FLOWS" --seconds 10 --out "$WORK/many.pcap" 2>/dev/null
    S=$(start_sink - 127.0.0.1:47393 "$WORK/c-sink.json")
    for f in small many; do
        timeout 180 "$TIME" -v -o "$WORK/c-$f.time" "$PROBE" --replay "$WORK/$f.pcap" --label x \
            --active-timeout 1h --inactive-timeout 1h --max-flows $(( MEM_FLOWS * 2 )) \
            --export ipfix://127.0.0.1:47393 >"$WORK/c-$f.log" 2>&1 || say "replay $f failed: $(tail -3 "$WORK/c-$f.log")"
    done
    stop_pid "$S" TERM
    read -r _ r_small _ < <(time_fields "$WORK/c-small.time")
    read -r _ r_many _ < <(time_fields "$WORK/c-many.time")
    printf '%-18s peak RSS %s kB with 1k flows, %s kB with %s flows: %s bytes per flow (flows exported: %s)\n' \
        labelflow-probe "$r_small" "$r_many" "$MEM_FLOWS" \
        "$(awk -v a="$r_small" -v b="$r_many" -v n="$MEM_FLOWS" 'BEGIN { if (b > a) printf "%.0f", (b - a) * 1024 / n; else print "-" }')" \
        "$(json_num "$WORK/c-sink.json" flows)"
fi

# ---------------------------------------------------------------- (d) conntrack vs NFLOG
# CPU time of a process (every thread), nanoseconds, from schedstat (ticks are too coarse for
# a source that wakes a few times per transfer).
cpu_ns() { # pid
    [ -n "$1" ] || { echo 0; return; }
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
}
ct_counted() { "$LABBIN" conntrack --lab "$LABNAME" counters | awk '{ p += $3; b += $4 } END { print p + 0, b + 0 }'; }
# One step: mode none|conntrack|nflog. Prints: mode Gbit/s probe-CPU% CPU-s/GB counted exported.
ct_step() {
    local mode=$1 pid= sink= counted exported=0 c0 c1 t0 t1
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
    eval "$("$LABBIN" up --lab "$LABNAME")"
    "$LABBIN" conntrack --lab "$LABNAME" load
    ip netns exec "$GW_NS" sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
    [ "$mode" = nflog ] && "$LABBIN" rules --lab "$LABNAME" --firewall nft load
    ip netns exec "$INET_NS" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
    PIDS+=($!)
    timeout 10 sh -c "until ip netns exec $INET_NS ss -ltn | grep -q :5201; do sleep 0.05; done"
    case $mode in
        conntrack)
            sink=$(start_sink "$GW_NS" 127.0.0.1:4739 "$WORK/d-sink.json")
            ip netns exec "$GW_NS" "$PROBE" --ct-label 0x10=tcp --ct-label 0x20=udp --ct-label 0x30=icmp \
                --export ipfix://127.0.0.1:4739 --max-rate 0 >"$WORK/d-probe.log" 2>&1 &
            pid=$!; PIDS+=($!)
            "$LABBIN" conntrack --lab "$LABNAME" ready --timeout 10 ;;
        nflog)
            sink=$(start_sink "$GW_NS" 127.0.0.1:4739 "$WORK/d-sink.json")
            ip netns exec "$GW_NS" "$PROBE" --group 1=esp --group 2=vpn --group 3=other \
                --export ipfix://127.0.0.1:4739 --max-rate 0 >"$WORK/d-probe.log" 2>&1 &
            pid=$!; PIDS+=($!)
            "$LABBIN" ready --lab "$LABNAME" --groups 1,2,3 --timeout 10 ;;
    esac
    c0=$(cpu_ns "$pid"); t0=$(date +%s.%N)
    timeout $(( CT_SECONDS + 30 )) ip netns exec "$LAN_NS" iperf3 -c 192.0.2.1 -p 5201 -t "$CT_SECONDS" -J >"$WORK/d-iperf.json" 2>&1 || say "iperf3 failed"
    [ "$mode" = nflog ] && { "$LABBIN" drained --lab "$LABNAME" --groups 1,2,3 --timeout 10 || true; }
    c1=$(cpu_ns "$pid"); t1=$(date +%s.%N)
    # NFLOG: the rules stop logging before the probe stops (what it never saw is not loss);
    # conntrack: the counters are read before the stop, whose sweep exports the remainder.
    if [ "$mode" = nflog ]; then
        "$LABBIN" rules --lab "$LABNAME" --firewall nft detach
        counted=$("$LABBIN" counters --lab "$LABNAME" --firewall nft | awk '{ p += $2; b += $3 } END { print p + 0, b + 0 }')
    else
        # Until the teardown's last packets are in (two equal reads 200 ms apart).
        local next
        counted=$(ct_counted)
        while sleep 0.2; next=$(ct_counted); [ "$next" != "$counted" ]; do counted=$next; done
    fi
    local ignored=-
    if [ -n "$pid" ]; then
        stop_pid "$pid" TERM; stop_pid "$sink" TERM
        exported=$(json_num "$WORK/d-sink.json" packets)
        # Loss the probe reported (ignoredPacketTotalCount), summed over its scopes.
        ignored=$(sed -n 's/.*"ignored":{\([^}]*\)}.*/\1/p' "$WORK/d-sink.json" | tr ',' '\n' | awk -F: '{ s += $2 } END { print s + 0 }')
    fi
    local gbps cpu per_gb
    gbps=$(/usr/bin/python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' "$WORK/d-iperf.json")
    cpu=$(awk -v c="$(( c1 - c0 ))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", 100 * c / 1e9 / (b - a) }')
    per_gb=$(awk -v c="$(( c1 - c0 ))" -v by="${counted#* }" 'BEGIN { if (by > 0) printf "%.5f", c / 1e9 / (by / 1e9); else print "-" }')
    [ "$mode" = none ] && { cpu=-; per_gb=-; exported=-; }
    printf '%-10s %8s %9s %10s %12s %12s %12s %10s\n' "$mode" "$gbps" "$cpu" "$per_gb" "${counted% *}" "${counted#* }" "$exported" "$ignored"
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
}

# The conntrack source's cost driver: connections. A burst of CT_CONNS one-datagram UDP
# connections, the probe sweeping every second; CPU over the burst and 2.5 s after it (NEW
# events plus at least two sweeps of every connection), per connection.
ct_flood_step() {
    local pid sink c0 c1 sent counted exported
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
    eval "$("$LABBIN" up --lab "$LABNAME")"
    "$LABBIN" conntrack --lab "$LABNAME" load
    ip netns exec "$GW_NS" sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
    sink=$(start_sink "$GW_NS" 127.0.0.1:4739 "$WORK/d-sink.json")
    ip netns exec "$GW_NS" "$PROBE" --ct-label 0x10=tcp --ct-label 0x20=udp --ct-label 0x30=icmp \
        --active-timeout 1s --export ipfix://127.0.0.1:4739 --max-rate 0 >"$WORK/d-probe.log" 2>&1 &
    pid=$!; PIDS+=($!)
    "$LABBIN" conntrack --lab "$LABNAME" ready --timeout 10
    c0=$(cpu_ns "$pid")
    sent=$("$LABBIN" conntrack --lab "$LABNAME" flood --count "$CT_CONNS")
    sleep 2.5
    c1=$(cpu_ns "$pid")
    counted=$(ct_counted)
    stop_pid "$pid" TERM; stop_pid "$sink" TERM
    exported=$(json_num "$WORK/d-sink.json" packets)
    printf '%-10s %8s connections, probe CPU %s us per connection, counted %s exported %s packets\n' \
        conntrack "$sent" "$(awk -v c="$(( c1 - c0 ))" -v n="$sent" 'BEGIN { printf "%.1f", c / 1e3 / n }')" "${counted% *}" "$exported"
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
}

# ulogd2 (Debian 2.0.8) NFCT -> IPFIX on the same traffic: the iperf3 transfer, then the
# CT_CONNS burst. Its own config, log and process in the bench's work dir (never the system
# service). NFCT without its hash table, DESTROY events only (event_mask 0x4), reliable
# delivery: one record per connection, when it ends. TCP connections wait in TIME_WAIT and UDP
# ones for their timeout, so `conntrack -F` ends them all (the flush sends DESTROY with the
# final counters). Its IPFIX record is packetTotalCount/octetTotalCount of both directions
# added together, truncated to 32 bits, times in seconds (output/ipfix/ulogd_output_IPFIX.c,
# ipfix_interp). Why its totals fall short: 2.0.8 sends a message only when the next record
# does not fit in `mtu` (512) bytes. Its 1 s send timer is armed once at start and never again
# (fixed upstream after 2.0.8, commit e318d35 "ipfix: re-arm send timer"), and ipfix_stop
# frees the pending message unsent, so the last records (1 to 14, of 33 bytes) are never
# exported. The netlink buffer size must be below its maximum (setnlbufsiz: size < maxsize).
ulogd_step() {
    local pid sink c0 cm c1 t0 tm counted next sent exported bytes records conf=$WORK/ulogd.conf
    local plugins=/usr/lib/x86_64-linux-gnu/ulogd
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
    eval "$("$LABBIN" up --lab "$LABNAME")"
    "$LABBIN" conntrack --lab "$LABNAME" load
    ip netns exec "$GW_NS" sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
    ip netns exec "$INET_NS" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
    PIDS+=($!)
    timeout 10 sh -c "until ip netns exec $INET_NS ss -ltn | grep -q :5201; do sleep 0.05; done"
    printf '%s\n' '[global]' "logfile=\"$WORK/ulogd.log\"" 'loglevel=3' \
        "plugin=\"$plugins/ulogd_inpflow_NFCT.so\"" "plugin=\"$plugins/ulogd_output_IPFIX.so\"" \
        'stack=ct1:NFCT,ipfix1:IPFIX' '' '[ct1]' 'hash_enable=0' 'event_mask=0x00000004' 'reliable=1' \
        'netlink_socket_buffer_size=8388608' 'netlink_socket_buffer_maxsize=16777216' '' \
        '[ipfix1]' 'oid=1' 'host="127.0.0.1"' 'port=4739' 'proto="udp"' >"$conf"
    # Its own export to the sink on loopback would be a connection (and a record) too.
    ip netns exec "$GW_NS" nft -f - <<'NFT'
table ip bench_ulogd {
    chain out {
        type filter hook output priority raw;
        oif "lo" notrack
    }
}
NFT
    sink=$(start_sink "$GW_NS" 127.0.0.1:4739 "$WORK/d-ulogd.json")
    ip netns exec "$GW_NS" ulogd -c "$conf" -p "$WORK/ulogd.pid" </dev/null >"$WORK/ulogd.out" 2>&1 &
    pid=$!; PIDS+=($!)
    # Ready once it has started its plugins (the IPFIX output logs its connect).
    timeout 10 sh -c "until grep -q 'connected to' '$WORK/ulogd.log' 2>/dev/null; do kill -0 $pid || exit 1; sleep 0.05; done" \
        || die "ulogd2 did not start: $(cat "$WORK/ulogd.log" "$WORK/ulogd.out" 2>/dev/null | tail -3)"
    c0=$(cpu_ns "$pid"); t0=$(date +%s.%N)
    timeout $(( CT_SECONDS + 30 )) ip netns exec "$LAN_NS" iperf3 -c 192.0.2.1 -p 5201 -t "$CT_SECONDS" -J >"$WORK/d-iperf.json" 2>&1 || say "iperf3 failed"
    cm=$(cpu_ns "$pid"); tm=$(date +%s.%N)
    sent=$("$LABBIN" conntrack --lab "$LABNAME" flood --count "$CT_CONNS")
    counted=$(ct_counted)
    while sleep 0.2; next=$(ct_counted); [ "$next" != "$counted" ]; do counted=$next; done
    ip netns exec "$GW_NS" conntrack -F >/dev/null 2>&1
    # Until ulogd2 has handled every DESTROY event (its CPU time stops growing).
    next=$(cpu_ns "$pid")
    while sleep 0.5; c1=$(cpu_ns "$pid"); [ "$c1" != "$next" ]; do next=$c1; done
    stop_pid "$pid" TERM; stop_pid "$sink" TERM
    exported=$(json_num "$WORK/d-ulogd.json" packets)
    bytes=$(json_num "$WORK/d-ulogd.json" bytes)
    records=$(json_num "$WORK/d-ulogd.json" flows)
    local gbps cpu per_gb
    gbps=$(/usr/bin/python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' "$WORK/d-iperf.json")
    # CPU over the transfer (no events until its two connections end), then per connection over
    # the burst and the flush that ends every connection (all DESTROY events handled).
    cpu=$(awk -v c="$(( cm - c0 ))" -v a="$t0" -v b="$tm" 'BEGIN { printf "%.3f", 100 * c / 1e9 / (b - a) }')
    per_gb=$(awk -v c="$(( cm - c0 ))" -v by="${counted#* }" 'BEGIN { if (by > 0) printf "%.5f", c / 1e9 / (by / 1e9); else print "-" }')
    printf '%-10s %8s %9s %10s %12s %12s %12s %10s\n' ulogd2 "$gbps" "$cpu" "$per_gb" "${counted% *}" "${counted#* }" "${exported:-0}" -
    printf '%-10s %s connections (iperf3 2, burst %s): CPU %s us per connection; exported %s records, %s of %s bytes\n' \
        ulogd2 "$(( sent + 2 ))" "$sent" "$(awk -v c="$(( c1 - cm ))" -v n="$(( sent + 2 ))" 'BEGIN { printf "%.1f", c / 1e3 / n }')" \
        "${records:-0}" "${bytes:-0}" "${counted#* }"
    [ "${exported:-0}" = "${counted% *}" ] || say "(d) ulogd2 is not exact: 2.0.8 sends a message only when the next record does not fit (its send timer fires once, at start) and drops the unsent one at stop"
    "$LABBIN" down --lab "$LABNAME" >/dev/null 2>&1 || true
}

if ! skip d && use labelflow; then
    command -v iperf3 >/dev/null || die "missing iperf3 (apt-get install iperf3)"
    printf '\n(d) TCP through the gateway (masquerade, ct mark; offloads off), iperf3 %ss per step\n' "$CT_SECONDS"
    printf '%-10s %8s %9s %10s %12s %12s %12s %10s\n' source Gbit/s probe-CPU% CPU-s/GB counted-pkts counted-bytes exported-pkts reported
    for mode in none conntrack nflog; do ct_step "$mode"; done
    ct_flood_step
    command -v ulogd >/dev/null && command -v conntrack >/dev/null || die "missing ulogd or conntrack (apt-get install ulogd2 conntrack)"
    ulogd_step
    say "(d) exact when exported-pkts equals counted-pkts (nftables counters on the marks for conntrack, the NFLOG rules' counters for nflog); reported: loss the probe exported as ignoredPacketTotalCount"
fi
