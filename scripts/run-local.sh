#!/usr/bin/env bash
# The main job: build the filters, start the demo upstreams v1 and v2 and a real Envoy with
# the filters loaded, all on 127.0.0.1, and keep them running until Ctrl-C.
#
#   scripts/run-local.sh            run until Ctrl-C
#   scripts/run-local.sh --smoke    start, check a request end to end, stop (used by the tests)
#   scripts/run-local.sh --docker   Envoy in a container: ENVOY_IMAGE (default: the local image
#                                   scripts/envoy-image.sh builds), host network, config and
#                                   dist/ mounted read-only; the upstreams stay processes
#
# Ports: ENVOY_PORT (10000), ADMIN_PORT (9901), V1_PORT (18081), V2_PORT (18082).
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
export V1_PORT="${V1_PORT:-18081}" V2_PORT="${V2_PORT:-18082}" DIST="$ROOT/dist"

ensure_rust
ensure_binaryen
ensure_apt curl curl
[ -n "$docker" ] || ensure_envoy

scripts/build.sh
say "building the echo upstream"
cargo build --quiet --locked -p mesh-integration --bin echo

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
  target/debug/echo "$service" "127.0.0.1:${!port_var}" >"$run/$service.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:${!port_var}/__count" 10 "$!" || { cat "$run/$service.log"; die "echo $service did not start"; }
done

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
  exit 0
fi

cat <<MSG

Envoy is listening on $base (admin http://127.0.0.1:$ADMIN_PORT), upstreams v1 and v2 echo
what they receive. Logs: .run/envoy.log, .run/v1.log, .run/v2.log. Try:

  # a new trace: the upstream sees traceparent and b3, the response carries x-trace-id
  curl -si $base/checkout
  # a valid traceparent is kept
  curl -s $base/checkout -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  # an invalid one is replaced; B3 is carried into traceparent
  curl -s $base/catalog -H 'traceparent: 00-zzz' ; curl -s $base/catalog -H 'b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1'
  # the canary route (header match) answers from v2
  curl -s $base/checkout -H 'x-canary: true'
  # what the filters counted
  curl -s 'http://127.0.0.1:$ADMIN_PORT/stats?filter=mesh_'

Ctrl-C stops everything this script started.
MSG
wait -n "${pids[@]}" || true
die "a process exited; see .run/*.log"
