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
