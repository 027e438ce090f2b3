#!/usr/bin/env bash
# The main job: build the filters, start the demo upstreams v1 and v2 (HTTP) and grpc-echo
# (gRPC) and a real Envoy with the filters loaded, all on 127.0.0.1, and keep them running
# until Ctrl-C.
#
#   scripts/run-local.sh            run until Ctrl-C
#   scripts/run-local.sh --smoke    start, check a request end to end, stop (used by the tests)
#   scripts/run-local.sh --docker   Envoy in a container: ENVOY_IMAGE (default: the local image
#                                   scripts/envoy-image.sh builds), host network, config and
#                                   dist/ mounted read-only; the upstreams stay processes
#
# Ports: ENVOY_PORT (10000), ADMIN_PORT (9901), V1_PORT (18081), V2_PORT (18082),
# GRPC_PORT (18083).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

smoke="" docker=""
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --docker) docker=1 ;;
    *) die "unknown argument $arg (expected --smoke, --docker)" ;;
  esac
done

export ENVOY_PORT="${ENVOY_PORT:-10000}" ADMIN_PORT="${ADMIN_PORT:-9901}"
export V1_PORT="${V1_PORT:-18081}" V2_PORT="${V2_PORT:-18082}" GRPC_PORT="${GRPC_PORT:-18083}"
export DIST="$ROOT/dist"

ensure_rust
ensure_binaryen
ensure_apt curl curl
[ -n "$docker" ] || ensure_envoy

scripts/build.sh
say "building the echo upstream and the gRPC client"
cargo build --quiet --locked -p mesh-integration --bin echo --bin grpc-call
bin="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)"

run="$ROOT/.run"
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

render_envoy_config "$run/envoy.yaml"
envoy_args=(--disable-hot-restart --concurrency 2 --component-log-level wasm:debug)
if [ -n "$docker" ]; then
  say "starting envoy in a container from $image"
  rm -f "$cidfile"
  # Host network: Envoy binds 127.0.0.1 as in envoy.yaml and reaches the upstreams there.
  docker run --rm --cidfile "$cidfile" --network host --user 0 --label org.mesh-filters.envoy=run-local \
    -v "$run/envoy.yaml:/mesh/config/envoy.yaml:ro" -v "$ROOT/dist:/mesh/dist:ro" \
    --entrypoint /usr/local/bin/envoy "$image" -c /mesh/config/envoy.yaml "${envoy_args[@]}" \
    >"$run/envoy.log" 2>&1 &
else
  "$MESH_ENVOY" -c "$run/envoy.yaml" "${envoy_args[@]}" >"$run/envoy.log" 2>&1 &
fi
envoy_pid=$!
pids+=("$envoy_pid")
if ! wait_http "http://127.0.0.1:$ADMIN_PORT/ready" 60 "$envoy_pid"; then
  tail -n 40 "$run/envoy.log" >&2
  die "envoy did not become ready (log: $run/envoy.log)"
fi

base="http://127.0.0.1:$ENVOY_PORT"
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
  # A worker trusts a closed state it read for 5 ms (README, "Each worker's view of it").
  sleep 0.05
  fallback="$(grpc_call say)"
  grep -q '^UNAVAILABLE (14): echo: circuit open' <<<"$fallback" \
    || die "after 3 UNAVAILABLE the breaker did not answer: $fallback"
  grep -q '^  x-circuit-state: open' <<<"$fallback" || die "no x-circuit-state: open: $fallback"
  say "ok: 3 UNAVAILABLE opened the breaker; the next call ended UNAVAILABLE \"echo: circuit open\""
  say "smoke check: the counters carry their labels at /stats/prometheus"
  # The modules hand Envoy their counts once a second (README, "Counters reach Envoy once a
  # second"): wait for one more flush.
  sleep 1.5
  metrics="$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/stats/prometheus")"
  for series in 'mesh_trace_requests_total{route="checkout",outcome="started"} 1' \
                'mesh_ratelimit_requests_total{route="limited",decision="allowed"} 1' \
                'mesh_breaker_transitions_total{route="fragile",to="open"} 1' \
                'mesh_breaker_transitions_total{route="fragile",to="closed"} 1' \
                'mesh_breaker_calls_total{route="echo",outcome="failure",protocol="grpc"} 3' \
                "mesh_ratelimit_requests_total{route=\"echo\",decision=\"rejected\"} $exhausted"; do
    grep -qF "$series" <<<"$metrics" || die "not at /stats/prometheus: $series"
  done
  say "ok: route, outcome, decision and to are Prometheus labels"
  exit 0
