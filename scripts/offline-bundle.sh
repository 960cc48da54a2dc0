#!/usr/bin/env bash
# Builds one tarball for an air-gapped host:
#   dist/agent-tokens-<version>-offline.tar.gz, unpacking to agent-tokens-<version>/ with
#     bin/agent-tokens        the release binary (x86_64 Linux, glibc, as built here)
#     deb/agent-tokens_<version>-1_amd64.deb   the Debian package of that binary
#                             (cargo-deb; docs/install.md)
#     systemd/ config/ scripts/install.sh README.md
#     the full source (Cargo.toml, Cargo.lock, src/, tests/, ...)
#     vendor/                 every crate in Cargo.lock (`cargo vendor`)
#     .cargo/config.toml      makes cargo use vendor/ instead of crates.io
#
# On the air-gapped host:
#   tar xzf agent-tokens-<version>-offline.tar.gz && cd agent-tokens-<version>
#   sudo apt install ./deb/agent-tokens_*.deb       # Debian/Ubuntu, or
#   sudo scripts/install.sh                         # the shipped binary, or
#   cargo build --release --offline --frozen && sudo scripts/install.sh target/release/agent-tokens
#
# Usage: scripts/offline-bundle.sh [--binary PATH] [--out DIR]
#   --binary PATH  ship this binary instead of building one with `cargo build --release`
#   --out DIR      where to write the tarball (default: dist/)
# Needs network access (or a warm cargo cache) for `cargo vendor`, and
# cargo-deb (`cargo install cargo-deb --version 3.8.0 --locked`).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
out="$root/dist"

die() {
  echo "offline-bundle.sh: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary)
      [ $# -ge 2 ] || die "--binary needs a path"
      binary="$2"
      shift 2
      ;;
    --out)
      [ $# -ge 2 ] || die "--out needs a directory"
      out="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument $1; see --help" ;;
  esac
done

cd "$root"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[ -n "$version" ] || die "cannot read the version from Cargo.toml"
name="agent-tokens-$version"

if [ -z "$binary" ]; then
  echo "building the release binary (cargo build --release --locked)"
  cargo build --release --locked
  binary="$root/target/release/agent-tokens"
fi
[ -x "$binary" ] || die "$binary is not an executable file"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/$name"
mkdir -p "$stage"

# The source: every file git knows or would add (so uncommitted work is
# included, ignored build output is not); a plain copy outside a checkout.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$root" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do
      # Deleted but not yet committed files are still listed by --cached.
      [ -e "$file" ] && printf '%s\0' "$file"
    done |
    tar -C "$root" --null -T - -cf - | tar -C "$stage" -xf -
else
  tar -C "$root" --exclude=./target --exclude=./dist --exclude=./vendor \
    --exclude=./bin --exclude=./.git -cf - . | tar -C "$stage" -xf -
fi

echo "vendoring crates (cargo vendor --locked)"
mkdir -p "$stage/.cargo"
# cargo vendor prints the source-replacement snippet; it becomes the bundle's
# cargo config, so `cargo build --offline --frozen` needs no registry.
cargo vendor --locked --versioned-dirs --manifest-path "$root/Cargo.toml" "$stage/vendor" \
  >"$stage/.cargo/config.toml"
grep -q 'replace-with = "vendored-sources"' "$stage/.cargo/config.toml" ||
  die "cargo vendor did not print the expected source replacement"
# The snippet names the absolute path used here; the bundle must work anywhere.
sed -i 's|^directory = .*|directory = "vendor"|' "$stage/.cargo/config.toml"

mkdir -p "$stage/bin"
install -m 0755 "$binary" "$stage/bin/agent-tokens"

# The package of the shipped binary: cargo-deb packs target/release/ of the
# target directory it is given, so give it one holding that binary.
echo "building the Debian package (cargo deb --no-build)"
cargo deb --version >/dev/null 2>&1 ||
  die "cargo-deb is missing: cargo install cargo-deb --version 3.8.0 --locked"
mkdir -p "$work/deb-target/release" "$stage/deb"
install -m 0755 "$binary" "$work/deb-target/release/agent-tokens"
CARGO_TARGET_DIR="$work/deb-target" cargo deb --no-build --fast --quiet \
  --manifest-path "$root/Cargo.toml" -o "$stage/deb/" >/dev/null
ls "$stage/deb/"*.deb >/dev/null 2>&1 || die "cargo deb made no package"

mkdir -p "$out"
tarball="$(cd "$out" && pwd)/$name-offline.tar.gz"
tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner -czf "$tarball.tmp" "$name"
mv -f "$tarball.tmp" "$tarball"
size="$(stat -c %s "$tarball")"
echo "wrote $tarball ($((size / 1024 / 1024)) MiB, $size bytes)"
