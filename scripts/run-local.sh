#!/usr/bin/env bash
# The main job: build the filters, start the demo upstreams v1 and v2 (HTTP) and grpc-echo
# (gRPC) and a real Envoy with the filters loaded, all on 127.0.0.1, and keep them running
# until Ctrl-C.
#
#   scripts/run-local.sh            run until Ctrl-C
#   scripts/run-local.sh --smoke    start, check the demo end to end and run the README's tour
#                                   (mesh-tour check), stop (used by the tests)
#   scripts/run-local.sh --docker   Envoy in a container: ENVOY_IMAGE (default: the local image
#                                   scripts/envoy-image.sh builds), host network, config and
#                                   dist/ mounted read-only; the upstreams stay processes
#   scripts/run-local.sh --live     the filters' configs through ECDS, from files in .run/ecds
#                                   that Envoy watches, as istiod pushes them; then, from
#                                   another shell while it runs:
#   scripts/run-local.sh --push-config FILTER FILE
#                                   push FILE's plugin JSON as FILTER's (traceid, canary,
#                                   ratelimit, breaker) next config; says whether Envoy applied
#                                   or refused it (a refused push leaves the old one serving)
#   scripts/run-local.sh --native   the four filters as the native dynamic module
#                                   (dist/libmesh_bundle.so, envoy/native.yaml) instead of the
#                                   Wasm modules; combines with --smoke (not with --live)
#
# Ports: ENVOY_PORT (10000), ADMIN_PORT (9901), V1_PORT (18081), V2_PORT (18082),
# GRPC_PORT (18083).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export ENVOY_PORT="${ENVOY_PORT:-10000}" ADMIN_PORT="${ADMIN_PORT:-9901}"
run="$ROOT/.run"

# push_config <filter> <file>: the next version of a running --live demo's config.
push_config() {
  local filter="$1" file="$2" name stats before after
  [ -f "$run/ecds/mesh.$filter.json" ] || die "no live demo config for $filter in $run/ecds (start scripts/run-local.sh --live)"
  name="mesh.$filter"
  stats() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/stats?filter=extension_config_discovery.*$name\." ; }
  count() { awk -F': ' -v s="$1" '$1 ~ s"$" {n += $2} END {print n + 0}' <<<"$2"; }
  before="$(stats)"
  cargo run --quiet --locked -p mesh-deploy --bin mesh-push -- config --dir "$run/ecds" --filter "$filter" "$file"
  for _ in $(seq 100); do
    after="$(stats)"
    if [ "$(count config_fail "$after")" -gt "$(count config_fail "$before")" ]; then
      grep "config=rejected" "$run/envoy.log" | tail -n 1 >&2 || true
      die "Envoy refused the new $name config; the previous one keeps serving"
    fi
    if [ "$(count config_reload "$after")" -gt "$(count config_reload "$before")" ]; then
      say "Envoy applied the new $name config"; return 0
    fi
    sleep 0.1
  done
  die "Envoy neither applied nor refused the push within 10 s (log: $run/envoy.log)"
}

smoke="" docker="" live="" template="$ROOT/envoy/envoy.yaml"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --docker) docker=1 ;;
    --live) live=1 ;;
    --native) template="$ROOT/envoy/native.yaml" ;;
    --push-config)
      [ $# -eq 3 ] || die "usage: scripts/run-local.sh --push-config FILTER FILE"
      push_config "$2" "$3"
      exit 0 ;;
    *) die "unknown argument $1 (expected --smoke, --docker, --live, --native, --push-config FILTER FILE)" ;;
  esac
  shift
done

export V1_PORT="${V1_PORT:-18081}" V2_PORT="${V2_PORT:-18082}" GRPC_PORT="${GRPC_PORT:-18083}"
export DIST="$ROOT/dist"

ensure_rust
ensure_binaryen
ensure_apt curl curl
ensure_apt jq jq
[ -n "$docker" ] || ensure_envoy

scripts/build.sh
say "building the echo upstream and the gRPC client"
cargo build --quiet --locked -p mesh-integration --bin echo --bin grpc-call
bin="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)"

