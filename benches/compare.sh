#!/usr/bin/env bash
# Runs ocha-server, the Node `ws` reference and the one-thread floor one after
# another under the same load (the `loadgen` binary, latency and back-to-back
# modes) and prints one markdown table of the figures, with ratios to Node.
# Server `ocha-sse` is ocha-server again, its clients reading Server-Sent
# Events (`loadgen --sse`) instead of WebSocket frames; given both `ocha` and
# `ocha-sse`, the table adds their ratios.
#
# Usage: benches/compare.sh [--clients N] [--events M] [--interval-ms MS] [--repeat R]
#                           [--servers "ocha node floor"] [--modes "interval b2b"]
#                           [--out DIR] [-- LOADGEN_ARGS...]
# The same settings can come from the environment: CLIENTS (default 10000),
# EVENTS (30), INTERVAL_MS (200), REPEAT (1), SERVERS (ocha node floor; ocha-sse
# on request), MODES, OUT_DIR, BASE_PORT (5111: ocha takes it, node +1, floor
# +2, ocha-sse +3), ANCHORS (default ../shared/anchors beside the repository),
# JWT_SECRET, and OCHA_BIN: the ocha-server binary to run (default: this
# checkout's release build, in CARGO_TARGET_DIR if set), to measure another
# version with the same loadgen.
#
# Every run gets a freshly started server, so that RSS is measured from a
# clean baseline and nothing is left over from the previous run (the floor
# never notices closed clients and would run out of file descriptors). With
# --repeat R each figure is the median of R runs, and "lost" their sum.
# Exits 1 if a server could not be started or a run lost, duplicated or
# reordered anything or had a failed connection; the table is printed anyway.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
clients=${CLIENTS:-10000}
events=${EVENTS:-30}
interval_ms=${INTERVAL_MS:-200}
repeat=${REPEAT:-1}
servers=${SERVERS:-ocha node floor}
modes=${MODES:-interval b2b}
out=${OUT_DIR:-}
base_port=${BASE_PORT:-5111}
anchors=${ANCHORS:-$root/../shared/anchors}
secret=${JWT_SECRET:-compare-secret}
extra=()

while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --events) events=$2; shift 2 ;;
        --interval-ms) interval_ms=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --servers) servers=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "compare.sh: $*" >&2; exit 1; }

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/ocha-compare.XXXXXX")
mkdir -p "$out"
command -v python3 >/dev/null || die "python3 is needed to build the table"

# --- build ---------------------------------------------------------------
packages=(-p benches)
[[ " $servers " == *" ocha "* || " $servers " == *" ocha-sse "* ]] && packages+=(-p ocha-server)
echo "building ${packages[*]} (release)..." >&2
(cd "$root" && cargo build --release "${packages[@]}" --bins) >&2 || die "build failed"
target=${CARGO_TARGET_DIR:-$root/target}
loadgen=$target/release/loadgen
for s in $servers; do
    case $s in
        node) [ -x "$anchors/node-ws/run.sh" ] || die "no Node reference at $anchors/node-ws (set ANCHORS)" ;;
        floor) [ -x "$anchors/rust-floor/run.sh" ] || die "no floor at $anchors/rust-floor (set ANCHORS)" ;;
        ocha|ocha-sse) ;;
        *) die "unknown server '$s' (known: ocha node floor ocha-sse)" ;;
    esac
done

# --- server lifecycle ----------------------------------------------------
server_pid=""

stop_server() {
    [ -n "$server_pid" ] || return 0
    # Each server runs in its own session, so its whole process group goes.
    kill -TERM -- "-$server_pid" 2>/dev/null || kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_server NAME PORT LOG DB: starts NAME in the background, sets
# server_pid to the PID of the process that listens, waits until it accepts.
start_server() {
    local name=$1 port=$2 log=$3 db=$4
    listening "$port" && die "port $port is already in use; set BASE_PORT"
    case $name in
        ocha|ocha-sse) PORT=$port JWT_SECRET=$secret DATABASE_URL=sqlite:$db RUST_LOG=${RUST_LOG:-warn} \
                  setsid "${OCHA_BIN:-$target/release/ocha-server}" >"$log" 2>&1 & ;;
        node) PORT=$port JWT_SECRET=$secret setsid "$anchors/node-ws/run.sh" >"$log" 2>&1 & ;;
        floor) PORT=$port setsid "$anchors/rust-floor/run.sh" >"$log" 2>&1 & ;;
    esac
    server_pid=$!
    # Generous: the floor's run.sh compiles it the first time, Node's may run npm ci.
    local waited=0
    until listening "$port"; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            server_pid=""
            die "$name exited before listening on port $port (log: $log)"
        fi
        [ $waited -lt 6000 ] || { stop_server; die "$name did not listen on port $port within 600 s (log: $log)"; }
        sleep 0.1
        waited=$((waited + 1))
    done
    # The run.sh wrappers exec the server, but ask the kernel who listens to be sure.
    local listener
    listener=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true)
    measured_pid=${listener:-$server_pid}
}