fi

cat <<MSG

Envoy is listening on $base (admin http://127.0.0.1:$ADMIN_PORT), upstreams v1 and v2 echo
what they receive, grpc-echo serves mesh.test.Echo. Logs: .run/*.log. Try:

  # a new trace: the upstream sees traceparent and b3, the response carries x-trace-id
  curl -si $base/checkout
  # a valid traceparent is kept
  curl -s $base/checkout -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  # an invalid one is replaced; B3 is carried into traceparent
  curl -s $base/catalog -H 'traceparent: 00-zzz' ; curl -s $base/catalog -H 'b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1'
  # the canary route (header match) answers from v2
  curl -s $base/checkout -H 'x-canary: true'
  # canary on /: 20 % of users by x-user-id go to v2 (user-3 does, user-1 does not); the
  # x-canary-force rule always does; x-canary-decision tells why
  curl -si $base/ -H 'x-user-id: user-3' ; curl -si $base/ -H 'x-user-id: user-1'
  curl -si $base/ -H 'x-canary-force: true'
  # a client cannot tag itself: x-canary from the client is removed (user-1 stays on v1)
  curl -s $base/ -H 'x-user-id: user-1' -H 'x-canary: true'
  # /checkout: cookie beta=1 goes to v2; without a user id the response sets a mesh-canary
  # cookie that keeps this browser in its cohort
  curl -s $base/checkout -H 'cookie: beta=1' ; curl -si $base/checkout
  # rate limit on /limited: 5/s, burst 10 per x-api-key; the rest of a burst gets 429
  for i in \$(seq 15); do curl -s -o /dev/null -w '%{http_code} ' $base/limited -H 'x-api-key: demo'; done; echo
  curl -si $base/limited -H 'x-api-key: demo' | grep -iE '^(HTTP|retry-after|x-ratelimit)'
  # the breaker: 3 failures in a row open it; for 5 s the fallback answers (503, JSON,
  # x-circuit-state: open, Retry-After) and v1 is not called; then one probe decides
  for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code} ' $base/fragile -H 'x-echo-status: 500'; done; echo
  curl -si $base/fragile ; curl -s http://127.0.0.1:$V1_PORT/__count
  sleep 5; curl -si $base/fragile
  # gRPC on the same listener (route echo): the service lists the metadata it received,
  # traceparent among them
  $bin/grpc-call 127.0.0.1:$ENVOY_PORT say hello -H 'x-tenant: demo'
  # 5/s, burst 10 per method: the rest of a burst ends RESOURCE_EXHAUSTED with
  # grpc-retry-pushback-ms (Count's bucket is not Say's)
  $bin/grpc-call 127.0.0.1:$ENVOY_PORT count 2 --repeat 15
  $bin/grpc-call 127.0.0.1:$ENVOY_PORT count 2
  # 3 UNAVAILABLE in a row open the breaker: for 5 s calls end UNAVAILABLE "echo: circuit open"
  for i in 1 2 3; do $bin/grpc-call 127.0.0.1:$ENVOY_PORT say --fail UNAVAILABLE; done
  $bin/grpc-call 127.0.0.1:$ENVOY_PORT say
  # what the filters counted, as Prometheus scrapes it (README: Observability)
  curl -s 'http://127.0.0.1:$ADMIN_PORT/stats/prometheus' | grep '^mesh_'

Ctrl-C stops everything this script started.
MSG
wait -n "${pids[@]}" || true
die "a process exited; see .run/*.log"
