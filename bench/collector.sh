#!/usr/bin/env bash
# Collector ingest benchmark: replay a recorded IPFIX stream (>= 1M flow records, 22 per
# datagram, loopback) at labelflow-collector and at nfcapd, stepping the offered rate down
# until a run is lossless, and print for both: records/s, peak RSS (VmHWM) and the receiver's
# CPU time per record.
#
#   bench/collector.sh                 # RECORDS=1000010 REPEAT=4 RATES="16000000 12000000 ..."
#
# RECORDS  flow records in the generated stream file
# REPEAT   passes over the stream per run (a longer offered stream without a bigger file, so
#          the receive buffers absorb a smaller share; sequence numbers restart each pass, which
#          labelflow-collector counts as a sequence reset and nfcapd ignores)
# RATES    offered rates to try, records/s, highest first
# RCVBUF   UDP receive buffer for both receivers, bytes (before the kernel doubles it)
# BIN=DIR  prebuilt binaries (e.g. an older build, for before/after figures)
# GEN=PATH the replay tool, default $BIN/labelflow-ipfix-gen; with an older BIN, pointing GEN at
#          a current build keeps the sender from being the limit (REPEAT needs a current one)
#
# The sender takes one core. On a 2-core machine it can offer only so much, and a receiver
# that keeps up with it shows no ceiling: such steps are marked "sender-limited". The CPU time
# the receiver spends per record does not depend on the sender, so it is printed as well.
#
# Needs: cargo, nfcapd + nfdump (Debian nfdump), curl, bc, ss (iproute2).
set -euo pipefail

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000010}
REPEAT=${REPEAT:-4}
RATES=${RATES:-"16000000 12000000 10000000 8000000 6400000 5000000 4000000 3200000 2600000 2000000 1600000 1200000"}
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
  local rate=$1 udp=47390 http=47391
  rm -f "$WORK"/c.db*
  printf 'recv_buffer = %s\n' "$COLLECTOR_RCVBUF" >"$WORK/c.toml"
  "$BIN/labelflow-collector" --config "$WORK/c.toml" --listen 127.0.0.1:$udp --http 127.0.0.1:$http \
    --db "$WORK/c.db" 2>"$WORK/c.log" &
  local pid=$!
  until curl -s "http://127.0.0.1:$http/metrics" >/dev/null; do sleep 0.1; done
  local rb cpu0; rb=$(rcvbuf $udp); cpu0=$(cpu_ticks $pid)
  local out end
  out=$("$GEN" replay --file "$WORK/stream.bin" --to 127.0.0.1:$udp --rate "$rate" "${REPEAT_ARGS[@]}")
  end=$(date +%s.%N)
  # Ingest rate: records / (first data datagram sent .. last record decoded). The replay
  # reports how long it sent (after its pause for the template); the tail is how long the
  # collector took after the replay ended (one scrape, a few ms, when it was done first;
  # polling grain ~20 ms). Polled only once the replay is over: a scrape costs the collector
  # ~0.3 ms of CPU, which at 50/s would add a few per cent to its CPU time per record.
  local got prev=-1 still=0 t1
  while :; do
    got=$(metric labelflow_collector_flow_records_total $http)
    t1=$(date +%s.%N)
    [ "${got:-0}" -ge "$TOTAL" ] && break
    if [ "$got" = "$prev" ]; then still=$((still + 1)); else still=0; fi
    [ $still -ge 100 ] && break
    prev=$got
    sleep 0.02
  done
  # CPU time once what was received is committed (commit_interval, 1 s by default), so the
  # store's share is counted as nfcapd's file writing is; bounded in case a commit fails.
  local n=0
  until [ "$(committed $http)" = 1 ] || [ $n -ge 25 ]; do sleep 0.2; n=$((n + 1)); done
  local cpu hwm; cpu=$(($(cpu_ticks $pid) - cpu0)); hwm=$(hwm_kb $pid)
  kill -TERM $pid; wait $pid || true
  local sent tail; sent=$(field seconds "$out"); tail=$(echo "$t1 - $end" | bc -l)
  echo "$out got=$got hwm_kb=$hwm rcvbuf=$rb cpu_ticks=$cpu" \
    "ingest_rate=$(echo "$TOTAL / ($sent + $tail)" | bc -l)"
}

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

