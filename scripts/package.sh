#!/usr/bin/env bash
# Builds the filters (scripts/build.sh) and, for each, a Wasm OCI image Istio pulls (the
# compat variant: one tar+gzip layer holding plugin.wasm) in the OCI image layout
# dist/oci/<filter>, tagged with the crates' version. No registry is needed for that.
#
#   scripts/package.sh                      build dist/*.wasm and dist/oci/*
#   scripts/package.sh --pin                ...and set each WasmPlugin's sha256 in istio/
#                                           (the image manifest digest for oci:// urls)
#   scripts/package.sh --push REGISTRY/PATH ...and copy each image, digests unchanged, to
#                                           REGISTRY/PATH/<filter>:<version> with skopeo
#                                           (credentials: skopeo login / REGISTRY_AUTH_FILE;
#                                           --insecure for a plain-HTTP registry)
# The images are byte-for-byte reproducible: the pinned sha256 is the same on every machine
# that builds the same commit with the same rustc (1.95.0) and wasm-opt (binaryen 108,
# Debian 12's), wherever its cargo home is (lib.sh: with_module_flags). Installs what it
# uses (skopeo only for --push). PACKAGE_SKIP_BUILD=1 takes dist/*.wasm as they are (a
# test pushing what scripts/test.sh built).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

pin="" push="" tls="true"
while [ $# -gt 0 ]; do
  case "$1" in
    --pin) pin=1 ;;
    --push) shift; push="${1:?--push needs a registry and path, e.g. registry.example.com/mesh-filters}" ;;
    --insecure) tls="false" ;;
    *) die "unknown argument: $1 (see the top of scripts/package.sh)" ;;
  esac
  shift
done

[ -n "${PACKAGE_SKIP_BUILD:-}" ] || scripts/build.sh
say "OCI images (compat variant) in dist/oci/"
cargo run --quiet --locked -p mesh-deploy --bin mesh-oci -- layout --dist dist

if [ -n "$pin" ]; then
  say "pinning sha256 in istio/*.yaml"
  cargo run --quiet --locked -p mesh-deploy --bin mesh-oci -- pin --dist dist istio/*.yaml
fi

if [ -n "$push" ]; then
  ensure_apt skopeo skopeo
  version="$(cargo run --quiet --locked -p mesh-deploy --bin mesh-oci -- --version | awk '{print $2}')"
  for f in $(filter_names); do
    [ -d "dist/oci/$f" ] || continue
    say "pushing $push/$f:$version"
    skopeo copy --preserve-digests --dest-tls-verify="$tls" "oci:dist/oci/$f:$version" "docker://$push/$f:$version"
  done
  say "pushed: use url oci://$push/<filter>:$version with the sha256 from --pin (the manifest digest)"
fi