mkdir -p "$run"
pids=()
cidfile="$run/envoy.cid"
stop_all() {
  trap - EXIT INT TERM
  # Only what this script started, by PID and container id.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -s "$cidfile" ]; then docker rm -f "$(cat "$cidfile")" >/dev/null 2>&1 || true; fi
  rm -f "$cidfile"
  release_docker
}
trap stop_all EXIT
trap 'exit 130' INT TERM
if [ -n "$docker" ]; then
  ensure_docker
  image="${ENVOY_IMAGE:-}"
  if [ -z "$image" ]; then scripts/envoy-image.sh; image="$MESH_ENVOY_IMAGE"; fi
  DIST=/mesh/dist # where the container sees dist/
fi

for service in v1 v2; do
  port_var="${service^^}_PORT"
  "$bin/echo" "$service" "127.0.0.1:${!port_var}" >"$run/$service.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:${!port_var}/__count" 10 "$!" || { cat "$run/$service.log"; die "echo $service did not start"; }
done
"$bin/echo" --grpc grpc-echo "127.0.0.1:$GRPC_PORT" >"$run/grpc-echo.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q '^listening' "$run/grpc-echo.log" && break; sleep 0.2; done
grep -q '^listening' "$run/grpc-echo.log" || { cat "$run/grpc-echo.log"; die "echo --grpc did not start"; }

render_envoy_config "$run/envoy.yaml" "$template"
config="$run/envoy.yaml"
if [ -n "$live" ]; then
  [ "$template" = "$ROOT/envoy/envoy.yaml" ] || die "--live serves the Wasm filters' configs; it does not combine with --native"
  say "the filters' configs through ECDS: files in $run/ecds"
  rm -rf "$run/ecds"
  mkdir -p "$run/ecds"
  cargo run --quiet --locked -p mesh-deploy --bin mesh-push -- \
    split --config "$run/envoy.yaml" --dir "$run/ecds" --out "$run/envoy-live.json"
  config="$run/envoy-live.json"
fi
envoy_args=(--disable-hot-restart --concurrency 2 --component-log-level wasm:debug,dynamic_modules:debug)
if [ -n "$docker" ]; then
  say "starting envoy in a container from $image"
  rm -f "$cidfile"
  # Host network: Envoy binds 127.0.0.1 as in envoy.yaml and reaches the upstreams there.
  # --live: the ECDS directory at its own path, where the config names its files.
  live_mount=()
  [ -z "$live" ] || live_mount=(-v "$run/ecds:$run/ecds:ro")
  docker run --rm --cidfile "$cidfile" --network host --user 0 --label org.mesh-filters.envoy=run-local \
    -v "$config:/mesh/config/$(basename "$config"):ro" -v "$ROOT/dist:/mesh/dist:ro" "${live_mount[@]}" \
    --entrypoint /usr/local/bin/envoy "$image" -c "/mesh/config/$(basename "$config")" "${envoy_args[@]}" \
    >"$run/envoy.log" 2>&1 &
else
  "$MESH_ENVOY" -c "$config" "${envoy_args[@]}" >"$run/envoy.log" 2>&1 &
fi
envoy_pid=$!
pids+=("$envoy_pid")
if ! wait_http "http://127.0.0.1:$ADMIN_PORT/ready" 60 "$envoy_pid"; then
  tail -n 40 "$run/envoy.log" >&2
  die "envoy did not become ready (log: $run/envoy.log)"
fi