# --- runs ----------------------------------------------------------------
failed=0
echo "results and logs in $out" >&2
# Repetitions outermost: the servers take turns, so that a change in the
# load of the two shared cores falls on all of them alike.
for rep in $(seq "$repeat"); do
    for s in $servers; do
        case $s in
            ocha) port=$base_port ;;
            node) port=$((base_port + 1)) ;;
            floor) port=$((base_port + 2)) ;;
            ocha-sse) port=$((base_port + 3)) ;;
        esac
        for mode in $modes; do
            flags=(--interval-ms "$interval_ms")
            [ $mode = b2b ] && flags=(--back-to-back)
            [ $s = ocha-sse ] && flags+=(--sse)
            run=$out/$s-$mode-$rep
            rm -f "$run.db"
            start_server "$s" "$port" "$run.server.log" "$run.db"
            echo "== $s ($mode, run $rep/$repeat) on port $port, pid $measured_pid:" \
                "$clients clients × $events events" >&2
            rc=0
            "$loadgen" --url "http://127.0.0.1:$port" --clients "$clients" --events "$events" \
                --server-pid "$measured_pid" --jwt-secret "$secret" --json "${flags[@]}" "${extra[@]}" \
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
done

# --- table ---------------------------------------------------------------
MODES="$modes" python3 - "$out" "$clients" "$events" "$interval_ms" "$repeat" $servers <<'EOF'
import json, os, platform, statistics, sys

out, clients, events, interval_ms, repeat = sys.argv[1:6]
servers = sys.argv[6:]
modes = os.environ["MODES"].split()
names = {"ocha": "ocha-server", "node": "Node http + `ws`", "floor": "floor (one thread, direct writes)",
         "ocha-sse": "ocha-server, Server-Sent Events"}

def load(server, mode, rep):
    try:
        with open(os.path.join(out, f"{server}-{mode}-{rep}.json")) as f:
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

rows = {}
for s in servers:
    reps = range(1, int(repeat) + 1)
    lat = [load(s, "interval", i) for i in reps] if "interval" in modes else []
    b2b = [load(s, "b2b", i) for i in reps] if "b2b" in modes else []
    lost = [get(r, "deliveries", "lost") for r in lat + b2b]
    rows[s] = {
        # Every run measures idle RSS first; interval runs when there are.
        "rss": median(lat or b2b, "server", "rss_per_idle_conn_kib"),
        "rss_drained": median(b2b, "server", "rss_per_conn_drained_kib"),
        "cpu": median(lat, "server", "cpu_us_per_delivery"),
        "connect": median(lat + b2b, "server", "cpu_us_per_connect"),
        "all_p50": median(lat, "deliveries", "all_clients_ms", "p50"),
        "p99": median(lat, "deliveries", "latency_ms", "p99"),
        "rate": median(b2b, "deliveries", "deliveries_per_s"),
        "lost": None if None in lost else sum(lost),
        "slow_closed": median(lat + b2b, "slow", "closed"),
        "slow_requested": median(lat + b2b, "slow", "requested"),
        "peak_mib": (lambda kib: None if kib is None else kib / 1024)(median(lat + b2b, "server", "rss_peak_kib")),
        "failures": [f"{mode} run {i}: {f}"
                     for mode, runs in (("interval", lat), ("b2b", b2b))
                     for i, r in zip(reps, runs)
                     for f in (get(r, "failures") or (["no result"] if r is None else []))],
    }

def fmt(v, digits):
    return "n/a" if v is None else f"{v:,.{digits}f}"

def ratio(v, ref):
    return "n/a" if v is None or not ref else f"{v / ref:.2f}×"

node = rows.get("node", {})
runs = "one run" if repeat == "1" else f"median of {repeat} runs"
print(f"{clients} clients, {events} events ({interval_ms} ms apart for latency, back-to-back for throughput), "
      f"{runs} per mode, each on a fresh server; {os.cpu_count()} cores, Linux {platform.release()}; "
      f"server CPU and RSS from /proc, loadgen (one thread) on the same machine.\n")
