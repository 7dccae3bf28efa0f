#!/usr/bin/env bash
# Collector ingest benchmark: replay a recorded IPFIX stream (>= 1M flow records, 22 per
# datagram, loopback) at labelflow-collector and at nfcapd, stepping the offered rate down
# until a run is lossless, and print records/s and peak RSS (VmHWM) for both.
#
#   bench/collector.sh                 # RECORDS=1000010 RATES="4000000 3200000 ..."
#
# Needs: cargo, nfcapd + nfdump (Debian nfdump), curl.
set -euo pipefail

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000010}
RATES=${RATES:-"5000000 4000000 3200000 2600000 2000000 1600000 1200000 800000"}
RCVBUF=${RCVBUF:-8388608}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
for tool in nfcapd nfdump curl; do
  command -v "$tool" >/dev/null || { echo "bench/collector.sh: needs $tool" >&2; exit 1; }
done

# BIN=DIR runs prebuilt binaries (e.g. an older build, for before/after figures).
if [ -z "${BIN:-}" ]; then
  cargo build --release -p labelflow-collector --bins >&2
  BIN=$CARGO_TARGET_DIR/release
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN/labelflow-ipfix-gen" generate --records "$RECORDS" --out "$WORK/stream.bin"
echo "stream: $RECORDS records, $(stat -c %s "$WORK/stream.bin") bytes" >&2

metric() { curl -s "http://127.0.0.1:$2/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# Wait until a counter stops moving (the receiver drained its socket).
settle() {
  local prev=-1 cur
  while :; do
    cur=$("$@")
    [ "$cur" = "$prev" ] && break
    prev=$cur
    sleep 2
  done
  echo "$cur"
}

collector_run() {
  local rate=$1 udp=47390 http=47391
  rm -f "$WORK"/c.db*
  # Same socket receive buffer as nfcapd gets below (-B), so neither hides behind a bigger one.
  printf 'recv_buffer = %s\n' "$RCVBUF" >"$WORK/c.toml"
  "$BIN/labelflow-collector" --config "$WORK/c.toml" --listen 127.0.0.1:$udp --http 127.0.0.1:$http \
    --db "$WORK/c.db" 2>"$WORK/c.log" &
  local pid=$!
  until curl -s "http://127.0.0.1:$http/metrics" >/dev/null; do sleep 0.1; done
  rm -f "$WORK/replay.end"
  { "$BIN/labelflow-ipfix-gen" replay --file "$WORK/stream.bin" --to 127.0.0.1:$udp --rate "$rate" >"$WORK/replay.out"
    date +%s.%N >"$WORK/replay.end"; } &
  local rp=$! got=0 prev=-1 still=0 t1
  # Ingest rate: records / (first data datagram sent .. last record decoded). The replay
  # reports how long it sent (after its pause for the template); the tail is how long the
  # collector took after the replay ended (0 when it was done first; polling grain ~20 ms).
  while :; do
    got=$(metric labelflow_collector_flow_records_total $http)
    t1=$(date +%s.%N)
    [ "${got:-0}" -ge "$RECORDS" ] && break
    if [ "$got" = "$prev" ]; then still=$((still + 1)); else still=0; fi
    [ $still -ge 100 ] && break
    prev=$got
    sleep 0.02
  done
  wait $rp
  local hwm; hwm=$(hwm_kb $pid)
  kill -TERM $pid; wait $pid || true
  local out sent tail; out=$(cat "$WORK/replay.out"); sent=$(field seconds "$out")
  tail=$(echo "$t1 - $(cat "$WORK/replay.end")" | bc -l)
  [ "$(echo "$tail < 0" | bc -l)" = 1 ] && tail=0
  echo "$out got=$got hwm_kb=$hwm ingest_rate=$(echo "$RECORDS / ($sent + $tail)" | bc -l)"
}

nfcapd_run() {
  local rate=$1 udp=47392
  rm -rf "$WORK/nf"; mkdir "$WORK/nf"
  nfcapd -w "$WORK/nf" -b 127.0.0.1 -p $udp -t 3600 -B "$RCVBUF" >/dev/null 2>&1 &
  local pid=$!
  sleep 1
  local out; out=$("$BIN/labelflow-ipfix-gen" replay --file "$WORK/stream.bin" --to 127.0.0.1:$udp --rate "$rate")
  sleep 1
  local hwm; hwm=$(hwm_kb $pid)
  while kill -0 $pid 2>/dev/null; do kill -TERM $pid 2>/dev/null || true; sleep 0.5; done
  local got; got=$(nfdump -R "$WORK/nf" -N -I | awk '/^Flows:/ {print $2}')
  echo "$out got=$got hwm_kb=$hwm"
}

best() {
  local name=$1 fn=$2 key=$3
  for rate in $RATES; do
    local r; r=$($fn "$rate")
    local got; got=$(field got "$r")
    echo "$name offered $rate/s: $r" >&2
    if [ "${got:-0}" -ge "$RECORDS" ]; then
      printf '%-22s %12.0f records/s lossless (%s; offered %.0f/s)  peak RSS %6.1f MB\n' "$name" \
        "$(field "$key" "$r")" "$key" "$(field offered_rate "$r")" "$(echo "$(field hwm_kb "$r") / 1024" | bc -l)"
      return
    fi
  done
  printf '%-22s lossy at every offered rate (%s)\n' "$name" "$RATES"
}

best labelflow-collector collector_run ingest_rate
best nfcapd nfcapd_run offered_rate
