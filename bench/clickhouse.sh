#!/usr/bin/env bash
# ClickHouse sink benchmark: labelflow-collector with [clickhouse] against a ClickHouse server
# started here (own config, data directory and loopback ports; never the system service).
#
#   bench/clickhouse.sh            # ~10 minutes on a 2-core VM
#   FILL_RECORDS=2000000 bench/clickhouse.sh
#
# 1. Sustained stream: a live-shape stream (labelflow-ipfix-gen --shape live) replayed at RATE
#    records/s for DURATION seconds into a collector writing SQLite and ClickHouse. Prints the
#    records committed, the ingest rate from the first datagram until ClickHouse acknowledged
#    everything, the sink's lag (labelflow_collector_clickhouse_ack_lag_seconds, sampled
#    every 0.25 s: commit-to-acknowledgment time of the oldest batch of the last insert) at
#    its highest and on average, how long the outbox took to drain after the last datagram,
#    and the collector's CPU time. Once per shape in SHAPES (live random) and per RAWS value
#    (false true: `[clickhouse] raw`, the raw flow records also go to the `flows` table;
#    then also the raw records acknowledged and the rows of `flows` after deduplication).
# 2. 30-day store: FILL_RECORDS records of the backlog shape (random addresses and ports,
#    flow ends spread evenly over 30 days of flow time), in seeded files of
#    FILL_RECORDS/FILL_PARTS records replayed at FILL_RATE records/s, more of them while the
#    collector has committed fewer than FILL_RECORDS (UDP loses some on a busy machine) into a second collector (base bucket 1h, hosts 0.0.0.0/3: a
#    record's ends are hosts with probability 1/8 each). Then the per-host top-10 report over
#    the 30 days (JSON), REPEAT times from SQLite and from ClickHouse, the same report both
#    ways (checked equal), wall time of each run.
#
# Knobs: PHASES (1 2), SHAPES (live random), RAWS (false true), RATE (100000), DURATION (20), FILL_RECORDS
# (10000000), FILL_PARTS (5), FILL_RATE (40000), REPEAT (3), RCVBUF (33554432), BIN=DIR (prebuilt binaries).
# Needs: cargo, clickhouse-server (Debian clickhouse-server), curl, ss.
set -euo pipefail

