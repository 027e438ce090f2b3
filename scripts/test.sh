#!/usr/bin/env bash
# Every test: format, lints (host and wasm32), unit tests (host, and the policy crate's as
# wasm32 in Node), the book, the wasm build and OCI images, the deploy lint over istio/ and
# envoy/, the real-Envoy and Prometheus integration tests and smoke runs of
# scripts/run-local.sh (the README's tour among them).
# Installs what it needs.
#
# Every integration test file that loads our filters runs twice: with each filter's own module,
# then with MESH_MODULES=bundle (dist/bundle.wasm); a third time with MESH_MODULES=native
# (dist/libmesh_bundle.so), of the observability files the one that runs the filters
# (observability_metrics.rs: the others test the Istio sidecar's Wasm settings, the alert
# rules and the dashboard, the same under any switch). Only harness.rs and grpc_harness.rs, which
# test the harness itself (and its gRPC upstream and client), run once. failure.rs runs against
# the bundle too: the fixture that panics there has no bundle form and stays a module of its
# own, after the bundle.
#
# MESH_HARNESS chooses where Envoy runs: docker (the default here: a container from
# ENVOY_IMAGE, default the local image scripts/envoy-image.sh builds; a docker daemon is
# started when none answers and stopped at the end, see ensure_docker in lib.sh) or process
# (the native Envoy).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export MESH_HARNESS="${MESH_HARNESS:-docker}"
case "$MESH_HARNESS" in
  docker | process) ;;
  *) die "MESH_HARNESS=$MESH_HARNESS: expected docker or process" ;;
esac

trap release_docker EXIT
trap 'exit 130' INT TERM

ensure_rust
ensure_binaryen
ensure_envoy
ensure_prometheus
ensure_apt curl curl
ensure_wasm_bindgen_runner
if [ "$MESH_HARNESS" = docker ]; then
  ensure_docker
  export ENVOY_IMAGE="${ENVOY_IMAGE:-$MESH_ENVOY_IMAGE}"
  if [ "$ENVOY_IMAGE" = "$MESH_ENVOY_IMAGE" ]; then scripts/envoy-image.sh; fi
fi

# Crates that build for wasm32: every one but the integration tests.
wasm_packages=(-p mesh-policy -p mesh-adapter)
for f in $(filter_names); do wasm_packages+=(-p "mesh-$f"); done
# The test fixture module (never shipped): linted like the filters.
wasm_packages+=(-p mesh-fixture)

say "cargo fmt --check"
cargo fmt --all -- --check

say "clippy (host)"
cargo clippy --locked --workspace --all-targets --quiet -- -D warnings

say "clippy (wasm32-wasip1)"
cargo clippy --locked --target wasm32-wasip1 "${wasm_packages[@]}" --quiet -- -D warnings

say "clippy (policy crate tests, wasm32-unknown-unknown)"
cargo clippy --locked --target wasm32-unknown-unknown -p mesh-policy --all-targets --quiet -- -D warnings

say "unit tests"
cargo test --locked --workspace --exclude mesh-integration --quiet

# The user's guide builds (its links are checked by the unit tests: deploy/tests/docs.rs).
# The first run installs mdbook: ~270 CPU-seconds of compiling, a few minutes on two cores.
say "the book (docs/, scripts/docs.sh)"
scripts/docs.sh

say "policy crate tests as wasm32-unknown-unknown (wasm-bindgen-test in Node)"
wasm_log="$(mktemp)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --locked -p mesh-policy --lib --target wasm32-unknown-unknown 2>&1 | tee "$wasm_log"
# The same tests on both targets: a test module without the wasm_bindgen_test import would
# silently not run as wasm.
host_tests="$(cargo test --locked -p mesh-policy --lib --quiet -- --list --format terse | sed -n 's/: test$//p' | sort)"
wasm_tests="$(sed -n 's/^test \(.*\) \.\.\. ok$/\1/p' "$wasm_log" | sort)"
rm -f "$wasm_log"
missing="$(comm -23 <(echo "$host_tests") <(echo "$wasm_tests"))"
[ -z "$missing" ] || die "policy tests that did not pass as wasm32 (is the wasm_bindgen_test import in their module?):
$missing"
say "$(grep -c . <<<"$wasm_tests") policy tests passed as wasm32 in Node, the same $(grep -c . <<<"$host_tests") as on the host"

