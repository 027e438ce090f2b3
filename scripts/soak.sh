#!/usr/bin/env bash
# Soak: all four filters chained in a real Envoy at --concurrency 2 (127.0.0.1 only) under a
# mix of canary keys, rate-limited keys, failing and slow upstream calls and malformed
# headers, for a fixed time; then checks that no VM failed, no unexpected 5xx came back,
# Envoy's memory stayed flat after warm-up (within 10 %), the rate limiter never admitted
# more than rate x time + burst (and, after a flood of 20,000 distinct keys before the clock
# starts, fresh keys still got their burst), the breaker's transitions match the injected failures (stats
# and log lines), and the filters log nothing per request above debug.
#
#   scripts/soak.sh [SECONDS]      default 300 (or SOAK_SECONDS); at most SOAK_MAX_REQUESTS
#                                  requests (default 1000000)
#
# SOAK_SKIP_BUILD=1 skips the wasm build (scripts/test.sh has just built dist/).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

seconds="${1:-${SOAK_SECONDS:-300}}"
max_requests="${SOAK_MAX_REQUESTS:-1000000}"

ensure_rust
ensure_binaryen
ensure_envoy

[ -n "${SOAK_SKIP_BUILD:-}" ] || scripts/build.sh
say "building the soak driver"
cargo build --quiet --locked -p mesh-integration --bin soak
say "soak: ${seconds} s"
"${CARGO_TARGET_DIR:-target}/debug/soak" --seconds "$seconds" --max-requests "$max_requests"
