#!/usr/bin/env bash
# Collector ingest benchmark: several IPFIX streams, each sent at labelflow-collector and at
# nfcapd over loopback with the same UDP receive buffer. For every stream and receive mode it
# searches the highest offered rate the receiver takes without losing a record, and prints
# that rate, the receiver's CPU time per record and its peak RSS (VmHWM).
#
#   bench/collector.sh            # one run, ~10-15 minutes on a 2-core VM
#   STREAMS="random backlog" MODES="labelflow-no-gro/dgram nfcapd/dgram" bench/collector.sh
#
# Streams (STREAMS, in this order by default; generated with SEED, RECORDS records a pass):
#   live       labelflow-ipfix-gen --shape live: four labels, a few hundred hosts and ports,
#              flows of at most 90 s in the last ten minutes (most records in 2-3 buckets)
#   random     --shape random: random IPv4 addresses and ports, interface indexes out of a
#              million (tens of thousands of exporters' worth), 64 observation points, 16 labels
#   backlog    --shape backlog: the random keys with flow ends spread over an hour of flow
#              time per million records, in order: at 1M records/s an hour of flow time per
#              second of sending (a replayed capture, an exporter flushing after an outage)
#   exporters  a random stream of RECORDS/EXPORTERS records sent by EXPORTERS exporters at
#              once, each from its own loopback address (127.0.0.1, 127.0.0.2, ...), send by
#              send in turn: many scopes (sessions, templates, sequence numbers) at once; the
#              exporters send the same records, so its keys are fewer than the random stream's
#   softflowd  a third-party exporter's stream: softflowd 1.1 (-r, IPFIX) over a capture of
#              RECORDS packets of mixed TCP/UDP/ICMP/ESP, IPv4 and IPv6, one flow record per
#              packet, its times moved to the last quarter hour (editcap -t); recorded once
#              from the wire (labelflow-ipfix-gen record) and replayed at each rate
#   softflowd-v9  the same capture exported by softflowd as NetFlow v9 (-v 9)
#
# Modes (MODES, RECEIVER/SENDER):
#   receivers  labelflow         labelflow-collector as configured by default (udp_gro =
#                                true: a read may carry a batch of one exporter's datagrams)
#              labelflow-no-gro  udp_gro = false: every datagram its own read, as nfcapd reads
#              nfcapd            nfcapd 1.7.1 (-B RCVBUF)
#   senders    gso    runs of equal-length datagrams as one UDP GSO send: the kernel splits
#                     them before the receiver; with udp_gro the receiver gets them unsplit
#                     (as a link's GRO merges an exporter's back-to-back datagrams)
#              dgram  plain sendmmsg, one datagram per message, paced per call: what a real
#                     link with nothing to merge delivers. Per datagram the loopback sender
#                     tops out near 280k datagrams/s (~5.5M records/s); a step it could not
#                     offer is marked "sender-limited"
#
# Search: LO records/s first, then the offered rate is bisected geometrically between LO and
# HI for STEPS probes; each probe offers ~RUN_SECONDS seconds of the stream (whole passes, sequence numbers
# restarting each pass) and is lossless when the receiver counted every flow record sent.
#
# CPU_QUOTA=N (percent of one CPU, unset by default): each receiver process, all its threads,
# runs in a cgroup of its own limited to N% of one CPU (CFS quota in 10 ms periods; cgroup v2
# cpu.max, else v1 cpu.cfs_quota_us). Both receivers then work within the same CPU budget at
# rates the loopback sender can offer: the highest lossless rate measures how much each
# receives per CPU second. labelflow-collector's decoding, journal and merge take their
# share of the budget behind its receive thread (at nice 10, and stepping aside while the
# socket's queue fills: a burst is spooled, then decoded and merged) and may lag behind the
# receiving ("commit-lagging"); nfcapd writes its files within the same budget. Every probe
# starts after `sync`, so that neither receiver pays for the previous probe's writeback.
#
# Other knobs: RCVBUF (UDP receive buffer, bytes, before the kernel doubles it; capped by
# net.core.rmem_max for nfcapd, so the collector gets the same cap), EXPORTERS (16), SEED (1),
# BIN=DIR (prebuilt binaries), GEN=PATH (the stream tool), MERGE_WAIT (300: seconds a
# lossless probe waits for the collector's journal merge to catch up before its CPU time is
# read; "commit-lagging" marks a probe where it did not).
#
# Without sockets: labelflow-ingest-cpu --file STREAM.bin prints the collector's thread CPU
# time per record of ingest, rendering and store commits on one stream file (steadier than
# loss rates on a shared machine; for comparing builds).
#
# Needs: cargo, nfcapd + nfdump (Debian nfdump), softflowd, editcap (Debian tshark), curl, bc,
# ss (iproute2).
set -euo pipefail

