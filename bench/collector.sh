#!/usr/bin/env bash
# Collector ingest benchmark: replay a recorded IPFIX stream (>= 1M flow records, 22 per
# datagram, loopback) at labelflow-collector and at nfcapd, stepping the offered rate down
# until a run is lossless, and print for both: records/s, peak RSS (VmHWM) and the receiver's
# CPU time per record. Several rounds, the two receivers in turn, and the comparison taken
# from the medians: on a small VM one run of either receiver can be far off its usual figure.
#
#   bench/collector.sh                 # RECORDS=1000010 REPEAT=12 ROUNDS=3 RATES="16000000 ..."
#
# RECORDS  flow records in the generated stream file
# REPEAT   passes over the stream per run (a longer offered stream without a bigger file: a
#          run must hold the rate for seconds, not only fit a burst into the receive buffer;
#          sequence numbers restart each pass, which labelflow-collector counts as a sequence
#          reset and nfcapd ignores)
# ROUNDS   rate searches per receiver
# RATES    offered rates to try, records/s, highest first
# RCVBUF   UDP receive buffer for both receivers, bytes (before the kernel doubles it)
# BIN=DIR  prebuilt binaries (e.g. an older build, for before/after figures)
# GEN=PATH the replay tool, default $BIN/labelflow-ipfix-gen; with an older BIN, pointing GEN at
#          a current build keeps the sender from being the limit (REPEAT needs a current one)
#
# The sender takes one core, and on loopback it also carries every datagram up to the
# receiving socket. It sends runs of equal-length datagrams as one UDP GSO message, which
# the kernel splits back into the same datagrams before the receiver (see
# labelflow-ipfix-gen), so it can offer well over 10M records/s here; a step where it still
# fell short of its target is marked "sender-limited". The CPU time the receiver spends per
# record does not depend on the sender, so it is printed as well.
#
# labelflow-collector runs twice. As configured by default (udp_gro = true), the kernel hands
# each of the sender's GSO batches to it unsplit, up to 64 datagrams per read, and it cuts
# them apart itself (on a real link the receive path's GRO merges an exporter's consecutive
# datagrams the same way, as far as they arrive in one NAPI poll). As "labelflow-no-gro"
# (udp_gro = false) it reads every datagram on its own, as nfcapd does: the like-for-like
# comparison of the two receivers' own work.
#
# Needs: cargo, nfcapd + nfdump (Debian nfdump), curl, bc, ss (iproute2).
set -euo pipefail

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000010}
REPEAT=${REPEAT:-12}
ROUNDS=${ROUNDS:-3}
RATES=${RATES:-"16000000 14000000 12000000 10000000 9000000 8000000 7000000 6000000 5000000 4000000 3200000 2600000 2000000 1600000 1200000 800000"}
RCVBUF=${RCVBUF:-8388608}
TOTAL=$((RECORDS * REPEAT))
TICK=$(getconf CLK_TCK)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
for tool in nfcapd nfdump curl bc ss; do
  command -v "$tool" >/dev/null || { echo "bench/collector.sh: needs $tool" >&2; exit 1; }
done

if [ -z "${BIN:-}" ]; then
  cargo build --release -p labelflow-collector --bins >&2
  BIN=$CARGO_TARGET_DIR/release
fi
GEN=${GEN:-$BIN/labelflow-ipfix-gen}
# Passed only when needed, so that a GEN from before --repeat existed still runs REPEAT=1.
REPEAT_ARGS=()
[ "$REPEAT" -ne 1 ] && REPEAT_ARGS=(--repeat "$REPEAT")

# nfcapd -B sets SO_RCVBUF, which the kernel caps at net.core.rmem_max; labelflow-collector
# run as root uses SO_RCVBUFFORCE, which is not capped. Give the collector the capped size so
# both get the same buffer and neither hides a burst behind a bigger one (ss shows the buffers).
RMEM_MAX=$(cat /proc/sys/net/core/rmem_max)
COLLECTOR_RCVBUF=$((RCVBUF < RMEM_MAX ? RCVBUF : RMEM_MAX))
[ "$COLLECTOR_RCVBUF" -lt "$RCVBUF" ] &&
  echo "RCVBUF $RCVBUF > net.core.rmem_max $RMEM_MAX: both receivers get $RMEM_MAX" >&2

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
touch "$WORK/summary"
"$GEN" generate --records "$RECORDS" --out "$WORK/stream.bin"
echo "stream: $RECORDS records, $(stat -c %s "$WORK/stream.bin") bytes, sent $REPEAT times per run" >&2

