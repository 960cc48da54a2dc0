#!/usr/bin/env bash
# Installs agent-tokens as a systemd service:
#   /usr/local/bin/agent-tokens                     the binary (0755)
#   /etc/systemd/system/agent-tokens.service        the hardened unit (0644)
#   /etc/agent-tokens/config.toml                   example config (0644), only if absent
#   /etc/agent-tokens/jwt-secret                    32 random bytes as hex (0600), only if absent
#   /usr/local/share/doc/agent-tokens/              README and example configs
#
# Usage: scripts/install.sh [BINARY]
#   BINARY defaults to ./bin/agent-tokens (offline bundle) or
#   ./target/release/agent-tokens (a source checkout after `cargo build --release`).
#   DESTDIR=/some/dir installs everything below that directory and never calls
#   systemctl (for packaging and tests).
#
# Idempotent: a second run changes nothing. An existing config or secret is
# never overwritten. Prints what it did, one line per file.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${DESTDIR:-}"
dest="${dest%/}"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

case "${1:-}" in
  -h | --help)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
[ $# -le 1 ] || die "too many arguments; usage: scripts/install.sh [BINARY]"

binary="${1:-}"
if [ -z "$binary" ]; then
  for candidate in "$root/bin/agent-tokens" "$root/target/release/agent-tokens"; do
    if [ -x "$candidate" ]; then
      binary="$candidate"
      break
    fi
  done
  [ -n "$binary" ] || die "no binary found; run 'cargo build --release' first or pass its path"
fi
if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
  die "$binary is not an executable file"
fi
"$binary" --version >/dev/null 2>&1 || die "$binary does not run on this machine"

if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (or set DESTDIR to stage the files elsewhere)"
fi

changed=0
unit_changed=0
binary_changed=0

# Octal mode without a leading zero, as `stat -c %a` prints it.
mode_of() { stat -c %a "$1"; }

# Creates a directory; fixes the mode of an existing one only if it is ours
# (system directories such as /usr/local/bin keep whatever mode they have).
ensure_dir() { # path mode [ours]
  local path="$dest$1" mode="$2" ours="${3:-}"
  if [ -d "$path" ]; then
    if [ -n "$ours" ] && [ "$(mode_of "$path")" != "${mode#0}" ]; then
      chmod "$mode" "$path"
      echo "mode $mode   $path/"
      changed=1
    fi
  else
    install -d -m "$mode" "$path"
    echo "created    $path/"
    changed=1
  fi
}

# Installs or replaces a file whose content we own. Writes a temporary copy
# and renames it, so a running binary is never overwritten in place.
put_file() { # source target mode
  local src="$1" path="$dest$2" mode="$3"
  if [ -f "$path" ] && cmp -s "$src" "$path"; then
    if [ "$(mode_of "$path")" != "${mode#0}" ]; then
      chmod "$mode" "$path"
      echo "mode $mode   $path"
      changed=1
      return 0
    fi
    echo "unchanged  $path"
    return 1
  fi
  install -m "$mode" "$src" "$path.new.$$"
  mv -f "$path.new.$$" "$path"
  echo "installed  $path"
  changed=1
  return 0
}

# Installs a file the operator owns afterwards: never overwritten.
put_once() { # source target mode
  local src="$1" path="$dest$2" mode="$3"
  if [ -e "$path" ]; then
    echo "kept       $path (exists; not overwritten)"
    return 0
  fi
  install -m "$mode" "$src" "$path.new.$$"
  mv -f "$path.new.$$" "$path"
  echo "installed  $path"
  changed=1
}

# 32 random bytes as 64 hex characters, readable by root only.
new_secret() { # target
  local path="$dest$1"
  if [ -e "$path" ]; then
    echo "kept       $path (exists; not overwritten)"
    # A secret readable by others is a leak: tighten it, never loosen it.
    if [ "$(mode_of "$path")" != 600 ]; then
      chmod 0600 "$path"
      echo "mode 0600   $path"
      changed=1
    fi
    return 0
  fi
  local tmp="$path.new.$$"
  (
    umask 077
    if command -v openssl >/dev/null 2>&1; then
      openssl rand -hex 32 >"$tmp"
    else
      od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp"
      echo >>"$tmp"
    fi
  )
  [ "$(tr -d '\n' <"$tmp" | wc -c)" -eq 64 ] || {
    rm -f "$tmp"
    die "could not generate a JWT secret"
  }
  chmod 0600 "$tmp"
  mv -f "$tmp" "$path"
  echo "generated  $path (0600; give the same secret to the application that signs user JWTs)"
  changed=1
}

ensure_dir /usr/local/bin 0755
ensure_dir /etc/systemd/system 0755
ensure_dir /etc/agent-tokens 0755 ours
ensure_dir /usr/local/share/doc/agent-tokens 0755 ours
ensure_dir /usr/local/share/doc/agent-tokens/examples 0755 ours

if put_file "$binary" /usr/local/bin/agent-tokens 0755; then binary_changed=1; fi
if put_file "$root/systemd/agent-tokens.service" /etc/systemd/system/agent-tokens.service 0644; then
  unit_changed=1
fi
put_once "$root/config/agent-tokens.systemd.toml" /etc/agent-tokens/config.toml 0644
new_secret /etc/agent-tokens/jwt-secret
put_file "$root/README.md" /usr/local/share/doc/agent-tokens/README.md 0644 || true
for example in "$root"/config/*.toml; do
  put_file "$example" "/usr/local/share/doc/agent-tokens/examples/$(basename "$example")" 0644 || true
done

if [ "$changed" -eq 0 ]; then
  echo "agent-tokens is already installed; nothing changed."
  exit 0
fi

if [ -n "$dest" ]; then
  echo "staged under $dest (DESTDIR set: systemctl not called)"
  exit 0
fi

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  if [ "$unit_changed" -eq 1 ]; then
    systemctl daemon-reload
    echo "ran        systemctl daemon-reload"
  fi
  if systemctl is-active --quiet agent-tokens.service; then
    if [ "$binary_changed" -eq 1 ] || [ "$unit_changed" -eq 1 ]; then
      echo "agent-tokens is running the previous version: systemctl restart agent-tokens"
    fi
  else
    echo "next: review /etc/agent-tokens/config.toml, then: systemctl enable --now agent-tokens"
  fi
else
  echo "systemd is not running here; start the service with: systemctl enable --now agent-tokens"
fi
