#!/usr/bin/env bash
# The lint before deploying: mesh-lint over the Istio manifests and the Envoy config, with
# every WasmPlugin's sha256 checked against the modules and images in dist/ (built by
# scripts/package.sh). Any error or warning fails. Other paths: scripts/lint.sh PATH...
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_rust
[ $# -gt 0 ] || set -- istio envoy
cargo run --quiet --locked -p mesh-deploy --bin mesh-lint -- --dist dist --deny-warnings "$@"