# The highest lossless step of one receiver: a line for the table, and "name offered cpu_ns
# per_cpu_s limited" in $WORK/summary for the comparison.
best() {
  local name=$1 fn=$2 key=$3
  for rate in $RATES; do
    local r got offered limited=""
    r=$($fn "$rate"); got=$(field got "$r"); offered=$(field offered_rate "$r")
    # Well under its target, the sender (not the receiver) set the pace.
    if [ "$rate" -eq 0 ] || [ "$(echo "$offered < 0.9 * $rate" | bc -l)" = 1 ]; then
      limited=sender-limited
    fi
    echo "$name offered $rate/s: $r${limited:+ $limited}" >&2
    if [ "${got:-0}" -ge "$TOTAL" ]; then
      local ticks cpu_ns="n/a" per_cpu_s="n/a"
      ticks=$(field cpu_ticks "$r")
      if [ "${ticks:-0}" -gt 0 ]; then
        cpu_ns=$(printf '%.1f' "$(echo "$ticks * 1000000000 / $TICK / $got" | bc -l)")
        per_cpu_s=$(printf '%.0f' "$(echo "$got * $TICK / $ticks" | bc -l)")
      fi
      printf '%-22s %12.0f records/s lossless (%s; offered %.0f/s of %s/s%s)  peak RSS %6.1f MB\n' \
        "$name" "$(field "$key" "$r")" "$key" "$offered" "$rate" "${limited:+, $limited}" \
        "$(echo "$(field hwm_kb "$r") / 1024" | bc -l)"
      printf '%-22s %12s records per CPU-second (%s ns CPU per record, %s ticks of 1/%s s)  rcvbuf %s\n' \
        "" "$per_cpu_s" "$cpu_ns" "$ticks" "$TICK" "$(field rcvbuf "$r")"
      echo "$name $offered $per_cpu_s ${limited:-no}" >>"$WORK/summary"
      return
    fi
  done
  printf '%-22s lossy at every offered rate (%s)\n' "$name" "$RATES"
}

best labelflow-collector collector_run ingest_rate
best nfcapd nfcapd_run offered_rate

# labelflow/nfcapd. A lossless rate that was sender-limited is only a lower bound for that
# receiver, so the rate ratio says so; the CPU ratio holds either way.
compare() {
  local lf nf
  lf=$(awk '$1 == "labelflow-collector"' "$WORK/summary")
  nf=$(awk '$1 == "nfcapd"' "$WORK/summary")
  if [ -z "$lf" ] || [ -z "$nf" ]; then
    echo "labelflow/nfcapd: n/a (a receiver was lossy at every offered rate)"
    return
  fi
  read -r _ lf_rate lf_cpu lf_lim <<<"$lf"
  read -r _ nf_rate nf_cpu nf_lim <<<"$nf"
  local rate_note="" cpu_ratio="n/a"
  if [ "$lf_lim" != no ] && [ "$nf_lim" != no ]; then
    rate_note=" (both sender-limited: not a receiver comparison)"
  elif [ "$lf_lim" != no ]; then
    rate_note=" (labelflow sender-limited: a lower bound)"
  elif [ "$nf_lim" != no ]; then
    rate_note=" (nfcapd sender-limited: an upper bound)"
  fi
  if [ "$lf_cpu" != n/a ] && [ "$nf_cpu" != n/a ]; then
    cpu_ratio=$(printf '%.2f' "$(echo "$lf_cpu / $nf_cpu" | bc -l)")
  fi
  printf 'labelflow/nfcapd: lossless offered rate x%.2f%s, records per CPU-second x%s\n' \
    "$(echo "$lf_rate / $nf_rate" | bc -l)" "$rate_note" "$cpu_ratio"
}
compare
