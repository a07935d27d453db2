#!/usr/bin/env bash
# What a second node costs and what Redis adds (issue 9): ocha-server nodes
# sharing a private Postgres and Redis, loaded by `loadgen` in three
# configurations, each run on fresh nodes and a fresh database:
#   one      one node with C clients, DATABASE_URL=postgres://… and REDIS_URL;
#   two      two nodes on the same database and Redis, C clients on each
#            (2×C in all), products POSTed to the first;
#   noredis  one node with C clients on Postgres without REDIS_URL.
# Prints one markdown table: clients, events, lost, duplicates, the time
# until all clients have an event (p50 and p99 over the events), the
# per-delivery latency (p50, p99), for two nodes each node's all-clients
# p50, then the ratios two nodes / one node and Redis / no Redis.
#
# Usage: benches/cluster.sh [--clients C] [--events M] [--interval-ms MS] [--repeat R]
#                           [--configs "one two noredis"] [--out DIR] [-- LOADGEN_ARGS...]
# The same settings can come from the environment: CLIENTS (default 15000,
# per node), EVENTS (30), INTERVAL_MS (200), REPEAT (3), CONFIGS, OUT_DIR,
# BASE_PORT (5201: node 1 takes it, node 2 the next), PG_PORT (25432),
# REDIS_PORT (26379), LISTEN_TIMEOUT_S (60), JWT_SECRET, and OCHA_BIN: the
# ocha-server binary to run (default: this checkout's release build).
#
# Two nodes take two loadgen processes: one may open 20,000 descriptors,
# fewer than 2×15,000 clients. On node 2 a `--listen-only` loadgen starts
# first; once it says it is listening, on node 1 the loadgen that POSTs,
# with the same `--run-id`, by which the listener recognises the products.
# Each product says when its POST was sent, in microseconds since the UNIX
# epoch: the realtime clock, which both processes share on one machine.
# Each process times its deliveries from that instant (converted once to its
# own monotonic clock), so the two measure from the same start:
# - the time until all 2×C clients have event k is the larger of the two
#   processes' times until all their clients have it
#   (deliveries.all_clients_per_event_ms), and the p50 and p99 are over
#   events of those;
# - the per-delivery latency percentiles come from the two processes'
#   latency histograms merged (deliveries.latency_histogram_us, latencies
#   rounded down to three significant digits, which the percentiles keep).
# The listener stops once its clients have every event, or after
# LISTEN_TIMEOUT_S without a new delivery (counted from when it listens, so
# it also bounds the POSTing loadgen's connecting). Clients spread over the
# source addresses 127.0.0.1-4 (loadgen's --source-ips), each with the
# ephemeral ports 32768-60999 towards each node.
#
# Postgres (initdb, fsync off) and Redis (no persistence) run for the whole
# script, privately in temporary directories, on PG_PORT and REDIS_PORT; as
# root, Postgres runs as the `postgres` user, since it refuses root. Missing
# programs are installed with apt-get when run as root. With --repeat R each
# figure is the median of R runs, "lost" and "duplicates" their sums. Exits
# 1 if a run lost, duplicated or reordered anything or had a failed
# connection, the table printed anyway; 2 with a message if something could
# not be started.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
clients=${CLIENTS:-15000}
events=${EVENTS:-30}
interval_ms=${INTERVAL_MS:-200}
repeat=${REPEAT:-3}
configs=${CONFIGS:-one two noredis}
out=${OUT_DIR:-}
base_port=${BASE_PORT:-5201}
pg_port=${PG_PORT:-25432}
redis_port=${REDIS_PORT:-26379}
listen_timeout_s=${LISTEN_TIMEOUT_S:-60}
secret=${JWT_SECRET:-cluster-secret}
extra=()

while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --events) events=$2; shift 2 ;;
        --interval-ms) interval_ms=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --configs) configs=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "cluster.sh: $*" >&2; exit 2; }

for c in $configs; do
    case $c in one|two|noredis) ;; *) die "unknown configuration '$c' (known: one two noredis)" ;; esac
done
for port in "$base_port" "$((base_port + 1))" "$pg_port" "$redis_port"; do
    # Client sockets take their ports from the ephemeral range, and may hold these.
    [ "$port" -lt 32768 ] || die "port $port is in the ephemeral range; choose one below 32768"
