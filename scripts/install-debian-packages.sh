#!/usr/bin/env bash
# Installs Debian packages for the bench scripts: apt-get install, and if
# that fails (a stale package index), apt-get update and once more.
#
#   scripts/install-debian-packages.sh PACKAGE...
set -euo pipefail
[ $# -gt 0 ] || exit 0
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
echo "installing $*" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null ||
    { "${as_root[@]}" apt-get update >/dev/null && "${as_root[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null; } ||
    { echo "cannot install $*" >&2; exit 1; }
