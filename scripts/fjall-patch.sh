#!/usr/bin/env bash
# third_party/fjall is fjall as published on crates.io plus third_party/fjall.patch,
# and nothing else. This checks that (the default, run by scripts/test.sh), or,
# with --write, makes the patch anew from the copy after an edit.
#
#   ./scripts/fjall-patch.sh [--write]
#
# The published crate comes through cargo (so its checksum is checked against
# the registry index) into a scratch project, never into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' third_party/fjall/Cargo.toml | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/fetch/src"
cat > "$work/fetch/Cargo.toml" <<TOML
[package]
name = "fjall-pristine"
version = "0.0.0"
edition = "2021"
[dependencies]
fjall = "=$version"
TOML
: > "$work/fetch/src/lib.rs"
(cd "$work/fetch" && cargo fetch --quiet)
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
pristine=$(ls -d "$registry"/*/"fjall-$version" | head -1)
[ -d "$pristine" ] || { echo "fjall-patch: fjall $version was not fetched" >&2; exit 2; }

# a/ is the published crate as packaged (without cargo's marker and the
# crate's own lock file, which a path dependency must not carry); b/ is our copy
# without PATCHED.md.
mkdir -p "$work/a" "$work/b"
cp -a "$pristine"/. "$work/a/"
rm -f "$work/a/.cargo-ok" "$work/a/Cargo.lock"
cp -a third_party/fjall/. "$work/b/"
rm -f "$work/b/PATCHED.md"

if [ "${1:-}" = "--write" ]; then
  (cd "$work" && diff -ruN a b | sed -E 's/^(---|\+\+\+) ([^\t]*)\t.*/\1 \2/') > third_party/fjall.patch || true
  echo "wrote third_party/fjall.patch ($(grep -c '^diff ' third_party/fjall.patch) files)"
  exit 0
fi

(cd "$work/a" && patch --quiet -p1 --no-backup-if-mismatch < "$OLDPWD/third_party/fjall.patch")
if ! diff -r "$work/a" "$work/b" >"$work/diff"; then
  echo "fjall-patch: third_party/fjall differs from fjall $version + third_party/fjall.patch:" >&2
  cat "$work/diff" >&2
  echo "(after editing the copy, run ./scripts/fjall-patch.sh --write)" >&2
  exit 1
fi
echo "fjall-patch: third_party/fjall is fjall $version + third_party/fjall.patch"