field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-250000}
RUN_SECONDS=${RUN_SECONDS:-2}
STREAMS=${STREAMS:-"live random backlog exporters softflowd softflowd-v9"}
MODES=${MODES:-"labelflow/gso labelflow/dgram labelflow-no-gro/dgram nfcapd/dgram"}
LO=${LO:-100000}
HI=${HI:-16000000}
STEPS=${STEPS:-6}
RCVBUF=${RCVBUF:-8388608}
EXPORTERS=${EXPORTERS:-16}
SEED=${SEED:-1}
MERGE_WAIT=${MERGE_WAIT:-300}
TICK=$(getconf CLK_TCK)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
for tool in nfcapd nfdump softflowd editcap curl bc ss; do
  command -v "$tool" >/dev/null || { echo "bench/collector.sh: needs $tool" >&2; exit 1; }
done

if [ -z "${BIN:-}" ]; then
  cargo build --release -p labelflow-collector --bins >&2
  cargo build --release -p labelflow-tests --bin labelflow-gen-capture >&2
  BIN=$CARGO_TARGET_DIR/release
fi
GEN=${GEN:-$BIN/labelflow-ipfix-gen}

# nfcapd -B sets SO_RCVBUF, which the kernel caps at net.core.rmem_max; labelflow-collector
# run as root uses SO_RCVBUFFORCE, which is not capped. Give the collector the capped size so
# both get the same buffer and neither hides a burst behind a bigger one (ss shows the buffers).
RMEM_MAX=$(cat /proc/sys/net/core/rmem_max)
COLLECTOR_RCVBUF=$((RCVBUF < RMEM_MAX ? RCVBUF : RMEM_MAX))
[ "$COLLECTOR_RCVBUF" -lt "$RCVBUF" ] &&
  echo "RCVBUF $RCVBUF > net.core.rmem_max $RMEM_MAX: both receivers get $RMEM_MAX" >&2