metric() { curl -s "http://127.0.0.1:$2/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# 1 once every datagram the collector received is committed to its store.
committed() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    $1 == "labelflow_collector_datagrams_total" { d = $2 }
    $1 == "labelflow_collector_committed_datagrams_total" { c = $2 }
    END { print (d != "" && c == d) }'
}
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# utime + stime of all the process's threads (/proc/PID/stat fields 14 and 15), clock ticks.
# The command name (field 2) may hold spaces, so fields are counted after its ")".
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# The receive buffer the kernel actually gave the socket bound to a local UDP port.
rcvbuf() { ss -Huanm "sport = :$1" | sed -n 's/.*rb\([0-9]*\).*/\1/p'; }

collector_run() {
  local rate=$1 gro=${2:-true} udp=47390 http=47391
  rm -f "$WORK"/c.db*
  printf 'recv_buffer = %s\nudp_gro = %s\n' "$COLLECTOR_RCVBUF" "$gro" >"$WORK/c.toml"
  "$BIN/labelflow-collector" --config "$WORK/c.toml" --listen 127.0.0.1:$udp --http 127.0.0.1:$http \
    --db "$WORK/c.db" 2>"$WORK/c.log" &
  local pid=$!
  until curl -s "http://127.0.0.1:$http/metrics" >/dev/null; do sleep 0.1; done
  local rb cpu0; rb=$(rcvbuf $udp); cpu0=$(cpu_ticks $pid)
  local out
  out=$("$GEN" replay --file "$WORK/stream.bin" --to 127.0.0.1:$udp --rate "$rate" "${REPEAT_ARGS[@]}")
  # Records counted once the replay is over (the counters are published every 250 ms), until
  # all are in or the count stops moving. Polled only then: a scrape costs the collector
  # ~0.3 ms of CPU, which at 50/s would add a few per cent to its CPU time per record.
  local got prev=-1 still=0
  while :; do
    got=$(metric labelflow_collector_flow_records_total $http)
    [ "${got:-0}" -ge "$TOTAL" ] && break
    if [ "$got" = "$prev" ]; then still=$((still + 1)); else still=0; fi
    [ $still -ge 50 ] && break
    prev=$got
    sleep 0.02
  done
  # CPU time once what was received is committed (commit_interval, 1 s by default), so the
  # store's share is counted as nfcapd's file writing is; bounded in case a commit fails.
  local n=0
  until [ "$(committed $http)" = 1 ] || [ $n -ge 25 ]; do sleep 0.2; n=$((n + 1)); done
  local cpu hwm gro_reads; cpu=$(($(cpu_ticks $pid) - cpu0)); hwm=$(hwm_kb $pid)
  gro_reads=$(metric labelflow_collector_udp_gro_reads_total $http)
  kill -TERM $pid; wait $pid || true
  echo "$out got=$got hwm_kb=$hwm rcvbuf=$rb cpu_ticks=$cpu gro_reads=$gro_reads"
}
# Every datagram its own read, as nfcapd reads them.
collector_nogro_run() { collector_run "$1" false; }

nfcapd_run() {
  local rate=$1 udp=47392
  rm -rf "$WORK/nf"; mkdir "$WORK/nf"
  nfcapd -w "$WORK/nf" -b 127.0.0.1 -p $udp -t 3600 -B "$RCVBUF" >/dev/null 2>&1 &
  local pid=$!
  sleep 1
  local rb cpu0; rb=$(rcvbuf $udp); cpu0=$(cpu_ticks $pid)
  local out
  out=$("$GEN" replay --file "$WORK/stream.bin" --to 127.0.0.1:$udp --rate "$rate" "${REPEAT_ARGS[@]}")
  sleep 1
  # Before SIGTERM: its final flush of the file is not counted (nor the collector's on exit).
  local cpu hwm; cpu=$(($(cpu_ticks $pid) - cpu0)); hwm=$(hwm_kb $pid)
  while kill -0 $pid 2>/dev/null; do kill -TERM $pid 2>/dev/null || true; sleep 0.5; done
  local got; got=$(nfdump -R "$WORK/nf" -N -I | awk '/^Flows:/ {print $2}')
  echo "$out got=$got hwm_kb=$hwm rcvbuf=$rb cpu_ticks=$cpu"
}

