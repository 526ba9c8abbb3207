#!/usr/bin/env bash
# Ensure Debian packages are installed: as root, install the missing ones with apt-get;
# otherwise print the exact apt-get line and exit 2. Usage: check_system_packages.sh PKG...
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "setup: missing system packages; run: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 2
fi
echo "setup: installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || { echo "setup: apt-get update failed (no network?)" >&2; exit 1; }
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || { echo "setup: apt-get install failed for: ${missing[*]}" >&2; exit 1; }