say "wasm build and OCI images"
scripts/package.sh

say "deploy checks: the images read back, mesh-lint over istio/ and envoy/"
# The registry test pushes with scripts/package.sh to Debian's distribution registry on
# 127.0.0.1 and pulls back with skopeo.
ensure_apt docker-registry docker-registry
ensure_apt skopeo skopeo
cargo test --locked -p mesh-deploy --quiet -- --ignored
scripts/lint.sh

say "test fixture module (integration/fixture, never shipped)"
with_module_flags cargo build --quiet --locked --release --target wasm32-wasip1 -p mesh-fixture
# The native module's fixture (feature panic-fixture: panics on x-fixture-panic), for
# native_panic.rs; copied aside, as the next scripts/build.sh writes the same file.
cargo rustc --quiet --locked --profile native -p mesh-native --features panic-fixture --crate-type cdylib
native_target="${CARGO_TARGET_DIR:-target}/native"
cp "$native_target/libmesh_native.so" "$native_target/libmesh_native_fixture.so"

if [ "$MESH_HARNESS" = docker ]; then
  say "integration tests (real Envoy in containers from $ENVOY_IMAGE, dist/*.wasm)"
else
  say "integration tests (real Envoy as a process: $MESH_ENVOY, dist/*.wasm)"
fi
# The global rate limit tests run Debian's redis-server (started and stopped by the harness).
ensure_apt redis-server redis-server
cargo test --locked -p mesh-integration --quiet

say "the filters' integration tests again, against the bundle (MESH_MODULES=bundle: dist/bundle.wasm)"
MESH_MODULES=bundle cargo test --locked -p mesh-integration --quiet \
  --test traceid --test canary --test ratelimit --test global_ratelimit --test breaker --test rematch --test order --test grpc \
  --test observability_metrics --test observability_alerts --test observability_sidecar \
  --test observability_dashboard --test hostile --test failure --test live_update

say "the filters' integration tests again, against the native module (MESH_MODULES=native: dist/libmesh_bundle.so)"
# native_panic.rs (a panic inside the native module) ran above: it loads the native fixture
# whatever the switch says.
MESH_MODULES=native cargo test --locked -p mesh-integration --quiet \
  --test traceid --test canary --test ratelimit --test global_ratelimit --test breaker --test rematch --test order --test grpc \
  --test observability_metrics --test hostile --test failure

say "short soak (scripts/soak.sh; the full one runs 5 minutes)"
SOAK_SKIP_BUILD=1 scripts/soak.sh 30

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
smoke() {
  ENVOY_PORT=$(free_port) ADMIN_PORT=$(free_port) V1_PORT=$(free_port) V2_PORT=$(free_port) GRPC_PORT=$(free_port) \
    scripts/run-local.sh --smoke "$@"
}
if [ "$MESH_HARNESS" = docker ]; then
  # In a container and with the configs through ECDS (--live: a push applied, a bad one
  # refused); the native run below keeps the plain static config proven.
  say "run-local smoke (docker, configs through ECDS)"
  smoke --docker --live
  # The README's plain `scripts/run-local.sh` and the harness's process backend run the
  # native Envoy: keep that path proven too, not only the containers.
  say "run-local smoke (the native Envoy, as the README runs it)"
  smoke
  say "the harness and trace-ID tests on the native Envoy (MESH_HARNESS=process)"
  MESH_HARNESS=process cargo test --locked -p mesh-integration --quiet --test harness --test traceid
else
  say "run-local smoke (the native Envoy)"
  smoke
  say "run-local smoke (the native Envoy, configs through ECDS)"
  smoke --live
fi
say "run-local smoke with the native dynamic module (envoy/native.yaml)"
smoke --native

say "all tests passed"