WORK=$(mktemp -d)
CGROUP=""
cleanup() {
  rm -rf "$WORK"
  [ -z "$CGROUP" ] || rmdir "$CGROUP" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
touch "$WORK/summary"

# The CPU_QUOTA cgroup: a directory whose cgroup.procs a receiver joins before it starts.
if [ -n "${CPU_QUOTA:-}" ]; then
  quota_us=$((CPU_QUOTA * 100))
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control ||
      echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
    CGROUP=/sys/fs/cgroup/labelflow-bench.$$
    mkdir "$CGROUP"
    echo "$quota_us 10000" >"$CGROUP/cpu.max"
  elif [ -d /sys/fs/cgroup/cpu ]; then
    CGROUP=/sys/fs/cgroup/cpu/labelflow-bench.$$
    mkdir "$CGROUP"
    echo 10000 >"$CGROUP/cpu.cfs_period_us"
    echo "$quota_us" >"$CGROUP/cpu.cfs_quota_us"
  else
    echo "bench/collector.sh: CPU_QUOTA needs the cgroup cpu controller" >&2
    exit 1
  fi
  echo "each receiver limited to $CPU_QUOTA% of one CPU (cgroup $CGROUP)"
fi
# Runs a receiver, in the CPU_QUOTA cgroup when there is one. Called with `&` only: the
# background subshell execs the receiver, so $! is the receiver's pid.
receiver() {
  if [ -n "$CGROUP" ]; then
    exec sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CGROUP" "$@"
  else
    exec "$@"
  fi
}

metric() { curl -s "http://127.0.0.1:$2/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# 1 once every datagram the collector received is committed to its store or counted as
# dropped by its spool.
committed() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    $1 == "labelflow_collector_datagrams_total" { d = $2 }
    $1 == "labelflow_collector_committed_datagrams_total" { c = $2 }
    $1 == "labelflow_collector_spool_dropped_datagrams_total" { x = $2 }
    END { print (d != "" && c + x == d) }'
}
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# utime + stime of all the process's threads (/proc/PID/stat fields 14 and 15), clock ticks.
# The command name (field 2) may hold spaces, so fields are counted after its ")".
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# The receive buffer the kernel actually gave the socket bound to a local UDP port, and the
# bytes waiting in it.
rcvbuf() { ss -Huanm "sport = :$1" | sed -n 's/.*rb\([0-9]*\).*/\1/p'; }
recvq() { ss -Huan "sport = :$1" | awk '{ print $2; exit }'; }

# The stream files: "$WORK/NAME.bin", and in "$WORK/NAME.args" the replay's extra arguments.
make_stream() {
  local name=$1 file=$WORK/$1.bin
  : >"$WORK/$name.args"
  case $name in
    live | random | backlog)
      "$GEN" generate --records "$RECORDS" --shape "$name" --seed "$SEED" --out "$file" ;;
    exporters)
      # RECORDS in all per pass: each exporter sends its share.
      "$GEN" generate --records "$(((RECORDS + EXPORTERS - 1) / EXPORTERS))" --shape random \
        --seed "$((SEED + 1))" --out "$file"
      echo "--exporters $EXPORTERS" >"$WORK/$name.args" ;;
    softflowd | softflowd-v9)
      local version=10
      [ "$name" = softflowd ] || version=9
      # One flow per packet, so one record per packet; softflowd's flow table (8192) fills
      # and expires the oldest flows as new ones come.
      "$BIN/labelflow-gen-capture" --packets "$RECORDS" --flows "$RECORDS" --seconds 600 \
        --out "$WORK/cap0.pcap" >&2
      editcap -F pcap -t "$(($(date +%s) - 1700000000 - 900))" "$WORK/cap0.pcap" "$WORK/cap.pcap"
      rm -f "$WORK/cap0.pcap"
      "$GEN" record --listen 127.0.0.1:47399 --out "$file" --idle 3s >"$WORK/record.out" &
      local rec=$!
      until [ -n "$(rcvbuf 47399)" ]; do sleep 0.05; done
      softflowd -r "$WORK/cap.pcap" -n 127.0.0.1:47399 -v "$version" -6 -d -p "$WORK/softflowd.pid" \
        >"$WORK/softflowd.log" 2>&1
      wait $rec
      rm -f "$WORK/cap.pcap" ;;
    *) echo "bench/collector.sh: unknown stream $name" >&2; exit 1 ;;
  esac
}

# Sends stream $1 at rate $2 to 127.0.0.1:$3 with sender $4; prints the replay's summary.
send() {
  local per repeat exporters=1 args
  read -r -a args <"$WORK/$1.args" || true
  [ "${#args[@]}" -eq 0 ] || exporters=${args[1]}
  per=$(($(field records "$(cat "$WORK/$1.count")") * exporters))
  repeat=$(echo "r = $2 * $RUN_SECONDS / $per + 0.5; scale = 0; r / 1" | bc)
  [ "$repeat" -ge 1 ] || repeat=1
  local gso=()
  [ "$4" = gso ] || gso=(--no-gso)
  "$GEN" replay --file "$WORK/$1.bin" --to "127.0.0.1:$3" --rate "$2" --repeat "$repeat" \
    "${gso[@]}" "${args[@]}"
}

# SIGTERM, and SIGKILL if the collector has not exited 10 s later (said on stderr).
stop_collector() {
  kill -TERM "$1"
  local n=0
  while kill -0 "$1" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  if kill -0 "$1" 2>/dev/null; then
    echo "labelflow-collector did not exit within 10 s of SIGTERM: killed" >&2
    kill -KILL "$1"
  fi
  wait "$1" || true
}

