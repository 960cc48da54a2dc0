#!/usr/bin/env bash
# Offline dependency audit against a RustSec advisory snapshot. Any
# vulnerability, and any warning not listed with a reason in .cargo/audit.toml,
# fails. The database: $ADVISORY_DB, or ../shared/advisory-db beside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

db="${ADVISORY_DB:-}"
if [ -z "$db" ]; then
  for candidate in ../shared/advisory-db /work/shared/advisory-db; do
    if [ -d "$candidate" ]; then db="$candidate"; break; fi
  done
fi
if [ -z "$db" ] || [ ! -d "$db" ]; then
  echo "audit: no advisory database found; set ADVISORY_DB to a RustSec advisory-db checkout" >&2
  exit 1
fi

if ! command -v cargo-audit >/dev/null 2>&1; then
  cargo install cargo-audit --locked
fi

cargo audit --no-fetch --db "$db" --deny warnings

# cargo audit checks crates by their registry source, and fjall comes from
# third_party/ (a path, see third_party/fjall/PATCHED.md), so it is skipped
# above. Audit it as the published version it is a patch of: the same lock
# file with fjall marked as coming from crates.io.
lock=$(mktemp)
trap 'rm -f "$lock"' EXIT
awk '
  /^name = "fjall"$/ { print; fjall = 1; next }
  fjall && /^version = / { print; print "source = \"registry+https://github.com/rust-lang/crates.io-index\""; fjall = 0; next }
  { print }
' Cargo.lock > "$lock"
grep -q -A2 '^name = "fjall"$' "$lock"
cargo audit --no-fetch --db "$db" --deny warnings --file "$lock"
