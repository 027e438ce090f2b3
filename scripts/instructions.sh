#!/usr/bin/env bash
# Envoy's instructions per request, counted by valgrind's callgrind (not a test, not a timing):
# what each variant adds to bare Envoy in instructions executed, deterministic where the
# benchmark's CPU times swing by tens of percent on this machine. Each variant runs in its own
# Envoy (--concurrency 1) under callgrind, with the benchmark's policies (bench/policies.json)
# on a route named `bench` in front of the echo upstream; 8 curl clients send the requests
# the benchmark sends (x-user-id, x-api-key). Counting starts after a warm-up (V8 has compiled
# the module, every record exists) and covers exactly the measured requests; the figure is
# every instruction of the Envoy process (its threads, its modules, JIT code) over them;
# repeated runs agree within a few percent (the table says how far).
#
#   scripts/instructions.sh                         # every variant, 800 requests, the table
#   scripts/instructions.sh --out bench/instructions.md
#   scripts/instructions.sh --requests 400 --dist /tmp/old-dist bare native_bundle native_quiet
#   scripts/instructions.sh --keep /tmp/cg native_bundle   # then: callgrind_annotate --inclusive=yes /tmp/cg/native_bundle.callgrind
#
# Instructions are not CPU time: a Wasm module's cost is also in entering and leaving V8
# (bench/results.md measures time). They show where a native module's time goes, and whether
# a change of ours cut work, without the noise.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

requests=800
clients=8
dist="$ROOT/dist"
out=""
keep=""
variants=()
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests="$2"; shift 2 ;;
    --dist) dist="$(cd "$2" && pwd)"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --keep) keep="$2"; mkdir -p "$keep"; shift 2 ;;
    -*) die "unknown argument $1 (see the comment at the top of $0)" ;;
    *) variants+=("$1"); shift ;;
  esac
done
# What each variant is, in the table.
declare -A what=(
  [bare]="no HTTP filter but the router"
  [passthrough]="empty proxy-wasm filter, SDK only"
  [native_idle]="the native module loaded, no stage for the route: the ABI's own cost"
  [native_bundle]="the four as the native dynamic module"
  [native_quiet]='native_bundle without the three `x-ratelimit-*` response headers (`rate_limit_headers: false`)'
  [bundle]="the four as the Wasm bundle"
)
[ ${#variants[@]} -gt 0 ] || variants=(bare passthrough native_idle native_bundle native_quiet bundle)
for variant in "${variants[@]}"; do
  [ -n "${what[$variant]:-}" ] || die "unknown variant $variant (${!what[*]})"
done
[ $((requests % clients)) -eq 0 ] || die "--requests must be a multiple of $clients"

ensure_envoy
ensure_apt valgrind valgrind
ensure_apt jq jq
ensure_apt curl curl
[ -f "$dist/bundle.wasm" ] || scripts/build.sh
cargo build --quiet --locked -p mesh-integration --bin echo
echo_bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/echo"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The HTTP filters of a variant, as JSON.
filters() {
  local bundle
  bundle="$(jq -c '{traceid, canary, ratelimit, breaker}' bench/policies.json)"
  local wasm='{name: ("mesh." + $m), typed_config: {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
    config: {name: ("mesh." + $m), root_id: "", configuration: {"@type": "type.googleapis.com/google.protobuf.StringValue", value: $c},
      vm_config: {runtime: "envoy.wasm.runtime.v8", code: {local: {filename: ($d + "/" + $m + ".wasm")}}}}}}'
  local native='{name: "mesh.bundle", typed_config: {"@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
    dynamic_module_config: {module: {local: {filename: ($d + "/libmesh_bundle.so")}}}, filter_name: "mesh.bundle",
    filter_config: {"@type": "type.googleapis.com/google.protobuf.StringValue", value: $c}}}'
  case "$1" in
    bare) echo '[]' ;;
    passthrough) jq -nc --arg m passthrough --arg c "" --arg d "$dist" "[$wasm]" ;;
    bundle) jq -nc --arg m bundle --arg c "$bundle" --arg d "$dist" "[$wasm]" ;;
    native_idle) jq -nc --arg c '{"traceid": {"routes": {"elsewhere": {}}}}' --arg d "$dist" "[$native]" ;;
    native_bundle) jq -nc --arg c "$bundle" --arg d "$dist" "[$native]" ;;
    native_quiet) jq -nc --arg c "$(jq -c '.ratelimit.routes.bench.rate_limit_headers = false' <<< "$bundle")" \
      --arg d "$dist" "[$native]" ;;
    *) die "unknown variant $1 (${!what[*]})" ;;
  esac
}

