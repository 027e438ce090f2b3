#!/usr/bin/env bash
# Builds every filter for wasm32-wasip1 in release, shrinks it with `wasm-opt -Oz` and
# writes dist/<filter>.wasm. Prints sizes; fails if a module is over the 150 KB budget.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

BUDGET=$((150 * 1024))

ensure_rust
ensure_binaryen

mapfile -t filters < <(filter_names)
packages=()
for f in "${filters[@]}"; do packages+=(-p "mesh-$f"); done

say "building ${filters[*]} for wasm32-wasip1"
cargo build --quiet --release --target wasm32-wasip1 "${packages[@]}"

mkdir -p dist
over=0
for f in "${filters[@]}"; do
  raw="target/wasm32-wasip1/release/mesh_$f.wasm"
  wasm-opt -Oz --strip-debug --strip-producers "$raw" -o "dist/$f.wasm"
  size=$(stat -c %s "dist/$f.wasm")
  verdict="ok"
  if [ "$size" -gt "$BUDGET" ]; then verdict="OVER BUDGET"; over=1; fi
  printf '  dist/%-14s %7d bytes (%3d KB)  %s\n' "$f.wasm" "$size" $((size / 1024)) "$verdict"
done
[ "$over" = 0 ] || die "a module is over the $((BUDGET / 1024)) KB budget"
