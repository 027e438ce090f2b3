#!/usr/bin/env bash
# Builds every filter for wasm32-wasip1 in release, shrinks it with `wasm-opt -Oz` and
# writes dist/<filter>.wasm. Prints sizes; fails if a module is over its budget (150 KB; the
# bundle 200 KB).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

BUDGET=$((150 * 1024))
# The bundle (filters/bundle) carries the four filters' own code (25-37 KB each) on one copy
# of the SDK, std and adapter (~75 KB): 172 KB when it was made, against 403 KB for the four
# modules. 200 KB leaves room for the filters' growth and still says "one module's cost",
# not "four modules' bytes in one file".
BUNDLE_BUDGET=$((200 * 1024))

ensure_rust
ensure_binaryen

mapfile -t filters < <(filter_names)

say "building ${filters[*]} for wasm32-wasip1"
# One `cargo rustc --crate-type cdylib` per filter: Cargo skips the profile's LTO for a crate
# that is both cdylib and rlib (as the filters are, for tests), and without LTO a module is
# ~14 KB bigger and slower (the SDK and std are not optimised together with the filter).
for f in "${filters[@]}"; do
  with_module_flags cargo rustc --quiet --release --target wasm32-wasip1 -p "mesh-$f" --crate-type cdylib
done

# Exports a module built on the adapter does without. Envoy skips a callback the module
# does not export, so each of these is a VM entry saved wherever it would be called: per
# request body chunk, per trailer block, per TCP event, and `proxy_on_done` once per
# request (the adapter keeps the SDK's answer, "done"; Envoy assumes it when the export is
# missing). The adapter has no body, trailer or TCP hooks (filters/adapter/src/lib.rs); give
# it one and take its callback off this list. Envoy allocates in the module through `malloc`
# alone: the rest of the C allocator is libc's business, not an export.
DROP_EXPORTS="proxy_on_request_body proxy_on_request_trailers proxy_on_response_body
  proxy_on_response_trailers proxy_on_new_connection proxy_on_downstream_data
  proxy_on_upstream_data proxy_on_downstream_connection_close
  proxy_on_upstream_connection_close proxy_on_done
  calloc realloc free aligned_alloc posix_memalign"

# uses_log_phase <filter>: whether the filter, or for the bundle a filter it chains,
# implements `Filter::on_done`, the adapter's one use of the log phase (`proxy_on_log`).
# A module without it is built without that export: one VM entry less per request.
uses_log_phase() {
  local crate dirs=("filters/$1/src")
  for crate in $(grep -o '^mesh-[a-z]*' "filters/$1/Cargo.toml"); do
    [ -d "filters/${crate#mesh-}/src" ] && dirs+=("filters/${crate#mesh-}/src")
  done
  grep -rqw --exclude-dir=tests 'fn on_done' "${dirs[@]}"
}

# drop_exports <in> <out> [more names]: the module without DROP_EXPORTS and the names given
# (wasm-metadce, then what became dead code is optimised away).
drop_exports() {
  local in="$1" out="$2" drop="$DROP_EXPORTS ${3:-}" graph keep name
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
  if grep -q '^mesh-adapter' "filters/$f/Cargo.toml"; then
    more=""
    uses_log_phase "$f" || more="proxy_on_log"
    drop_exports "dist/$f.wasm" "dist/$f.wasm.tmp" "$more" && mv "dist/$f.wasm.tmp" "dist/$f.wasm"
  fi
  size=$(stat -c %s "dist/$f.wasm")
  budget=$BUDGET
  [ "$f" = bundle ] && budget=$BUNDLE_BUDGET
  verdict="ok"
  if [ "$size" -gt "$budget" ]; then verdict="OVER BUDGET ($((budget / 1024)) KB)"; over=1; fi
  printf '  dist/%-14s %7d bytes (%3d KB)  %s\n' "$f.wasm" "$size" $((size / 1024)) "$verdict"
done
[ "$over" = 0 ] || die "a module is over its budget"