# Sends `count` requests from $clients clients; every answer must be a 200.
load() {
  local count=$1 port=$2 each=$(($1 / clients)) i senders=()
  for i in $(seq "$clients"); do
    curl -s -o /dev/null -w '%{http_code}\n' -H 'x-user-id: user-1' -H 'x-api-key: key-1' \
      --max-time 600 "http://127.0.0.1:$port/[1-$each]" > "$work/codes.$i" &
    senders+=($!)
  done
  wait "${senders[@]}"
  local answers
  answers="$(cat "$work"/codes.* | sort | uniq -c | tr -s ' ')"
  [ "$answers" = " $count 200" ] || die "expected $count answers 200, got: $answers"
}

# Envoy's instructions per request for one variant.
measure() {
  local variant=$1 up=$2 listen admin config="$work/$1.json" cg="$work/$1.callgrind"
  listen="$(free_port)"; admin="$(free_port)"
  jq -n --argjson filters "$(filters "$variant")" --argjson listen "$listen" --argjson admin "$admin" \
    --argjson up "$up" '{
    admin: {address: {socket_address: {address: "127.0.0.1", port_value: $admin}}},
    static_resources: {
      listeners: [{name: "bench", address: {socket_address: {address: "127.0.0.1", port_value: $listen}},
        filter_chains: [{filters: [{name: "envoy.filters.network.http_connection_manager", typed_config: {
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
          stat_prefix: "bench",
          route_config: {name: "bench", virtual_hosts: [{name: "bench", domains: ["*"],
            routes: [{name: "bench", match: {prefix: "/"}, route: {cluster: "upstream"}}]}]},
          http_filters: ($filters + [{name: "envoy.filters.http.router", typed_config: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])}}]}]}],
      clusters: [{name: "upstream", type: "STATIC", connect_timeout: "1s", load_assignment: {cluster_name: "upstream",
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "127.0.0.1", port_value: $up}}}}]}]}}]}}' \
    > "$config"
  valgrind --tool=callgrind --instr-atstart=no --smc-check=all-non-file \
    --callgrind-out-file="$cg" "$MESH_ENVOY" -c "$config" --concurrency 1 -l error \
    > "$work/$variant.log" 2>&1 &
  local envoy=$!
  pids+=("$envoy")
  wait_http "http://127.0.0.1:$admin/ready" 600 "$envoy" || die "$variant: Envoy did not start ($work/$variant.log)"
  load "$((clients * 12))" "$listen"
  callgrind_control -i on "$envoy" > /dev/null
  load "$((clients * 25))" "$listen"
  callgrind_control -z "$envoy" > /dev/null
  load "$requests" "$listen"
  callgrind_control -d "$envoy" > /dev/null
  kill "$envoy"
  wait "$envoy" 2>/dev/null || true
  local dumped
  dumped="$(grep -l 'Trigger: dump' "$cg".* | head -1)"
  [ -n "$dumped" ] || die "$variant: no callgrind dump"
  [ -z "$keep" ] || cp "$dumped" "$keep/$variant.callgrind"
  local total
  total="$(awk '/^summary:/ {print $2}' "$dumped")"
  echo $((total / requests))
}

"$echo_bin" v1 127.0.0.1:0 > "$work/echo.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  up="$(grep -o '127.0.0.1:[0-9]*' "$work/echo.log" | head -1 | cut -d: -f2)" && [ -n "$up" ] && break
  sleep 0.1
done
[ -n "${up:-}" ] || die "the echo upstream did not start"

declare -A per_request
for variant in "${variants[@]}"; do
  say "$variant: $requests requests under callgrind"
  per_request[$variant]="$(measure "$variant" "$up")"
done

bare="${per_request[bare]:-}"
{
  echo "# Envoy instructions per request"
  echo
  echo "Written by \`scripts/instructions.sh\` ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- shared filters || echo ' with uncommitted changes')): every instruction"
  echo "of the Envoy process (valgrind $(valgrind --version | sed 's/valgrind-//'), callgrind) over $requests requests from $clients clients after a warm-up,"
  echo "divided by $requests; one Envoy $("$MESH_ENVOY" --version | sed -n 's|.*version: [^/]*/\([0-9.]*\)/.*|\1|p') per variant, the benchmark's policies. Two runs agree"
  echo "within 0.5 % for bare Envoy and the empty module, about 1.5 % for the native bundle (when a"
  echo "worker's counters go to Envoy depends on timing) and about 4 % for the Wasm bundle (V8"
  echo "compiles and tiers up when it will). Not CPU time (see [results.md](results.md)): a Wasm"
  echo "module also pays entering and leaving V8."
  echo
  echo "| variant | what | instructions per request | added over bare |"
  echo "| --- | --- | ---: | ---: |"
  for variant in "${variants[@]}"; do
    n="${per_request[$variant]}"
    added="–"
    [ -z "$bare" ] || [ "$variant" = bare ] || added="$(printf '%+d' $((n - bare)))"
    echo "| $variant | ${what[$variant]} | $n | $added |"
  done
} > "$work/table.md"
cat "$work/table.md"
[ -z "$out" ] || cp "$work/table.md" "$out"