# The highest lossless step of one receiver: a line for the table, and "name offered
# per_cpu_s cpu_ns rss_mb limited" in $WORK/summary for the comparison ("name 0" when every
# step lost records).
best() {
  local name=$1 fn=$2
  for rate in $RATES; do
    local r got offered limited=""
    r=$($fn "$rate"); got=$(field got "$r"); offered=$(field offered_rate "$r")
    # Well under its target, the sender (not the receiver) set the pace.
    if [ "$rate" -eq 0 ] || [ "$(echo "$offered < 0.9 * $rate" | bc -l)" = 1 ]; then
      limited=sender-limited
    fi
    echo "$name offered $rate/s: $r${limited:+ $limited}" >&2
    if [ "${got:-0}" -ge "$TOTAL" ]; then
      local ticks cpu_ns="n/a" per_cpu_s="n/a" rss
      ticks=$(field cpu_ticks "$r")
      if [ "${ticks:-0}" -gt 0 ]; then
        cpu_ns=$(printf '%.1f' "$(echo "$ticks * 1000000000 / $TICK / $got" | bc -l)")
        per_cpu_s=$(printf '%.0f' "$(echo "$got * $TICK / $ticks" | bc -l)")
      fi
      rss=$(printf '%.1f' "$(echo "$(field hwm_kb "$r") / 1024" | bc -l)")
      printf '%-22s %12.0f records/s offered, lossless (target %s/s%s)  peak RSS %6s MB\n' \
        "$name" "$offered" "$rate" "${limited:+, $limited}" "$rss"
      printf '%-22s %12s records per CPU-second (%s ns CPU per record, %s ticks of 1/%s s)  rcvbuf %s\n' \
        "" "$per_cpu_s" "$cpu_ns" "$ticks" "$TICK" "$(field rcvbuf "$r")"
      echo "$name $offered $per_cpu_s $cpu_ns $rss ${limited:-no}" >>"$WORK/summary"
      return
    fi
  done
  printf '%-22s lossy at every offered rate (%s)\n' "$name" "$RATES"
  echo "$name 0 n/a n/a n/a no" >>"$WORK/summary"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS:"
  best labelflow-collector collector_run
  best labelflow-no-gro collector_nogro_run
  best nfcapd nfcapd_run
done

# Median (and range) of one column of a receiver's rounds; "n/a" values are left out.
median() {
  awk -v n="$1" -v c="$2" '$1 == n && $c != "n/a" { print $c }' "$WORK/summary" | sort -g |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "n/a n/a n/a"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%.1f %.1f %.1f\n", m, v[1], v[NR] }'
}

# labelflow/nfcapd from the medians over the rounds. A lossless rate that was sender-limited
# is only a lower bound for that receiver, so the rate ratio says so; the CPU ratio holds
# either way.
compare() {
  local name lim
  echo
  echo "medians over $ROUNDS rounds (range):"
  for name in labelflow-collector labelflow-no-gro nfcapd; do
    read -r rate rate_lo rate_hi <<<"$(median $name 2)"
    read -r cpu cpu_lo cpu_hi <<<"$(median $name 4)"
    read -r rss _ _ <<<"$(median $name 5)"
    lim=$(awk -v n=$name '$1 == n && $6 != "no"' "$WORK/summary" | wc -l)
    printf '%-22s %12.0f records/s lossless (%.0f-%.0f)%s, %s ns CPU per record (%s-%s), peak RSS %s MB\n' \
      "$name" "$rate" "$rate_lo" "$rate_hi" "$([ "$lim" -gt 0 ] && echo ", sender-limited in $lim")" \
      "$cpu" "$cpu_lo" "$cpu_hi" "$rss"
  done
  local lf lf_rate nf_rate lf_cpu nf_cpu rate_ratio cpu_ratio
  read -r nf_rate _ <<<"$(median nfcapd 2)"
  read -r nf_cpu _ <<<"$(median nfcapd 4)"
  for lf in labelflow-collector labelflow-no-gro; do
    read -r lf_rate _ <<<"$(median $lf 2)"
    read -r lf_cpu _ <<<"$(median $lf 4)"
    rate_ratio="n/a (a receiver was lossy at every offered rate)" cpu_ratio="n/a"
    if [ "$(echo "$lf_rate > 0 && $nf_rate > 0" | bc -l)" = 1 ]; then
      rate_ratio=$(printf 'x%.2f' "$(echo "$lf_rate / $nf_rate" | bc -l)")
    fi
    if [ "$lf_cpu" != n/a ] && [ "$nf_cpu" != n/a ]; then
      cpu_ratio=$(printf 'x%.2f' "$(echo "$nf_cpu / $lf_cpu" | bc -l)")
    fi
    echo "$lf/nfcapd: lossless offered rate $rate_ratio, records per CPU-second $cpu_ratio"
  done
}
compare