cd "$(dirname "$0")/.."
RATE=${RATE:-100000}
SHAPES=${SHAPES:-"live random"}
RAWS=${RAWS:-"false true"}
DURATION=${DURATION:-20}
FILL_RECORDS=${FILL_RECORDS:-10000000}
FILL_PARTS=${FILL_PARTS:-5}
FILL_RATE=${FILL_RATE:-40000}
PHASES=${PHASES:-"1 2"}
REPEAT=${REPEAT:-3}
RCVBUF=${RCVBUF:-33554432}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
for tool in clickhouse-server curl ss; do
  command -v "$tool" >/dev/null || { echo "bench/clickhouse.sh: needs $tool" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release -p labelflow-collector --bins >&2
  BIN=$CARGO_TARGET_DIR/release
fi
GEN=$BIN/labelflow-ipfix-gen
COLLECTOR=$BIN/labelflow-collector

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback TCP/UDP port below the ephemeral range.
port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 10000))
    [ -z "$(ss -Htuan "sport = :$p")" ] && { echo "$p"; return; }
  done
}
metric() { curl -s "http://127.0.0.1:$2/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
now() { date +%s.%N; }
# utime + stime of all the process's threads, seconds (/proc/PID/stat fields 14 and 15,
# counted after the command name, which may hold spaces).
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.1f", ($12 + $13) / t }' "/proc/$1/stat"; }

# ClickHouse: own config, data under $WORK, HTTP on $CH_HTTP.
CH_HTTP=$(port)
CH_TCP=$(port)
mkdir -p "$WORK/ch"
cat >"$WORK/ch/config.xml" <<XML
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>$CH_HTTP</http_port><tcp_port>$CH_TCP</tcp_port>
  <interserver_http_port>$(port)</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$WORK/ch/data/</path><tmp_path>$WORK/ch/tmp/</tmp_path>
  <user_files_path>$WORK/ch/user_files/</user_files_path>
  <format_schema_path>$WORK/ch/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mlock_executable>false</mlock_executable>
</yandex>
XML
cat >"$WORK/ch/users.xml" <<XML
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
XML
clickhouse-server --config-file="$WORK/ch/config.xml" >"$WORK/ch/server.log" 2>&1 &
PIDS+=($!)
disown
for _ in $(seq 600); do
  [ "$(curl -s "http://127.0.0.1:$CH_HTTP/ping")" = "Ok." ] && break
  sleep 0.1
done
[ "$(curl -s "http://127.0.0.1:$CH_HTTP/ping")" = "Ok." ] ||
  { echo "clickhouse-server did not start:" >&2; cat "$WORK/ch/server.log" >&2; exit 1; }
CH_URL=http://127.0.0.1:$CH_HTTP
echo "ClickHouse $(curl -s "$CH_URL/" --data-binary 'SELECT version()') on $CH_URL"

# Starts a collector with config $1 (extra TOML) and database $2; sets CPID, CUDP, CHTTP.
start_collector() {
  CUDP=$(port)
  CHTTP=$(port)
  cat >"$WORK/c-$CUDP.toml" <<TOML
listen = ["127.0.0.1:$CUDP"]
http = "127.0.0.1:$CHTTP"
db = "$2"
recv_buffer = $RCVBUF
$1
TOML
  "$COLLECTOR" --config "$WORK/c-$CUDP.toml" 2>"$WORK/c-$CUDP.log" &
  CPID=$!
  PIDS+=("$CPID")
  until curl -s "http://127.0.0.1:$CHTTP/metrics" >/dev/null; do sleep 0.05; done
}
# Whether the outbox of database $1 is empty: ClickHouse acknowledged every commit.
outbox_empty() {
  [ "$(python3 -c 'import sqlite3, sys
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=10)
print(c.execute("SELECT (SELECT COUNT(*) FROM clickhouse_outbox)"
                " + (SELECT COUNT(*) FROM clickhouse_raw_outbox)").fetchone()[0])' "$1")" = 0 ]
}

for raw in $RAWS; do
for shape in $SHAPES; do
  case " $PHASES " in *" 1 "*) ;; *) break ;; esac
  echo
  echo "== 1. sustained $shape stream, raw = $raw: $RATE records/s for ${DURATION}s =="
  records=$((RATE * DURATION))
  "$GEN" generate --records "$records" --shape "$shape" --seed 1 --out "$WORK/live.bin" >/dev/null
  start_collector "[clickhouse]
  url = \"$CH_URL\"
  database = \"bench_${shape}_$raw\"
  raw = $raw
  collector_name = \"bench\"" "$WORK/live.db"
  until [ "$(metric labelflow_collector_clickhouse_errors_total "$CHTTP")" = 0 ] &&
    curl -s "$CH_URL/" --data-binary "EXISTS TABLE bench_${shape}_$raw.agg_60" | grep -q 1; do sleep 0.1; done
  t0=$(now)
  "$GEN" replay --file "$WORK/live.bin" --to "127.0.0.1:$CUDP" --rate "$RATE" >"$WORK/replay.out" &
  rp=$!
  max=0 sum=0 n=0
  while kill -0 "$rp" 2>/dev/null; do
    lag=$(metric labelflow_collector_clickhouse_ack_lag_seconds "$CHTTP")
    max=$(awk -v a="$max" -v b="$lag" 'BEGIN { print (b > a ? b : a) }')
    sum=$(awk -v a="$sum" -v b="$lag" 'BEGIN { print a + b }')
    n=$((n + 1))
    sleep 0.25
  done
  t_sent=$(now)
  # Everything received committed, then everything committed acknowledged by ClickHouse.
  until [ "$(metric labelflow_collector_committed_datagrams_total "$CHTTP")" = \
    "$(metric labelflow_collector_datagrams_total "$CHTTP")" ] && outbox_empty "$WORK/live.db"; do
    sleep 0.05
  done
  t_done=$(now)
  got=$(metric labelflow_collector_flow_records_total "$CHTTP")
  awk -v r="$got" -v s="$records" -v t0="$t0" -v ts="$t_sent" -v td="$t_done" -v max="$max" \
    -v sum="$sum" -v n="$n" 'BEGIN {
      printf "records sent %d, committed %d; UDP -> ClickHouse acknowledged: %.0f records/s over %.1f s\n",
        s, r, r / (td - t0), td - t0
      printf "sink lag while sending: max %.2f s, mean %.2f s (%d samples); drained %.2f s after the last datagram\n",
        max, (n ? sum / n : 0), n, td - ts }'
  echo "inserts $(metric labelflow_collector_clickhouse_inserts_total "$CHTTP"), rows $(metric labelflow_collector_clickhouse_sent_rows_total "$CHTTP"), errors $(metric labelflow_collector_clickhouse_errors_total "$CHTTP"), collector CPU $(cpu_s "$CPID") s"
  if [ "$raw" = true ]; then
    echo "raw records acknowledged $(metric labelflow_collector_clickhouse_raw_sent_records_total "$CHTTP"), dropped $(metric labelflow_collector_clickhouse_raw_dropped_records_total "$CHTTP"); flows rows (FINAL) $(curl -s "$CH_URL/" --data-binary "SELECT count() FROM bench_${shape}_$raw.flows FINAL"), SQLite $(du -h "$WORK/live.db" | cut -f1)"
  fi
  kill -TERM "$CPID"
  wait "$CPID" || true
  rm -f "$WORK/live.bin" "$WORK"/live.db*
