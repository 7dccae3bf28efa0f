#!/usr/bin/env bash
# Soak: the probe and the collector under continuous mixed traffic in the kernel lab, the
# collector SIGKILLed and restarted every few minutes, then checked against the probe and the
# kernel. Run by hand, as root:
#
#   bench/soak.sh                          # 30 minutes of restarts, then a final phase
#   SOAK_SECONDS=180 bench/soak.sh         # a short one
#
# The deployment is examples/ipsec-gateway (its rules, probe and collector configuration) in a
# lab of network namespaces; `labelflow-lab traffic --mix ipsec` runs round after round
# (tunnel traffic with each packet also sent as its ESP packet, other uplink traffic, UDP,
# TCP, ICMP, IPv4 and IPv6).
#
# Phase 1, SOAK_SECONDS: every RESTART_EVERY seconds (a seeded few seconds of jitter) the
# collector is SIGKILLed, stays down DOWN_SECONDS (the probe keeps exporting into the void),
# and is started again on the same database. At the end the traffic stops, the probe is
# stopped with SIGTERM (it flushes its flow cache and logs `exported_records`), and once the
# collector has committed all it received:
#
#   records committed (flows in the per-label rows) + records counted missing (the
#   collector's per-exporter sequence-gap counter) == records the probe exported
#
# Every record the probe exported is either in the store or in the gap count: those that
# arrived while the collector was down, and those it had received but not committed when it
# was killed (the sequence state is committed with the counts, so the restarted collector
# expects the sequence number after the last committed datagram). The gap counter is read
# from `/metrics` before every kill and at the end and summed over the collector's lives.
#
# Phase 2, FINAL_SECONDS without restarts, on a fresh database and a fresh probe, with the
# rules reloaded (kernel counters from zero): the per-label totals in the store must equal
# the kernel's per-rule counters, and again committed + missing == exported (missing 0).
#
# The probe's templates and options go out at start and at shutdown only (template_refresh
# of a day), both while the collector is up: the gap count then holds flow records alone.
#
# Environment: SOAK_SECONDS (1800), RESTART_EVERY (180, at most a quarter of SOAK_SECONDS),
# DOWN_SECONDS (1), FINAL_SECONDS (120, at most SOAK_SECONDS), SEED (1, the jitter),
# ACTIVE_TIMEOUT (5s) and IDLE_TIMEOUT (2s) of the probe's flow cache,
# FIREWALL (iptables or nft), LABELFLOW_BIN (prebuilt release binaries), KEEP=1 (leave the lab).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SOAK_SECONDS=${SOAK_SECONDS:-1800}
quarter=$((SOAK_SECONDS / 4))
RESTART_EVERY=${RESTART_EVERY:-$((quarter < 180 ? (quarter > 5 ? quarter : 5) : 180))}
DOWN_SECONDS=${DOWN_SECONDS:-1}
FINAL_SECONDS=${FINAL_SECONDS:-$((SOAK_SECONDS < 120 ? SOAK_SECONDS : 120))}
SEED=${SEED:-1}
ACTIVE_TIMEOUT=${ACTIVE_TIMEOUT:-5s}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-2s}
RANDOM=$SEED

[ "$(id -u)" -eq 0 ] || { echo "bench/soak.sh: needs root (network namespaces, NFLOG)" >&2; exit 1; }
for tool in curl awk; do
  command -v "$tool" >/dev/null || { echo "bench/soak.sh: needs $tool" >&2; exit 1; }
