#!/usr/bin/env bash
# Every test: format, lints (host and wasm32), unit tests, the wasm build, the real-Envoy
# integration tests, a short soak and a smoke run of scripts/run-local.sh. Installs what it
# needs.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_binaryen
ensure_envoy
ensure_apt curl curl

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

say "unit tests"
cargo test --locked --workspace --exclude mesh-integration --quiet

say "wasm build"
scripts/build.sh

say "test fixture module (integration/fixture, never shipped)"
cargo build --quiet --locked --release --target wasm32-wasip1 -p mesh-fixture

say "integration tests (real Envoy, dist/*.wasm)"
cargo test --locked -p mesh-integration --quiet

say "short soak (scripts/soak.sh; the full one runs 5 minutes)"
SOAK_SKIP_BUILD=1 scripts/soak.sh 30

say "run-local smoke"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
ENVOY_PORT=$(free_port) ADMIN_PORT=$(free_port) V1_PORT=$(free_port) V2_PORT=$(free_port) \
  scripts/run-local.sh --smoke

say "all tests passed"
