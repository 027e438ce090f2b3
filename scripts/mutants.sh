#!/usr/bin/env bash
# Mutation testing of the policy crate (mesh-policy) with cargo-mutants: each mutant (a
# function body replaced, an operator swapped) is built and the crate's tests run on it; a
# mutant the tests pass on is "missed", a hole in the tests or an equivalent change. Not part
# of scripts/test.sh: a full run takes long. Installs the pinned cargo-mutants (once), runs it
# and writes bench/mutants.md: counts caught / missed / timeout / unviable, per file and in
# all, the missed mutants and how long the run took. bench/mutants-notes.md, written by hand
# (the missed mutants since killed by a test or equivalent, that is changing nothing
# observable, with why; the files not covered yet), is appended to it.
#
#   scripts/mutants.sh                                  # every file of the crate
#   scripts/mutants.sh --file 'shared/src/breaker/*.rs' --file shared/src/trace/b3.rs
#   scripts/mutants.sh --jobs 1 --out /tmp/m.md         # a quick look elsewhere
#
# --file GLOB (repeatable) limits the run to those files (cargo-mutants' own --file);
# --jobs N builds and tests N mutants at once (default 2: one per core here, each in its own
# copy of the tree, with its own target directory, under $TMPDIR); --out FILE is the summary
# (default bench/mutants.md). Everything after `--` goes to `cargo test` for each mutant:
# `-- --lib` runs the unit tests only (not tests/hostile_input.rs' property tests), faster.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MUTANTS_VERSION="27.1.0"

files=()
jobs=2
out="$ROOT/bench/mutants.md"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --file) files+=("$2"); shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra+=("$@"); break ;;
    *) die "unknown argument $1 (see the comment at the top of $0)" ;;
  esac
done

ensure_rust
ensure_apt jq jq
if [ "$(cargo mutants --version 2>/dev/null)" != "cargo-mutants $MUTANTS_VERSION" ]; then
  say "installing cargo-mutants $MUTANTS_VERSION (cargo install, once: a few minutes)"
  cargo install --quiet --locked "cargo-mutants@$MUTANTS_VERSION"
fi

# The mutants' builds: no debug info (smaller, faster target directories; a failing test
# still names itself). Reports go to target/mutants/mutants.out/.
export CARGO_PROFILE_DEV_DEBUG=0
work="${CARGO_TARGET_DIR:-$ROOT/target}/mutants"
mkdir -p "$work"

args=(--package mesh-policy --jobs "$jobs" --timeout-multiplier 3 --build-timeout-multiplier 3
      --output "$work" --no-shuffle --colors never --cap-lints true)
for f in "${files[@]}"; do args+=(--file "$f"); done

# The tree as the mutants' copies take it, named before the run.
revision="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- shared || revision+=" with uncommitted changes under shared/"
say "cargo mutants ${args[*]} -- ${extra[*]}"
start=$(date +%s)
status=0
# Exit status 2 means missed mutants, 3 timeouts: the summary is written either way.
# Without CARGO_TARGET_DIR: each job's copy of the tree builds in its own target directory
# (a shared one would mix the mutants' builds).
env -u CARGO_TARGET_DIR cargo mutants "${args[@]}" -- "${extra[@]}" || status=$?
seconds=$(( $(date +%s) - start ))
case "$status" in
  0 | 2 | 3) ;;
  *) die "cargo mutants failed (exit $status; log in $work/mutants.out)" ;;
esac

results="$work/mutants.out"
# One row per mutant from outcomes.json: file, line, outcome, description.
rows="$(jq -r '
  .outcomes[]
  | select(.scenario | type == "object" and has("Mutant"))
  | .scenario.Mutant as $m
  | [$m.file, ($m.span.start.line | tostring), .summary, ($m.name | sub("^[^ ]*: "; ""))]
  | @tsv' "$results/outcomes.json")"

count() { awk -F'\t' -v o="$1" '$3 == o' <<<"$rows" | grep -c . || true; }
caught=$(count CaughtMutant)
missed=$(count MissedMutant)
timeout=$(count Timeout)
unviable=$(count Unviable)
viable=$((caught + missed + timeout))

{
  echo "# Mutation testing of mesh-policy"
  echo
  echo "Written by \`scripts/mutants.sh\` (cargo-mutants $MUTANTS_VERSION, $(rustc --version | cut -d' ' -f1-2), -j $jobs) on $revision."
  echo "Run time: $((seconds / 60)) min $((seconds % 60)) s."
  if [ ${#files[@]} -gt 0 ]; then
    echo "Files covered: $(printf '`%s`, ' "${files[@]}" | sed 's/, $//')."
  else
    echo "Files covered: every file of the crate."
  fi
  echo
  echo "A mutant is *caught* when a test fails on it, *missed* when every test passes, *timeout* when the tests ran past the limit (counted as caught: the mutant hangs), *unviable* when it does not build (not counted). Caught share = (caught + timeout) / (caught + missed + timeout)."
  echo
  echo "| file | caught | missed | timeout | unviable | caught share |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  awk -F'\t' '
    { f[$1] = 1; n[$1, $3]++ }
    END {
      for (file in f) {
        c = n[file, "CaughtMutant"] + 0; m = n[file, "MissedMutant"] + 0
        t = n[file, "Timeout"] + 0; u = n[file, "Unviable"] + 0
        share = (c + m + t) ? sprintf("%.1f %%", 100 * (c + t) / (c + m + t)) : "-"
        printf "| `%s` | %d | %d | %d | %d | %s |\n", file, c, m, t, u, share
      }
    }' <<<"$rows" | sort
  if [ "$viable" -gt 0 ]; then
    share="$(awk -v c=$((caught + timeout)) -v v=$viable 'BEGIN { printf "%.1f %%", 100 * c / v }')"
  else
    share="-"
  fi
  echo "| **all** | **$caught** | **$missed** | **$timeout** | **$unviable** | **$share** |"
  echo
  echo "## Missed mutants"
  echo
  if [ "$missed" -eq 0 ]; then
    echo "None."
  else
    awk -F'\t' '$3 == "MissedMutant" { printf "- `%s:%s`: %s\n", $1, $2, $4 }' <<<"$rows" | sort -t: -k1,1 -k2,2n
  fi
  if [ -f "$ROOT/bench/mutants-notes.md" ]; then
    echo
    sed '/^<!--/d' "$ROOT/bench/mutants-notes.md"
  fi
} > "$out"
say "wrote $out: caught $caught, missed $missed, timeout $timeout, unviable $unviable in ${seconds} s"
