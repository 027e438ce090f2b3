#!/usr/bin/env bash
# The integration tests against modules that do nothing: every module in dist/ (and the test
# fixture) replaced by dist/passthrough.wasm, the SDK's empty filter, which takes any config.
# A test that still passes does not prove the behaviour it names. Each one must be listed in
# integration/noop-passes.txt with why it is not about a filter's behaviour (for example "a
# route without a policy is untouched"); the script fails on a passing test the list does
# not have and on a listed test that failed (a stale line). integration/tests/noop_list.rs
# checks the list's shape (every line names a test that exists, with a reason).
# Not part of scripts/test.sh (it runs the whole integration suite once more, most of it to
# failure); about 10 minutes here.
#
#   scripts/noop-runs.sh                 # build, run, compare with the list
#   NOOP_SKIP_BUILD=1 scripts/noop-runs.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_envoy
ensure_apt redis-server redis-server
[ -n "${NOOP_SKIP_BUILD:-}" ] || scripts/build.sh
[ -f dist/passthrough.wasm ] || die "dist/passthrough.wasm is missing (scripts/build.sh)"

noop=$(mktemp -d)
trap 'rm -rf "$noop"' EXIT
for module in dist/*.wasm; do
  cp dist/passthrough.wasm "$noop/$(basename "$module")"
done

say "integration tests against no-op modules ($noop: every module is the pass-through)"
log="$noop/test.log"
MESH_HARNESS=process MESH_DIST="$noop" MESH_FIXTURE="$noop/passthrough.wasm" \
  cargo test --locked -p mesh-integration --no-fail-fast --test '*' 2>&1 | tee "$log" >/dev/null || true

# "Running tests/canary.rs (...)" then "test name ... ok": passing tests as `file::name`.
awk '
  /Running tests\// {
    file = $2; sub(/^tests\//, "", file); sub(/\.rs$/, "", file)
  }
  /^test .* \.\.\. ok$/ { print file "::" $2 }
' "$log" | sort >"$noop/passed"
grep -c '^test .* \.\.\. \(ok\|FAILED\)$' "$log" >"$noop/ran" || true
[ "$(cat "$noop/ran")" -gt 0 ] || die "no test ran: $(tail -20 "$log")"

list=integration/noop-passes.txt
sed -e 's/[[:space:]]*#.*//' -e '/^$/d' "$list" | sort >"$noop/listed"
unlisted=$(comm -23 "$noop/passed" "$noop/listed")
stale=$(comm -13 "$noop/passed" "$noop/listed")
say "$(wc -l <"$noop/passed") of $(cat "$noop/ran") tests pass with no-op modules"
cat "$noop/passed" >&2
if [ -n "$unlisted" ] || [ -n "$stale" ]; then
  [ -z "$unlisted" ] || printf 'passes with no-op modules and is not in %s:\n%s\n' "$list" "$unlisted" >&2
  [ -z "$stale" ] || printf 'listed in %s but failed with no-op modules:\n%s\n' "$list" "$stale" >&2
  exit 1
fi
say "every test that passes with no-op modules is listed, with its reason, in $list"
