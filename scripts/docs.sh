#!/usr/bin/env bash
# Builds the user's guide (docs/, an mdBook) into target/book; installs mdbook at the pinned
# version when it is missing. Open target/book/index.html.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_mdbook
mdbook build docs
say "the book: $ROOT/target/book/index.html"
