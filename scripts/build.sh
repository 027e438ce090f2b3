#!/usr/bin/env bash
# Builds every filter for wasm32-wasip1 in release, shrinks it with `wasm-opt -Oz` and
# writes dist/<filter>.wasm. Prints sizes; fails if a module is over its budget (250 KB; the
# bundle 350 KB) or exports other per-request callbacks than the adapter handles.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

# Every Envoy worker compiles every module into its VM: a few tens of KB are cheap next to the
# VM itself, a second copy of a parser is not. The bundle carries the four filters' own code
# on one copy of the SDK, std and adapter, and stays well under the four modules' bytes.
BUDGET=$((250 * 1024))
BUNDLE_BUDGET=$((350 * 1024))

ensure_rust
ensure_binaryen

mapfile -t filters < <(filter_names)
# The modules built on the adapter: their exports are cut down to what it handles (below).
mapfile -t adapter_modules < <(module_crates --adapter)
[ "${#adapter_modules[@]}" -gt 0 ] || die "no module crates found (cargo metadata)"

say "building ${filters[*]} for wasm32-wasip1"
# One `cargo rustc --crate-type cdylib` per filter: Cargo skips the profile's LTO for a crate
# that is both cdylib and rlib (as the filters are, for tests), and without LTO a module is
# ~14 KB bigger and slower (the SDK and std are not optimised together with the filter).
for f in "${filters[@]}"; do
  with_module_flags cargo rustc --quiet --release --target wasm32-wasip1 -p "mesh-$f" --crate-type cdylib
done

# Exports a module built on the adapter does without. Envoy skips a callback the module
# does not export, so each of these is a VM entry saved wherever it would be called: per
# request body chunk, per trailer block, per TCP event, and `proxy_on_log` and
# `proxy_on_done` once per request (the adapter runs a stream's done phase when Envoy deletes
# its context, `proxy_on_delete`; Envoy assumes "done" when `proxy_on_done` is missing). The
# adapter has no body, trailer or TCP hooks (filters/adapter/src/lib.rs); give it one and
# take its callback off this list. Envoy allocates in the module through `malloc` alone: the
# rest of the C allocator is libc's business, not an export.
DROP_EXPORTS="proxy_on_request_body proxy_on_request_trailers proxy_on_response_body
  proxy_on_new_connection proxy_on_downstream_data
  proxy_on_upstream_data proxy_on_downstream_connection_close
  proxy_on_upstream_connection_close proxy_on_log proxy_on_done
  calloc realloc free aligned_alloc posix_memalign"

# The callbacks Envoy makes into a module for every HTTP stream it sees, dropped or not: a
# module built on the adapter must export exactly PER_REQUEST of them (what the crossing
# budgets in filters/bundle/tests/budget.rs count, `mesh_policy::vm::CALLBACKS_PER_REQUEST`).
# proxy_on_response_trailers stays, and is not one of them: Envoy calls it only for a
# response that has trailers (a gRPC call's grpc-status; an HTTP/1 response has none).
STREAM_CALLBACKS="proxy_on_context_create proxy_on_request_headers proxy_on_request_body
  proxy_on_request_trailers proxy_on_response_headers proxy_on_response_body
  proxy_on_log proxy_on_done proxy_on_delete"
PER_REQUEST="proxy_on_context_create proxy_on_delete proxy_on_request_headers proxy_on_response_headers"

# drop_exports <in> <out>: the module without DROP_EXPORTS (wasm-metadce, then what became
# dead code is optimised away).
drop_exports() {
  local in="$1" out="$2" drop="$DROP_EXPORTS" graph keep name
  graph="$(mktemp)"
  keep=()
  for name in $(wasm-dis "$in" | grep -o '^ (export "[^"]*"' | cut -d'"' -f2); do
    grep -qw -- "$name" <<<"$drop" || keep+=("$name")
  done
  {
    printf '[{"name": "root", "root": true, "reaches": ['
    printf '"e_%s", ' "${keep[@]}" | sed 's/, $//'
    printf ']}'
    printf ', {"name": "e_%s", "export": "%s"}' $(for k in "${keep[@]}"; do echo "$k $k"; done)
    printf ']\n'
  } >"$graph"
  wasm-metadce "$in" -f "$graph" -o "$out.dce" >/dev/null
  wasm-opt -Oz --strip-debug --strip-producers "$out.dce" -o "$out"
  rm -f "$graph" "$out.dce"
}

mkdir -p dist
over=0
for f in "${filters[@]}"; do
  raw="${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/mesh_$f.wasm"
  wasm-opt -Oz --strip-debug --strip-producers "$raw" -o "dist/$f.wasm"
  if [[ " ${adapter_modules[*]} " == *" $f "* ]]; then
    drop_exports "dist/$f.wasm" "dist/$f.wasm.tmp" && mv "dist/$f.wasm.tmp" "dist/$f.wasm"
    per_request="$(wasm-dis "dist/$f.wasm" | grep -o '^ (export "[^"]*"' | cut -d'"' -f2 \
      | grep -xF -f <(tr -s ' \n' '\n' <<<"$STREAM_CALLBACKS") | sort | tr '\n' ' ')"
    [ "$per_request" = "$PER_REQUEST " ] \
      || die "dist/$f.wasm exports per-request callbacks [$per_request], expected [$PER_REQUEST]"
  fi
  size=$(stat -c %s "dist/$f.wasm")
  budget=$BUDGET
  [ "$f" = bundle ] && budget=$BUNDLE_BUDGET
  verdict="ok"
  if [ "$size" -gt "$budget" ]; then verdict="OVER BUDGET ($((budget / 1024)) KB)"; over=1; fi
  printf '  dist/%-14s %7d bytes (%3d KB)  %s\n' "$f.wasm" "$size" $((size / 1024)) "$verdict"
done
[ "$over" = 0 ] || die "a module is over its budget"

# The native dynamic module (filters/native): the bundle for Envoy's dynamic_modules filter,
# dist/libmesh_bundle.so (Envoy loads `lib<name>.so` for `dynamic_module_config: {name:
# mesh_bundle}` from ENVOY_DYNAMIC_MODULES_SEARCH_PATH). Built for the host with the `native`
# profile (unwinding, opt-level 3). It is no cdylib in its manifest (so `module_crates` above
# does not take it for a Wasm module): `cargo rustc --crate-type cdylib`, as for the modules.
say "building the native module (Envoy 1.40 dynamic module)"
cargo rustc --quiet --profile native -p mesh-native --crate-type cdylib
so="${CARGO_TARGET_DIR:-target}/native/libmesh_native.so"
cp "$so" dist/libmesh_bundle.so.tmp && mv dist/libmesh_bundle.so.tmp dist/libmesh_bundle.so
# Every callback the module imports must be one the pinned Envoy exports: a missing one
# would only fail when Envoy loads the module.
if [ -n "${MESH_ENVOY:-}" ] && [ -x "$MESH_ENVOY" ]; then
  missing="$(comm -23 \
    <(nm -D --undefined-only dist/libmesh_bundle.so | awk '/envoy_dynamic_module_callback_/ {print $2}' | sort -u) \
    <(nm -D --defined-only "$MESH_ENVOY" | awk '/envoy_dynamic_module_callback_/ {print $3}' | sort -u))"
  [ -z "$missing" ] || die "dist/libmesh_bundle.so imports callbacks $MESH_ENVOY lacks: $missing"
fi
printf '  dist/%-14s %7d bytes (%3d KB)\n' "libmesh_bundle.so" "$(stat -c %s dist/libmesh_bundle.so)" \
  $(($(stat -c %s dist/libmesh_bundle.so) / 1024))
