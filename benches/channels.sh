#!/usr/bin/env bash
# What a publish to a channel costs next to a broadcast, on the same server
# with the same clients: the rooms example (examples/rooms.rs) with N clients
# of which K joined channel "c", loaded by `loadgen` twice in turn: events
# POSTed to /channels/c (K recipients; the others must receive nothing), and
# to /broadcast (all N). Prints one markdown table: server CPU per publish
# and per delivery, all-members p50 and p99 (per event, the time from its
# POST until the last recipient has it), and the ratio channel / broadcast.
#
# Usage: benches/channels.sh [--clients N] [--members K] [--events M] [--interval-ms MS]
#                            [--repeat R] [--out DIR] [-- LOADGEN_ARGS...]
# The same settings can come from the environment: CLIENTS (default 10000),
# MEMBERS (100), EVENTS (30), INTERVAL_MS (200), REPEAT (1), OUT_DIR, PORT
# (5121: below the ephemeral range, so no client socket can hold it).
#
# Every run gets a freshly started server. With --repeat R the two loads
# alternate R times and each figure is the median of R runs, "lost" and
# "at non-members" their sums. Exits 1 if the server could not be started
# or a run lost, duplicated, reordered or misdelivered anything or had a
# failed connection; the table is printed anyway.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
clients=${CLIENTS:-10000}
members=${MEMBERS:-100}
events=${EVENTS:-30}
interval_ms=${INTERVAL_MS:-200}
repeat=${REPEAT:-1}
out=${OUT_DIR:-}
port=${PORT:-5121}
extra=()

while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --members) members=$2; shift 2 ;;
        --events) events=$2; shift 2 ;;
        --interval-ms) interval_ms=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "channels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "channels.sh: $*" >&2; exit 1; }

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/ocha-channels.XXXXXX")
mkdir -p "$out"
command -v python3 >/dev/null || die "python3 is needed to build the table"
[ "$port" -lt 32768 ] || die "PORT $port is in the ephemeral range, where client sockets may hold it"

# --- build ---------------------------------------------------------------
echo "building loadgen and the rooms example (release)..." >&2
(cd "$root" && cargo build --release -p benches -p examples --bin loadgen --example rooms) >&2 ||
    die "build failed"
target=${CARGO_TARGET_DIR:-$root/target}
loadgen=$target/release/loadgen
rooms=$target/release/examples/rooms

# --- server lifecycle ----------------------------------------------------
server_pid=""

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_server LOG: starts the rooms example and waits until it accepts.
start_server() {
    local log=$1
    listening "$port" && die "port $port is already in use; set PORT"
    PORT=$port "$rooms" >"$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        listening "$port" && return 0
        kill -0 "$server_pid" 2>/dev/null || { server_pid=""; die "rooms exited before listening (log: $log)"; }
        sleep 0.1
    done
    stop_server
    die "rooms did not listen on port $port within 10 s (log: $log)"
}

# --- runs ----------------------------------------------------------------
failed=0
echo "results and logs in $out" >&2
for rep in $(seq "$repeat"); do
    for load in channel broadcast; do
        flags=(--channel c --channel-members "$members")
        [ $load = broadcast ] && flags+=(--broadcast)
        run=$out/$load-$rep
        start_server "$run.server.log"
        echo "== $load (run $rep/$repeat) on port $port, pid $server_pid:" \
            "$clients clients, $members in the channel, $events events" >&2
        rc=0
        "$loadgen" --url "http://127.0.0.1:$port" --clients "$clients" --events "$events" \
            --interval-ms "$interval_ms" --server-pid "$server_pid" --json "${flags[@]}" "${extra[@]}" \
            >"$run.json" 2>"$run.loadgen.log" || rc=$?
        stop_server
        if [ $rc -ne 0 ]; then
            failed=1
            if [ $rc -ne 1 ] || [ ! -s "$run.json" ]; then
                echo "   loadgen could not run (exit $rc):" >&2
                tail -n 5 "$run.loadgen.log" >&2
                rm -f "$run.json"
            fi
        fi
    done
done

# --- table ---------------------------------------------------------------
python3 - "$out" "$clients" "$members" "$events" "$interval_ms" "$repeat" <<'EOF'
import json, os, platform, statistics, sys

out, clients, members, events, interval_ms, repeat = sys.argv[1:7]

def load(name, rep):
    try:
        with open(os.path.join(out, f"{name}-{rep}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(report, *path):
    for key in path:
        if report is None:
            return None
        report = report.get(key)
    return report

def median(reports, *path):
    values = [v for v in (get(r, *path) for r in reports) if v is not None]
    return statistics.median(values) if values else None

def total(reports, *path):
    values = [get(r, *path) for r in reports]
    return None if None in values else sum(values)

rows = {}
for name in ("channel", "broadcast"):
    reports = [load(name, rep) for rep in range(1, int(repeat) + 1)]
    rows[name] = {
        "recipients": median(reports, "recipients"),
        "cpu_publish": median(reports, "server", "cpu_us_per_publish"),
        "cpu_delivery": median(reports, "server", "cpu_us_per_delivery"),
        "p50": median(reports, "deliveries", "all_clients_ms", "p50"),
        "p99": median(reports, "deliveries", "all_clients_ms", "p99"),
        "lost": total(reports, "deliveries", "lost"),
        "non_members": total(reports, "non_member_frames"),
        "failures": [f"run {i}: {f}" for i, r in enumerate(reports, 1)
                     for f in (get(r, "failures") or (["no result"] if r is None else []))],
    }

def fmt(v, digits):
    return "n/a" if v is None else f"{v:,.{digits}f}"

def ratio(key):
    a, b = rows["channel"][key], rows["broadcast"][key]
    return "n/a" if a is None or not b else f"{a / b:.3f}×"

runs = "one run" if repeat == "1" else f"medians of {repeat} runs"
print(f"rooms example, {clients} clients of which {members} in channel `c`; {events} events "
      f"{interval_ms} ms apart; {runs}, each on a fresh server; {os.cpu_count()} cores, "
      f"Linux {platform.release()}; server CPU from its process CPU clock, loadgen on the same machine.\n")
print("| publish | recipients | server CPU/publish (µs) | server CPU/delivery (µs) "
      "| all-members p50 (ms) | all-members p99 (ms) | lost | at non-members |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, label in (("channel", "`POST /channels/c`"), ("broadcast", "`POST /broadcast`")):
    r = rows[name]
    print(f"| {label} | {fmt(r['recipients'], 0)} | {fmt(r['cpu_publish'], 1)} | {fmt(r['cpu_delivery'], 2)} "
          f"| {fmt(r['p50'], 1)} | {fmt(r['p99'], 1)} | {'n/a' if r['lost'] is None else r['lost']} "
          f"| {'n/a' if r['non_members'] is None else r['non_members']} |")
print(f"| channel / broadcast | {ratio('recipients')} | {ratio('cpu_publish')} | {ratio('cpu_delivery')} "
      f"| {ratio('p50')} | {ratio('p99')} | | |")
notes = [(name, f) for name in rows for f in rows[name]["failures"]]
if notes:
    print()
    for name, f in notes:
        print(f"- {name}: {f}")
EOF

exit $failed