done

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/ocha-cluster.XXXXXX")
mkdir -p "$out"
command -v python3 >/dev/null || die "python3 is needed to merge the reports and build the table"

# --- programs ------------------------------------------------------------
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x "$(pg_bin)/initdb" ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install them (apt-get install -y ${missing[*]})"
    echo "installing ${missing[*]}..." >&2
    { apt-get install -y "${missing[@]}" || { apt-get update && apt-get install -y "${missing[@]}"; }; } \
        >"$out/apt-get.log" 2>&1 || die "apt-get install ${missing[*]} failed (log: $out/apt-get.log)"
fi
pg_bin=$(pg_bin)

packages=(-p benches --bin loadgen)
[ -n "${OCHA_BIN:-}" ] || packages+=(-p ocha-server --bin ocha-server)
echo "building ${packages[*]} (release)..." >&2
(cd "$root" && cargo build --release "${packages[@]}") >&2 || die "build failed"
target=${CARGO_TARGET_DIR:-$root/target}
loadgen=$target/release/loadgen
ocha=${OCHA_BIN:-$target/release/ocha-server}

# --- lifecycle -----------------------------------------------------------
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop PID: ends the process group PID leads (each is started with setsid).
stop() {
    kill -TERM -- "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

node_pids=()
listener_pid=""
redis_pid=""
pg_dir=""

stop_nodes() {
    [ -z "$listener_pid" ] || stop "$listener_pid"
    listener_pid=""
    for pid in ${node_pids[@]+"${node_pids[@]}"}; do stop "$pid"; done
    node_pids=()
}

# As root, Postgres's own programs run as the `postgres` user.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
    stop_nodes
    [ -z "$redis_pid" ] || stop "$redis_pid"
    redis_pid=""
    if [ -n "$pg_dir" ]; then
        as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
        cp "$pg_dir/postgres.log" "$out/postgres.log" 2>/dev/null || true
        rm -rf "$pg_dir"
        pg_dir=""
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# wait_listening NAME PORT PID LOG: waits until PORT accepts, or dies if PID ends.
wait_listening() {
    local name=$1 port=$2 pid=$3 log=$4 waited=0
    until listening "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            die "$name exited before listening on port $port (log: $log)"
        fi
        [ $waited -lt 600 ] || die "$name did not listen on port $port within 60 s (log: $log)"
        sleep 0.1
        waited=$((waited + 1))
    done
}

for port in "$pg_port" "$redis_port"; do
    listening "$port" && die "port $port is already in use; set PG_PORT or REDIS_PORT"
done

# Postgres: a cluster of its own in a directory only the postgres user needs.
pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/ocha-cluster-pg.XXXXXX")
[ "$(id -u)" != 0 ] || chown postgres: "$pg_dir"
echo "starting Postgres ($("$pg_bin/postgres" --version)) on port $pg_port..." >&2
as_postgres "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U ocha >"$out/initdb.log" 2>&1 ||
    die "initdb failed (log: $out/initdb.log)"
as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-c fsync=off -c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir" start >/dev/null ||
    die "Postgres did not start: $(tail -n 5 "$pg_dir/postgres.log" 2>/dev/null)"

echo "starting Redis ($(redis-server --version | cut -d' ' -f3)) on port $redis_port..." >&2
redis_dir=$out/redis
mkdir -p "$redis_dir"
setsid redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$redis_dir" >"$out/redis.log" 2>&1 &
redis_pid=$!
wait_listening redis "$redis_port" "$redis_pid" "$out/redis.log"

# start_node N DB REDIS LOG: starts node N (1 or 2) on database DB, with
# Redis if REDIS is "redis", and waits until it accepts.
start_node() {
    local n=$1 db=$2 redis=$3 log=$4 port=$((base_port + $1 - 1))
    listening "$port" && die "port $port is already in use; set BASE_PORT"
    local env=(PORT="$port" JWT_SECRET="$secret" RUST_LOG="${RUST_LOG:-warn}"
        DATABASE_URL="postgres://ocha@127.0.0.1:$pg_port/$db")
    [ "$redis" != redis ] || env+=(REDIS_URL="redis://127.0.0.1:$redis_port")
    env "${env[@]}" setsid "$ocha" >"$log" 2>&1 &
    node_pids+=($!)
    wait_listening "node $n" "$port" "$!" "$log"
}

# wait_for_listener LOG RUN_ID: waits until the listen-only loadgen says so,
# or returns 1 if it ended first.
wait_for_listener() {
    # -s: the loadgen may not have opened its log yet.
    until grep -qs "loadgen $2: listening" "$1"; do
        kill -0 "$listener_pid" 2>/dev/null || return 1
        sleep 0.1
    done
}

# check RC JSON LOG: notes a failed loadgen run; keeps its report if it made one.
failed=0
check() {
    local rc=$1 json=$2 log=$3
    [ "$rc" -ne 0 ] || return 0
    failed=1
    if [ "$rc" -ne 1 ] || [ ! -s "$json" ]; then
        echo "   loadgen could not run (exit $rc):" >&2
        tail -n 5 "$log" >&2
        rm -f "$json"
    fi
}

# --- runs ----------------------------------------------------------------
echo "results and logs in $out" >&2
common=(--clients "$clients" --events "$events" --interval-ms "$interval_ms"
    --jwt-secret "$secret" --json)
url1=http://127.0.0.1:$base_port
url2=http://127.0.0.1:$((base_port + 1))
for rep in $(seq "$repeat"); do
    for config in $configs; do
        run=$out/$config-$rep
        db=ocha_${config}_$rep
        "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U ocha "$db" ||
            die "cannot create database $db"
        redis=redis
        [ "$config" != noredis ] || redis=none
        start_node 1 "$db" "$redis" "$run.node1.log"
        nodes=1
        if [ "$config" = two ]; then
            start_node 2 "$db" "$redis" "$run.node2.log"
            nodes=2
        fi
        echo "== $config (run $rep/$repeat): $nodes node(s), $clients clients each, $events events" >&2

        run_id=c$(date +%s)r$rep
        if [ $nodes = 2 ]; then
            "$loadgen" --url "$url2" --listen-only --run-id "$run_id" --timeout-s "$listen_timeout_s" \
                --server-pid "${node_pids[1]}" "${common[@]}" ${extra[@]+"${extra[@]}"} \
                >"$run.2.json" 2>"$run.2.loadgen.log" &
            listener_pid=$!
            if ! wait_for_listener "$run.2.loadgen.log" "$run_id"; then
                rc=0
                wait "$listener_pid" || rc=$?
                listener_pid=""
                check "$rc" "$run.2.json" "$run.2.loadgen.log"
                stop_nodes
                continue
            fi
        fi
        rc=0
        "$loadgen" --url "$url1" --run-id "$run_id" --server-pid "${node_pids[0]}" \
            "${common[@]}" ${extra[@]+"${extra[@]}"} >"$run.1.json" 2>"$run.1.loadgen.log" || rc=$?
        check "$rc" "$run.1.json" "$run.1.loadgen.log"
        if [ -n "$listener_pid" ]; then
            rc=0
            wait "$listener_pid" || rc=$?
            listener_pid=""
            check "$rc" "$run.2.json" "$run.2.loadgen.log"
        fi
        stop_nodes
    done
done

# --- table ---------------------------------------------------------------
pg_version=$("$pg_bin/postgres" --version | awk '{print $3}')
redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
python3 - "$out" "$clients" "$events" "$interval_ms" "$repeat" "$pg_version" "$redis_version" \
    $configs <<'EOF'
import json, math, os, platform, statistics, sys

out, clients, events, interval_ms, repeat, pg_version, redis_version = sys.argv[1:8]
configs = sys.argv[8:]
names = {
    "one": "one node, Postgres + Redis",
    "two": "two nodes, Postgres + Redis",
    "noredis": "one node, Postgres, no Redis",
}
nodes_of = {"one": 1, "two": 2, "noredis": 1}

def load(config, rep, node):
    try:
        with open(os.path.join(out, f"{config}-{rep}.{node}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def percentile(values, p):
    """Nearest rank, as loadgen's stats::percentile."""
    if not values:
        return None
    values = sorted(values)
    rank = math.ceil(p / 100 * len(values))
    return values[min(max(rank, 1), len(values)) - 1]

def histogram_percentile(pairs, p):
    """Nearest rank over (value, count) pairs in ascending order."""
    total = sum(count for _, count in pairs)
    if total == 0:
        return None
    rank = min(max(math.ceil(p / 100 * total), 1), total)
    seen = 0
    for value, count in pairs:
        seen += count
        if seen >= rank:
            return value

def merge(reports):
    """One run's figures from its processes' reports, node 1's first."""
    per_event = zip(*(r["deliveries"]["all_clients_per_event_ms"] for r in reports))
    # An event reached all clients once it reached those of every process.
    all_have = [max(times) for times in per_event if None not in times]
    latencies = {}
    for r in reports:
        for value, count in r["deliveries"]["latency_histogram_us"]:
            latencies[value] = latencies.get(value, 0) + count
    latencies = sorted(latencies.items())
    ms = lambda us: None if us is None else us / 1000
    return {
        "clients": sum(r["connect"]["ok"] for r in reports),
        "events": reports[0]["events"] - reports[0]["posts_failed"],
        "lost": sum(r["deliveries"]["lost"] for r in reports),
        "duplicates": sum(r["duplicates"] for r in reports),
        "all_p50": percentile(all_have, 50),
        "all_p99": percentile(all_have, 99),
        "lat_p50": ms(histogram_percentile(latencies, 50)),
        "lat_p99": ms(histogram_percentile(latencies, 99)),
        "node_p50": [(r["deliveries"]["all_clients_ms"] or {}).get("p50") for r in reports],
    }

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

rows = {}
for config in configs:
    runs, failures = [], []
    for rep in range(1, int(repeat) + 1):
        reports = [load(config, rep, node) for node in range(1, nodes_of[config] + 1)]
        for node, r in enumerate(reports, 1):
            where = f"run {rep}" + (f", node {node}" if nodes_of[config] > 1 else "")
            failures += [f"{where}: {f}" for f in (["no result"] if r is None else r["failures"])]
        runs.append(None if None in reports else merge(reports))
    merged = [r for r in runs if r is not None]
    figure = lambda key: median(r[key] for r in merged)
    total = lambda key: None if len(merged) < len(runs) else sum(r[key] for r in merged)
    rows[config] = {
        "clients": figure("clients"),
        "events": figure("events"),
        "lost": total("lost"),
        "duplicates": total("duplicates"),
        **{key: figure(key) for key in ("all_p50", "all_p99", "lat_p50", "lat_p99")},
        "node_p50": [median(r["node_p50"][n] for r in merged) for n in range(nodes_of[config])],
        "failures": failures,
    }

def fmt(v, digits):
    return "n/a" if v is None else f"{v:,.{digits}f}"

def ratio(a, b, key):
    x, y = rows[a][key], rows[b][key]
    return "n/a" if x is None or not y else f"{x / y:.2f}×"

runs = "one run" if repeat == "1" else f"medians of {repeat} runs (lost and duplicates: sums)"
print(f"{clients} clients per node, {events} events {interval_ms} ms apart, POSTed to node 1; {runs}, "
      f"each on fresh nodes and a fresh database; Postgres {pg_version} (fsync off), Redis {redis_version}; "
      f"{os.cpu_count()} cores, Linux {platform.release()}; one loadgen process per node on the same machine.\n")
print("| configuration | clients | events | lost | duplicates | all-have p50 (ms) | all-have p99 (ms) "
      "| latency p50 (ms) | latency p99 (ms) | all-have p50 per node (ms) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for config in configs:
    r = rows[config]
    per_node = " / ".join(fmt(v, 1) for v in r["node_p50"]) if len(r["node_p50"]) > 1 else ""
    print(f"| {names[config]} | {fmt(r['clients'], 0)} | {fmt(r['events'], 0)} "
          f"| {'n/a' if r['lost'] is None else r['lost']} "
          f"| {'n/a' if r['duplicates'] is None else r['duplicates']} "
          f"| {fmt(r['all_p50'], 1)} | {fmt(r['all_p99'], 1)} | {fmt(r['lat_p50'], 1)} "
          f"| {fmt(r['lat_p99'], 1)} | {per_node} |")
keys = ("all_p50", "all_p99", "lat_p50", "lat_p99")
for a, b, label in (("two", "one", "two nodes / one node"), ("one", "noredis", "Redis / no Redis")):
    if a in rows and b in rows:
        print(f"| {label} | {ratio(a, b, 'clients')} | | | | "
              + " | ".join(ratio(a, b, key) for key in keys) + " | |")
notes = [(config, f) for config in configs for f in rows[config]["failures"]]
if notes:
    print()
    for config, f in notes:
        print(f"- {names[config]}: {f}")
EOF

exit $failed