done
if [ -z "${LABELFLOW_BIN:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  cargo build --release --quiet -p labelflow-probe -p labelflow-collector -p labelflow-tests --bins
  export LABELFLOW_BIN=$CARGO_TARGET_DIR/release
fi

EXAMPLE=soak
EXAMPLE_DIR=$ROOT/examples/ipsec-gateway
. "$ROOT/examples/lib.sh"
lf_binaries
lf_require_lab rules-file counters-all
lf_up
TRAFFIC_PID=""
# lf_cleanup takes the exit status from $? and ends with it.
soak_cleanup() {
  local rc=$?
  set +e
  soak_traffic_stop
  (exit $rc)
  lf_cleanup
}
trap soak_cleanup EXIT

# The example's probe configuration with templates and options sent only at start and at
# shutdown (see above), and flows exported after ACTIVE_TIMEOUT / IDLE_TIMEOUT (the lab's
# rounds reuse their 5-tuples: with the example's 60 s / 15 s a short soak exports little).
sed -e 's/^mtu = 1400$/mtu = 1400\ntemplate_refresh = "24h"\ntemplate_refresh_messages = 4294967295/' \
  -e "s/^active_timeout = .*/active_timeout = \"$ACTIVE_TIMEOUT\"/" \
  -e "s/^idle_timeout = .*/idle_timeout = \"$IDLE_TIMEOUT\"/" \
  "$EXAMPLE_DIR/probe.toml" >"$WORK/probe.toml"
grep -q '^template_refresh = "24h"' "$WORK/probe.toml" ||
  lf_die "could not set template_refresh in a copy of $EXAMPLE_DIR/probe.toml"

log() { printf '[%5ds] %s\n' "$((SECONDS - T0))" "$*"; }
T0=$SECONDS

# The collector's HTTP side, inside the gateway (collector.toml: http = 127.0.0.1:8080).
metrics() { ip netns exec "$GW_NS" curl -s --max-time 2 http://127.0.0.1:8080/metrics; }
metric() { metrics | awk -v m="labelflow_collector_$1" '$1 == m { print $2 }'; }

# Starts the collector on database $1 and waits for its HTTP side.
collector_start() {
  (cd "$WORK" && exec ip netns exec "$GW_NS" "$COLLECTOR" --config "$EXAMPLE_DIR/collector.toml" \
    --db "$1" >>"$WORK/collector.log" 2>&1) &
  COLLECTOR_PID=$!
  local n=0
  until metrics >/dev/null 2>&1 && [ -n "$(metric datagrams_total)" ]; do
    kill -0 "$COLLECTOR_PID" 2>/dev/null || lf_die "the collector exited at start (log: $WORK/collector.log)"
    [ $n -lt 200 ] || lf_die "the collector's /metrics did not answer within 20 s"
    sleep 0.1; n=$((n + 1))
  done
}

# Starts the probe (log $1) and waits until it has bound the example's groups.
probe_start() {
  ip netns exec "$GW_NS" "$PROBE" --config "$WORK/probe.toml" >"$1" 2>&1 &
  PROBE_PID=$!
  "$LABCLI" ready --lab "$LAB" --groups 1,2,3 --timeout 10 ||
    { cat "$1" >&2; lf_die "the probe did not bind groups 1,2,3"; }
}

# SIGTERM to the probe; sets EXPORTED to the flow records it exported (its last stats line).
probe_stop() {
  kill -TERM "$PROBE_PID"
  local rc=0
  wait "$PROBE_PID" || rc=$?
  [ $rc -eq 0 ] || lf_die "the probe exited with status $rc (log: $1)"
  PROBE_PID=""
  EXPORTED=$(sed -n 's/.*exported_records=\([0-9]*\).*/\1/p' "$1" | tail -1)
  [ -n "$EXPORTED" ] || lf_die "no exported_records in the probe's log $1"
}

soak_traffic_start() {
  rm -f "$WORK/traffic.stop"
  (
    rounds=0
    while [ ! -e "$WORK/traffic.stop" ]; do
      "$LABCLI" traffic --lab "$LAB" --mix ipsec >/dev/null 2>>"$WORK/traffic.log" ||
        echo "round $rounds failed" >>"$WORK/traffic.log"
      rounds=$((rounds + 1))
    done
    echo "$rounds" >"$WORK/traffic.rounds"
  ) &
  TRAFFIC_PID=$!
}

soak_traffic_stop() {
  [ -n "${TRAFFIC_PID:-}" ] || return 0
  touch "$WORK/traffic.stop"
  wait "$TRAFFIC_PID" || true
  TRAFFIC_PID=""
}

# Waits until the collector has committed every datagram it received (or counted it as
# dropped by its spool) and nothing more has arrived for 2 s (the probe is stopped by then);
# bounded.
collector_settle() {
  local n=0 last="" same=0 d c x
  while [ $n -lt 300 ]; do
    d=$(metric datagrams_total); c=$(metric committed_datagrams_total)
    x=$(metric spool_dropped_datagrams_total)
    if [ -n "$d" ] && [ "$d" = "$((c + ${x:-0}))" ] && [ "$d" = "$last" ]; then
      same=$((same + 1))
      [ $same -ge 10 ] && return 0
    else
      same=0
    fi
    last=$d
    sleep 0.2; n=$((n + 1))
  done
  lf_die "the collector did not commit what it received within 60 s"
}

# Flow records committed to database $1: the per-label rows' flow counts (one per record).
committed_records() {
  "$COLLECTOR" report --db "$1" --by label --last 2d --format csv | lf_csv_totals label |
    awk '{ f += $4 } END { print f + 0 }'
}

# Prints the check committed + missing == exported; $1 phase name, $2 db, $3 exported,
# $4 missing. Returns non-zero on a difference.
check_accounting() {
  local committed; committed=$(committed_records "$2")
  printf '%s: committed %d + counted missing %d = %d; the probe exported %d: ' \
    "$1" "$committed" "$4" "$((committed + $4))" "$3"
  if [ $((committed + $4)) -eq "$3" ]; then echo OK; return 0; fi
  echo "DIFFERS by $((committed + $4 - $3))"
  return 1
}

status=0
echo "== soak: $SOAK_SECONDS s with a collector SIGKILL every ~$RESTART_EVERY s (down $DOWN_SECONDS s), then $FINAL_SECONDS s without"

# ---- phase 1: restarts
DB1=$WORK/soak.db
collector_start "$DB1"
probe_start "$WORK/probe1.log"
lf_rules
soak_traffic_start
log "phase 1: traffic running, collector pid $COLLECTOR_PID"
missing=0 kills=0
end=$((SECONDS + SOAK_SECONDS))
while :; do
  next=$((SECONDS + RESTART_EVERY + RANDOM % 5))
  [ $next -lt $end ] || break
  while [ $SECONDS -lt $next ]; do sleep 0.5; done
  lost=$(metric sequence_lost_total); recv=$(metric flow_records_total)
  kill -KILL "$COLLECTOR_PID"; wait "$COLLECTOR_PID" 2>/dev/null || true
  kills=$((kills + 1)) missing=$((missing + ${lost:-0}))
  log "SIGKILL $kills: this life received ${recv:-?} records, counted ${lost:-?} missing"
  sleep "$DOWN_SECONDS"
  collector_start "$DB1"
  log "restarted: pid $COLLECTOR_PID ($(grep -c 'recovered the committed state' "$WORK/collector.log") starts so far)"
done
while [ $SECONDS -lt $end ]; do sleep 0.5; done
soak_traffic_stop
log "phase 1 traffic stopped after $(cat "$WORK/traffic.rounds") rounds"
lf_freeze_counters
probe_stop "$WORK/probe1.log"
collector_settle
lost=$(metric sequence_lost_total); missing=$((missing + ${lost:-0}))
log "phase 1 done: $kills kills; the last life counted ${lost:-?} missing"
kill -TERM "$COLLECTOR_PID"; wait "$COLLECTOR_PID" || lf_die "the collector exited with status $?"
COLLECTOR_PID=""
check_accounting "phase 1 (with restarts)" "$DB1" "$EXPORTED" "$missing" || status=1

# ---- phase 2: no restarts, against the kernel's counters
DB2=$WORK/final.db
collector_start "$DB2"
probe_start "$WORK/probe2.log"
# Loaded again: the same rules, their counters from zero.
lf_rules
soak_traffic_start
log "phase 2: traffic running for $FINAL_SECONDS s, no restarts"
end=$((SECONDS + FINAL_SECONDS))
while [ $SECONDS -lt $end ]; do sleep 0.5; done
soak_traffic_stop
lf_freeze_counters
probe_stop "$WORK/probe2.log"
collector_settle
lost=$(metric sequence_lost_total)
kill -TERM "$COLLECTOR_PID"; wait "$COLLECTOR_PID" || lf_die "the collector exited with status $?"
COLLECTOR_PID=""
log "phase 2 done after $(cat "$WORK/traffic.rounds") rounds"
check_accounting "phase 2 (no restarts)" "$DB2" "$EXPORTED" "${lost:-0}" || status=1

echo
echo "== phase 2 per label: kernel counters (labelflow-count:LABEL) vs collector report"
"$COLLECTOR" report --db "$DB2" --by label --last 2d --format csv | lf_csv_totals label >"$WORK/labels.txt"
lf_compare "$WORK/labels.txt" "$WORK/kernel.txt" "labelflow-count:" || status=1
grep -h -i -E "lost|gap|enobufs" "$WORK/probe1.log" "$WORK/probe2.log" | tail -4 || true

[ $status -eq 0 ] || lf_die "soak FAILED (logs in $WORK)"
echo "soak: OK"