print("| server | RSS/idle conn (KiB) | RSS/conn after b2b drained (KiB) | CPU/delivery (µs) | CPU vs Node "
      "| all-clients p50 (ms) | p99 latency (ms) | deliveries/s (b2b) | b2b vs Node "
      "| CPU/connect (µs) | connect vs Node | lost |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in servers:
    r = rows[s]
    print(f"| {names.get(s, s)} | {fmt(r['rss'], 2)} | {fmt(r['rss_drained'], 2)} "
          f"| {fmt(r['cpu'], 2)} | {ratio(r['cpu'], node.get('cpu'))} "
          f"| {fmt(r['all_p50'], 1)} | {fmt(r['p99'], 1)} | {fmt(r['rate'], 0)} "
          f"| {ratio(r['rate'], node.get('rate'))} | {fmt(r['connect'], 1)} | {ratio(r['connect'], node.get('connect'))} "
          f"| {'n/a' if r['lost'] is None else r['lost']} |")
if "ocha" in rows and "ocha-sse" in rows:
    ws, sse = rows["ocha"], rows["ocha-sse"]
    print(f"| SSE / WebSocket | {ratio(sse['rss'], ws['rss'])} | {ratio(sse['rss_drained'], ws['rss_drained'])} "
          f"| {ratio(sse['cpu'], ws['cpu'])} | | {ratio(sse['all_p50'], ws['all_p50'])} "
          f"| {ratio(sse['p99'], ws['p99'])} | {ratio(sse['rate'], ws['rate'])} | "
          f"| {ratio(sse['connect'], ws['connect'])} | | |")
# Issue 11's targets, where the servers they compare with took part.
floor = rows.get("floor", {})
ocha, sse = rows.get("ocha"), rows.get("ocha-sse")
targets = []
def target(name, value, unit, ref_name, ref, bound, at_most=True):
    if value is None:
        return
    r = None if ref is None else (value / ref if ref else None)
    measured = r if ref is not None else value
    met = None if measured is None else (measured <= bound if at_most else measured >= bound)
    shown_ref = "" if ref is None else f"{ref_name} {fmt(ref, 2)}"
    goal = (f"≤ {bound}" if at_most else f"≥ {bound}") + ("×" if ref is not None else f" {unit}")
    targets.append(f"| {name} | {fmt(value, 2)} {unit} | {shown_ref} | {ratio(value, ref) if ref is not None else ''} "
                   f"| {goal} | {'n/a' if met is None else ('yes' if met else 'no')} |")
if ocha:
    target("RSS per idle connection", ocha["rss"], "KiB", "", None, 1.0)
    target("RSS per connection after b2b drained", ocha["rss_drained"], "KiB", "idle", ocha["rss"], 1.1)
    if floor:
        target("CPU per delivery", ocha["cpu"], "µs", "floor", floor.get("cpu"), 1.15)
        target("all-clients p50", ocha["all_p50"], "ms", "floor", floor.get("all_p50"), 1.1)
        target("deliveries/s back to back", ocha["rate"], "/s", "floor", floor.get("rate"), 1.0, at_most=False)
    if node:
        target("p99 latency", ocha["p99"], "ms", "Node", node.get("p99"), 1.0)
        target("CPU to accept and greet", ocha["connect"], "µs", "Node", node.get("connect"), 0.25)
    if sse:
        target("SSE RSS per idle connection", sse["rss"], "KiB", "WebSocket", ocha["rss"], 1.3)
        target("SSE CPU per delivery", sse["cpu"], "µs", "WebSocket", ocha["cpu"], 1.3)
if targets:
    print()
    print("| target | ocha-server | compared with | ratio | goal | met |")
    print("|---|---:|---:|---:|---:|---|")
    print("\n".join(targets))
slow = [s for s in servers if rows[s]["slow_requested"]]
if slow:
    print()
    for s in slow:
        r = rows[s]
        print(f"- {names.get(s, s)}: {fmt(r['slow_closed'], 0)} of {fmt(r['slow_requested'], 0)} clients "
              f"that never read were closed by the server; server peak RSS {fmt(r['peak_mib'], 1)} MiB.")
notes = [(s, f) for s in servers for f in rows[s]["failures"]]
if notes:
    print()
    for s, f in notes:
        print(f"- {names.get(s, s)}: {f}")
EOF

exit $failed