base="http://127.0.0.1:$ENVOY_PORT"
tour() {
  cargo run --quiet --locked -p mesh-deploy --bin mesh-tour -- "$1" \
    --envoy-port "$ENVOY_PORT" --admin-port "$ADMIN_PORT" --bin "$bin"
}
if [ -n "$smoke" ]; then
  say "smoke check through $base/checkout"
  headers="$(curl -fsS -D - -o "$run/smoke-body.json" "$base/checkout")"
  trace_id="$(grep -i '^x-trace-id:' <<<"$headers" | tr -d '\r' | awk '{print $2}')"
  [ -n "$trace_id" ] || die "no x-trace-id on the response: $headers"
  grep -q "\"traceparent\":\"00-$trace_id-" "$run/smoke-body.json" \
    || die "upstream did not see traceparent with trace id $trace_id: $(cat "$run/smoke-body.json")"
  say "ok: upstream saw traceparent 00-$trace_id-..., response carried x-trace-id $trace_id"

  # The canary demo policy on /: the x-canary-force rule goes to v2; user-3 is in the 20 %
  # (v2) and user-1 is not, and a client-sent x-canary does not change that.
  say "smoke check of the canary filter through $base/"
  upstream_of() { curl -fsS "$@" | grep -o '"service":"v[12]"' | cut -d'"' -f4; }
  for check in "v2|-H x-canary-force:true" "v2|-H x-user-id:user-3" "v1|-H x-user-id:user-1 -H x-canary:true"; do
    want="${check%%|*}"
    # shellcheck disable=SC2086 # the header arguments are meant to split
    got="$(upstream_of ${check#*|} "$base/")"
    [ "$got" = "$want" ] || die "canary: curl ${check#*|} $base/ reached '$got', expected $want"
  done
  say "ok: the force rule and user-3 reached v2; user-1 with a forged x-canary stayed on v1"
  say "smoke check of the rate limiter through $base/limited"
  limit="$(curl -fsS -D - -o /dev/null -H 'x-api-key: smoke' "$base/limited" | grep -i '^x-ratelimit-limit:' | tr -d '\r' | awk '{print $2}')"
  [ "$limit" = 10 ] || die "no x-ratelimit-limit: 10 on /limited (got '$limit')"
  say "ok: /limited carried x-ratelimit-limit $limit"
  say "smoke check: 3 failures open the breaker on $base/fragile"
  for _ in 1 2 3; do curl -sS -o /dev/null -H 'x-echo-status: 500' "$base/fragile"; done
  fallback="$(curl -sS -D - -o /dev/null "$base/fragile" | tr -d '\r')"
  header_of() { awk -F': ' -v name="$1" 'tolower($1) == name {print $2}' <<<"$fallback"; }
  state="$(header_of x-circuit-state)" retry_after="$(header_of retry-after)"
  [ "$state" = open ] || die "the breaker did not open after 3 failures (x-circuit-state: '$state')"
  case "$retry_after" in
    [1-5]) ;;
    *) die "the fallback's Retry-After is '$retry_after', expected 1-5 s (open_ms 5000)" ;;
  esac
  say "ok: the fourth request got the fallback with x-circuit-state: open, Retry-After: $retry_after"
  say "smoke check: after Retry-After one probe reaches v1 and closes the breaker"
  sleep "$retry_after.2"
  v1_before="$(curl -fsS "http://127.0.0.1:$V1_PORT/__count")"
  for i in 1 2; do
    status="$(curl -sS -o /dev/null -w '%{http_code}' "$base/fragile")"
    [ "$status" = 200 ] || die "request $i after Retry-After got $status, expected 200"
  done
  v1_after="$(curl -fsS "http://127.0.0.1:$V1_PORT/__count")"
  [ "$((v1_after - v1_before))" = 2 ] || die "v1 counted $((v1_after - v1_before)) calls, expected 2"
  say "ok: the probe passed, the breaker closed and the next call went through"
  say "smoke check of gRPC through 127.0.0.1:$ENVOY_PORT (route echo)"
  grpc_call() { "$bin/grpc-call" "127.0.0.1:$ENVOY_PORT" "$@"; }
  said="$(grpc_call say hello)"
  grep -q '^OK from grpc-echo: hello' <<<"$said" || die "gRPC Say did not pass: $said"
  grep -q '^  traceparent: 00-' <<<"$said" || die "the gRPC service saw no traceparent: $said"
  say "ok: Say passed and the service saw traceparent as metadata"
  # 15 Count calls at once: the burst of 10 passes, the rest end RESOURCE_EXHAUSTED (5/s
  # per method refills about one while they run).
  tally="$(grpc_call count 1 --repeat 15 | tail -n 1)"
  exhausted="$(grep -oE '[0-9]+ RESOURCE_EXHAUSTED' <<<"$tally" | cut -d' ' -f1)"
  [ "${exhausted:-0}" -ge 3 ] || die "15 Count calls: $tally, expected at least 3 RESOURCE_EXHAUSTED"
  say "ok: 15 Count calls: $tally"
  for _ in 1 2 3; do grpc_call say --fail UNAVAILABLE >/dev/null; done
  # A worker trusts a closed state it read for 5 ms (docs/breaker.md, "Each worker's view of it").
  sleep 0.05
  fallback="$(grpc_call say)"
  grep -q '^UNAVAILABLE (14): echo: circuit open' <<<"$fallback" \
    || die "after 3 UNAVAILABLE the breaker did not answer: $fallback"
  grep -q '^  x-circuit-state: open' <<<"$fallback" || die "no x-circuit-state: open: $fallback"
  say "ok: 3 UNAVAILABLE opened the breaker; the next call ended UNAVAILABLE \"echo: circuit open\""
  say "smoke check: the counters carry their labels at /stats/prometheus"
  # The modules hand Envoy their counts once a second (docs/observability.md, "Counters
  # reach Envoy once a second"): wait for one more flush.
  sleep 1.5
  metrics="$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/stats/prometheus")"
  for series in 'mesh_trace_requests_total{route="checkout",outcome="started"} 1' \
                'mesh_trace_sampling_total{route="checkout",decision="sampled"} 1' \
                'mesh_ratelimit_requests_total{route="limited",decision="allowed"} 1' \
                'mesh_breaker_transitions_total{route="fragile",to="open"} 1' \
                'mesh_breaker_transitions_total{route="fragile",to="closed"} 1' \
                'mesh_breaker_calls_total{route="echo",outcome="failure",protocol="grpc"} 3' \
                "mesh_ratelimit_requests_total{route=\"echo\",decision=\"rejected\"} $exhausted"; do
    # Whole lines: the native module's series must carry the Wasm build's names, not only
    # end in them (envoy_dynamicmodulescustom_mesh_..., docs/native.md, "What differs").
    grep -qxF "$series" <<<"$metrics" || die "not at /stats/prometheus: $series"
  done
  say "ok: route, outcome, decision and to are Prometheus labels"
  # Every command of the README's tour, checked against what the README says it shows (with
  # the Wasm modules and the native one alike); before the live push below, which changes
  # /limited's burst.
  say "the README's tour against the demo"
  tour check
  say "ok: every command of the README's tour printed what the README shows"
  if [ -n "$live" ]; then
    say "smoke check of a live update: /limited's burst 10 -> 20 pushed through ECDS"
    jq -r '.resources[0].typed_config.config.configuration.value' "$run/ecds/mesh.ratelimit.json" \
      | sed 's/"limited": {"limits": \[{"rate_per_s": 5, "burst": 10,/"limited": {"limits": [{"rate_per_s": 5, "burst": 20,/' \
      >"$run/ratelimit-20.json"
    grep -q '"burst": 20' "$run/ratelimit-20.json" || die "the demo's ratelimit JSON changed: update this check"
    "$0" --push-config ratelimit "$run/ratelimit-20.json"
    limit="$(curl -fsS -D - -o /dev/null -H 'x-api-key: live' "$base/limited" | grep -i '^x-ratelimit-limit:' | tr -d '\r' | awk '{print $2}')"
    [ "$limit" = 20 ] || die "after the push /limited carried x-ratelimit-limit '$limit', expected 20"
    say "ok: the next request saw the new burst (x-ratelimit-limit 20)"
    echo '{"routes": {"limited": {"limits": [{"rate_per_s": -1, "burst": 3}]}}}' >"$run/ratelimit-bad.json"
    if "$0" --push-config ratelimit "$run/ratelimit-bad.json"; then die "Envoy applied a config the filter refuses"; fi
    limit="$(curl -fsS -D - -o /dev/null -H 'x-api-key: live-2' "$base/limited" | grep -i '^x-ratelimit-limit:' | tr -d '\r' | awk '{print $2}')"
    [ "$limit" = 20 ] || die "after a refused push /limited carried x-ratelimit-limit '$limit', expected 20"
    say "ok: a bad push was refused and the previous config kept serving"
  fi
  exit 0
fi

cat <<MSG

Envoy is listening on $base (admin http://127.0.0.1:$ADMIN_PORT), upstreams v1 and v2 echo
what they receive, grpc-echo serves mesh.test.Echo. Logs: .run/*.log. Try the README's tour
(README.md, "A two-minute tour", shows what each prints):

$(tour print)

  # started with --live: change a filter's config while traffic flows (from another shell)
  jq -r '.resources[0].typed_config.config.configuration.value' .run/ecds/mesh.ratelimit.json > my.json
  scripts/run-local.sh --push-config ratelimit my.json

Ctrl-C stops everything this script started.
MSG
wait -n "${pids[@]}" || true
die "a process exited; see .run/*.log"
