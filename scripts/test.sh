#!/usr/bin/env bash
# Every test: format, lints (host and wasm32), unit tests, the wasm build and OCI images,
# the deploy lint over istio/ and envoy/, the real-Envoy integration tests and a smoke run of scripts/run-local.sh. Installs what it needs.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_binaryen
ensure_envoy
ensure_prometheus
ensure_apt curl curl

# Crates that build for wasm32: every one but the integration tests.
wasm_packages=(-p mesh-policy -p mesh-adapter)
for f in $(filter_names); do wasm_packages+=(-p "mesh-$f"); done

say "cargo fmt --check"
cargo fmt --all -- --check

say "clippy (host)"
cargo clippy --locked --workspace --all-targets --quiet -- -D warnings

say "clippy (wasm32-wasip1)"
cargo clippy --locked --target wasm32-wasip1 "${wasm_packages[@]}" --quiet -- -D warnings

say "unit tests"
cargo test --locked --workspace --exclude mesh-integration --quiet

say "wasm build and OCI images"
scripts/package.sh

say "deploy checks: the images read back, mesh-lint over istio/ and envoy/"
cargo test --locked -p mesh-deploy --quiet -- --ignored
scripts/lint.sh

say "integration tests (real Envoy, dist/*.wasm)"
cargo test --locked -p mesh-integration --quiet

say "run-local smoke"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
ENVOY_PORT=$(free_port) ADMIN_PORT=$(free_port) V1_PORT=$(free_port) V2_PORT=$(free_port) \
  scripts/run-local.sh --smoke

say "all tests passed"