done
done

case " $PHASES " in *" 2 "*) ;; *) exit 0 ;; esac
echo
echo "== 2. 30-day store: $FILL_RECORDS backlog records at $FILL_RATE records/s =="
start_collector "[hosts]
networks = [\"0.0.0.0/3\"]
[aggregation]
bucket = \"1h\"
rollups = [\"1d\"]
retention = [\"40d\", \"1095d\"]
[clickhouse]
url = \"$CH_URL\"
database = \"bench_fill\"
collector_name = \"bench\"" "$WORK/fill.db"
per=$(((FILL_RECORDS + FILL_PARTS - 1) / FILL_PARTS))
t0=$(now)
part=0
while [ "$(metric labelflow_collector_flow_records_total "$CHTTP")" -lt "$FILL_RECORDS" ]; do
  part=$((part + 1))
  "$GEN" generate --records "$per" --shape backlog --span $((30 * 86400)) --seed "$part" \
    --out "$WORK/fill.bin" >/dev/null
  "$GEN" replay --file "$WORK/fill.bin" --to "127.0.0.1:$CUDP" --rate "$FILL_RATE" >/dev/null
  rm -f "$WORK/fill.bin"
done
until [ "$(metric labelflow_collector_committed_datagrams_total "$CHTTP")" = \
  "$(metric labelflow_collector_datagrams_total "$CHTTP")" ] && outbox_empty "$WORK/fill.db"; do
  sleep 0.1
done
t_done=$(now)
got=$(metric labelflow_collector_flow_records_total "$CHTTP")
echo "flow records committed: $got of $((per * part)) sent, in $(awk -v a="$t0" -v b="$t_done" 'BEGIN { printf "%.0f", b - a }') s (including generation); SQLite $(du -h "$WORK/fill.db" | cut -f1), ClickHouse rows $(curl -s "$CH_URL/" --data-binary 'SELECT sum(rows) FROM system.parts WHERE database = '"'"'bench_fill'"'"' AND active')"
kill -TERM "$CPID"
wait "$CPID" || true
to=$(date +%s)
from=$((to - 30 * 86400))
q=(report --by host --top 10 --from "$from" --to "$to" --format json)
time_report() {
  local t s
  s=$(now)
  "$COLLECTOR" "${q[@]}" "$@" >"$WORK/out.json"
  t=$(now)
  awk -v a="$s" -v b="$t" 'BEGIN { printf "%.3f", b - a }'
}
parts() {
  curl -s "$CH_URL/" --data-binary "SELECT count(), sum(rows) FROM system.parts WHERE database = 'bench_fill' AND table = 'agg_3600' AND active" | tr '\t' ' '
}
echo "agg_3600 as the background merges left it (parts, rows): $(parts)"
c=$(time_report --clickhouse "$CH_URL" --clickhouse-database bench_fill)
echo "per-host top-10 over 30 days from ClickHouse before OPTIMIZE: ${c} s"
curl -s "$CH_URL/" --data-binary "OPTIMIZE TABLE bench_fill.agg_3600 FINAL" >/dev/null
echo "after OPTIMIZE TABLE ... FINAL (parts, rows): $(parts)"
for i in $(seq "$REPEAT"); do
  s=$(time_report --db "$WORK/fill.db"); cp "$WORK/out.json" "$WORK/sqlite.json"
  c=$(time_report --clickhouse "$CH_URL" --clickhouse-database bench_fill)
  echo "per-host top-10 over 30 days, run $i: SQLite ${s} s, ClickHouse ${c} s"
done
if cmp -s "$WORK/sqlite.json" "$WORK/out.json"; then
  echo "the two reports are identical ($(grep -c '"host"' "$WORK/out.json") host entries)"
else
  echo "the two reports DIFFER" >&2
  exit 1
fi
echo "host rows in the range: SQLite $(python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute(\"SELECT COUNT(*) FROM agg WHERE dim='host' AND res=3600\").fetchone()[0])" "$WORK/fill.db" 2>/dev/null || echo '?')"