collector_run() {
  local stream=$1 rate=$2 sender=$3 gro=$4 udp=47390 http=47391
  rm -f "$WORK"/c.db*
  # Every probe starts with no dirty pages left by the one before (the receivers' files).
  sync
  printf 'recv_buffer = %s\nudp_gro = %s\n' "$COLLECTOR_RCVBUF" "$gro" >"$WORK/c.toml"
  receiver "$BIN/labelflow-collector" --config "$WORK/c.toml" --listen 127.0.0.1:$udp --http 127.0.0.1:$http \
    --db "$WORK/c.db" 2>"$WORK/c.log" &
  local pid=$!
  until curl -s "http://127.0.0.1:$http/metrics" >/dev/null; do sleep 0.05; done
  local rb cpu0; rb=$(rcvbuf $udp); cpu0=$(cpu_ticks $pid)
  local out total
  out=$(send "$stream" "$rate" $udp "$sender")
  total=$(field records "$out")
  # Records counted once the replay is over (the counters are published every 250 ms), until
  # all are in or the count stops moving. Polled only then: a scrape costs the collector
  # ~0.3 ms of CPU, which at 50/s would add a few per cent to its CPU time per record.
  # A count that stands still while datagrams wait in the socket or in the collector's spool
  # is not final (decoding runs behind receiving); bounded at 60 s.
  local got prev=-1 still=0 waited=0
  while [ $waited -lt 3000 ]; do
    got=$(metric labelflow_collector_flow_records_total $http)
    [ "${got:-0}" -ge "$total" ] && break
    if [ "$got" = "$prev" ] && [ "$(recvq $udp)" = 0 ] &&
      [ "$(metric labelflow_collector_spool_datagrams $http)" = 0 ]; then
      still=$((still + 1))
    else
      still=0
    fi
    [ $still -ge 50 ] && break
    prev=$got
    sleep 0.02; waited=$((waited + 1))
  done
  # CPU time once what was received is merged into the aggregates (journaled at once, merged
  # as fast as the store goes), so the whole of the collector's work is counted, as nfcapd's
  # file writing is; bounded at MERGE_WAIT seconds, and only for a lossless probe (the only
  # one whose CPU time is reported). merge_s: how long after the send the merge caught up.
  local n=0 sent_at; sent_at=$(date +%s.%N)
  if [ "${got:-0}" -ge "$total" ]; then
    until [ "$(committed $http)" = 1 ] || [ $n -ge $((MERGE_WAIT * 5)) ]; do sleep 0.2; n=$((n + 1)); done
  fi
  local merge_s; merge_s=$(echo "$(date +%s.%N) - $sent_at" | bc)
  local cpu hwm; cpu=$(($(cpu_ticks $pid) - cpu0)); hwm=$(hwm_kb $pid)
  local note=""
  [ "$(committed $http)" = 1 ] || note=" commit-lagging"
  stop_collector $pid
  echo "$out got=$got hwm_kb=$hwm rcvbuf=$rb cpu_ticks=$cpu merge_s=${merge_s%.*}$note"
}

nfcapd_run() {
  local stream=$1 rate=$2 sender=$3 udp=47392
  rm -rf "$WORK/nf"; mkdir "$WORK/nf"
  sync
  receiver nfcapd -w "$WORK/nf" -b 127.0.0.1 -p $udp -t 3600 -B "$RCVBUF" >/dev/null 2>&1 &
  local pid=$!
  until [ -n "$(rcvbuf $udp)" ]; do sleep 0.05; done
  local rb cpu0; rb=$(rcvbuf $udp); cpu0=$(cpu_ticks $pid)
  local out
  out=$(send "$stream" "$rate" $udp "$sender")
  # Until its socket is drained, and a second for the records to reach its file buffers.
  local n=0
  until [ "$(recvq $udp)" = 0 ] || [ $n -ge 300 ]; do sleep 0.1; n=$((n + 1)); done
  sleep 1
  # Before SIGTERM: its final flush of the file is not counted (nor the collector's on exit).
  local cpu hwm; cpu=$(($(cpu_ticks $pid) - cpu0)); hwm=$(hwm_kb $pid)
  while kill -0 $pid 2>/dev/null; do kill -TERM $pid 2>/dev/null || true; sleep 0.2; done
  local got; got=$(nfdump -R "$WORK/nf" -N -I | awk '/^Flows:/ {s += $2} END {print s + 0}')
  echo "$out got=$got hwm_kb=$hwm rcvbuf=$rb cpu_ticks=$cpu"
}

# One probe of mode $1 (RECEIVER/SENDER) on stream $2 at rate $3.
probe() {
  local receiver=${1%/*} sender=${1#*/}
  case $receiver in
    labelflow) collector_run "$2" "$3" "$sender" true ;;
    labelflow-no-gro) collector_run "$2" "$3" "$sender" false ;;
    nfcapd) nfcapd_run "$2" "$3" "$sender" ;;
    *) echo "bench/collector.sh: unknown receiver $receiver" >&2; exit 1 ;;
  esac
}

