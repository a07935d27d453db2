#!/usr/bin/env bash
# Profiles ocha-server with `perf` under the load of `loadgen`: one profile
# while the clients connect and are greeted, one while the events go out.
# Prints, per phase, the share of CPU in the kernel and in user space and
# the hottest symbols, and leaves the perf data in the output directory.
#
# Usage: benches/profile.sh [--clients N] [--events M] [--out DIR] [-- LOADGEN_ARGS...]
# CLIENTS (default 10000), EVENTS (60), PORT (5131), OUT_DIR, JWT_SECRET and
# OCHA_BIN may come from the environment. Needs `perf` (Debian: linux-perf)
# and kernel.perf_event_paranoid ≤ 2 for a process of the same user.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
clients=${CLIENTS:-10000}
events=${EVENTS:-60}
port=${PORT:-5131}
out=${OUT_DIR:-}
secret=${JWT_SECRET:-profile-secret}
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --events) events=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "profile.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "profile.sh: $*" >&2; exit 1; }
command -v perf >/dev/null || die "perf is needed (Debian: apt-get install linux-perf)"
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/ocha-profile.XXXXXX")
mkdir -p "$out"

(cd "$root" && cargo build --release -p ocha-server -p benches --bins) >&2 || die "build failed"
target=${CARGO_TARGET_DIR:-$root/target}
server=${OCHA_BIN:-$target/release/ocha-server}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

PORT=$port JWT_SECRET=$secret DATABASE_URL="sqlite:$out/profile.db" RUST_LOG=warn \
    "$server" >"$out/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || die "ocha-server exited (log: $out/server.log)"
    sleep 0.1
done

# record PHASE: samples the server until stopped with SIGINT.
record() {
    perf record -F 1999 -g -p "$server_pid" -o "$out/$1.data" >"$out/$1.perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.5 # perf attaches
}
stop_recording() { kill -INT "$perf_pid"; wait "$perf_pid" || true; }

record connect
"$target/release/loadgen" --url "http://127.0.0.1:$port" --clients "$clients" --events "$events" \
    --server-pid "$server_pid" --jwt-secret "$secret" --settle-ms 3000 "${extra[@]}" \
    >"$out/loadgen.txt" 2>"$out/loadgen.log" &
loadgen_pid=$!
pids+=("$loadgen_pid")
# The events start once the clients settled: switch profiles in between.
until grep -q "connected," "$out/loadgen.log" 2>/dev/null; do
    kill -0 "$loadgen_pid" 2>/dev/null || die "loadgen exited early (log: $out/loadgen.log)"
    sleep 0.05
done
stop_recording
record events
wait "$loadgen_pid" || die "loadgen failed: $(tail -n 3 "$out/loadgen.log")"
stop_recording

for phase in connect events; do
    echo "== $phase: kernel and user shares"
    perf report -i "$out/$phase.data" --no-children --sort dso --stdio -g none 2>/dev/null \
        | grep -E '^ +[0-9]' | head -n 6 || true
    echo "== $phase: hottest symbols (self)"
    perf report -i "$out/$phase.data" --no-children --sort sym --stdio -g none 2>/dev/null \
        | grep -E '^ +[0-9]' | head -n 30 || true
done
cat "$out/loadgen.txt"
echo "perf data in $out" >&2