# The highest lossless rate of mode $1 on stream $2: LO first (a receiver lossy there costs one
# probe), then [LO, HI] bisected geometrically. Appends "stream mode offered cpu_ns rss_mb
# note" to the summary and prints a table line.
search() {
  local mode=$1 stream=$2 lo=$LO hi=$HI best="" limited=""
  local rate=$LO r got total offered
  for step in $(seq 0 "$STEPS"); do
    [ "$step" -eq 0 ] || rate=$(echo "sqrt($lo * $hi)" | bc -l | cut -d. -f1)
    r=$(probe "$mode" "$stream" "$rate")
    got=$(field got "$r"); total=$(field records "$r"); offered=$(field offered_rate "$r")
    local short=""
    [ "$(echo "$offered < 0.9 * $rate" | bc -l)" = 1 ] && short=sender-limited
    echo "  $stream $mode target $rate/s: $r${short:+ $short}" >&2
    if [ "${got:-0}" -ge "$total" ]; then
      best=$r
      if [ -n "$short" ]; then limited=sender-limited; break; fi
      lo=$rate
    else
      hi=$rate
      [ "$step" -gt 0 ] || break
    fi
  done
  if [ -z "$best" ]; then
    printf '  %-24s lossy at %s records/s and above\n' "$mode" "$LO"
    echo "$stream $mode 0 n/a n/a lossy" >>"$WORK/summary"
    return
  fi
  local ticks cpu_ns="n/a" rss
  ticks=$(field cpu_ticks "$best"); got=$(field got "$best"); offered=$(field offered_rate "$best")
  [ "${ticks:-0}" -gt 0 ] && cpu_ns=$(printf '%.0f' "$(echo "$ticks * 1000000000 / $TICK / $got" | bc -l)")
  rss=$(printf '%.1f' "$(echo "$(field hwm_kb "$best") / 1024" | bc -l)")
  [[ $best == *commit-lagging* ]] && limited="${limited:+$limited,}commit-lagging"
  printf '  %-24s %10.0f records/s lossless %8s ns CPU/record %7s MB peak RSS  rcvbuf %s%s\n' \
    "$mode" "$offered" "$cpu_ns" "$rss" "$(field rcvbuf "$best")" "${limited:+  ($limited)}"
  echo "$stream $mode $offered $cpu_ns $rss ${limited:-ok}" >>"$WORK/summary"
}

started=$SECONDS
for stream in $STREAMS; do
  make_stream "$stream"
  "$GEN" count --file "$WORK/$stream.bin" >"$WORK/$stream.count"
  if [ -s "$WORK/$stream.args" ]; then
    echo "stream $stream: $(cat "$WORK/$stream.count") per exporter and pass, $(cat "$WORK/$stream.args")"
  else
    echo "stream $stream: $(cat "$WORK/$stream.count") per pass"
  fi
  for mode in $MODES; do
    search "$mode" "$stream"
  done
done

# Per stream: labelflow against nfcapd, each receiver with the sender nfcapd had (per
# datagram by default) and with GSO where it was measured.
echo
echo "labelflow/nfcapd per stream (lossless rate ratio, CPU per record ratio = nfcapd/labelflow, peak RSS ratio):"
value() { awk -v s="$1" -v m="$2" -v c="$3" '$1 == s && $2 == m { print $c }' "$WORK/summary"; }
ratio() { if [ -z "$1" ] || [ -z "$2" ] || [ "$1" = n/a ] || [ "$2" = n/a ] || [ "$(echo "$2 == 0" | bc)" = 1 ]; then echo n/a; else printf 'x%.2f' "$(echo "$1 / $2" | bc -l)"; fi; }
for stream in $STREAMS; do
  nf=$(awk -v s="$stream" '$1 == s && $2 ~ /^nfcapd\// { print $2; exit }' "$WORK/summary")
  [ -n "$nf" ] || continue
  for mode in $MODES; do
    case $mode in nfcapd/*) continue ;; esac
    printf '  %-10s %-24s vs %-14s rate %-8s CPU %-8s RSS %-8s %s\n' "$stream" "$mode" "$nf" \
      "$(ratio "$(value "$stream" "$mode" 3)" "$(value "$stream" "$nf" 3)")" \
      "$(ratio "$(value "$stream" "$nf" 4)" "$(value "$stream" "$mode" 4)")" \
      "$(ratio "$(value "$stream" "$mode" 5)" "$(value "$stream" "$nf" 5)")" \
      "$(value "$stream" "$mode" 6)"
  done
done
echo "(one run: $((SECONDS - started)) s)"
