#!/usr/bin/env bash
# Make (or repair) a venv and install pinned requirements into it; one line on stderr says what
# failed: making the venv, pip reaching its package index (with this machine's pip
# configuration), or installing. A venv without a working python or pip (an interrupted or
# failed creation, a removed base interpreter) is made again, never reused; the requirements
# are reinstalled only when their file changes.
# Usage: scripts/make_venv.sh VENV REQUIREMENTS PYTHON
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: make_venv.sh VENV REQUIREMENTS PYTHON" >&2; exit 2; }
venv=$1 requirements=$2 python=$3

if [ -e "$venv" ] && ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "setup: $venv is incomplete (no working python or pip); making it again" >&2
  rm -rf "$venv"
fi
if [ ! -e "$venv" ]; then
  if ! err=$("$python" -m venv "$venv" 2>&1); then
    rm -rf "$venv"
    echo "setup: making the venv failed: $python -m venv $venv: $(tail -n1 <<<"$err")" >&2
    exit 1
  fi
fi
req_hash=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$req_hash" ]; then
  echo "setup: installing Python dependencies into $venv" >&2
  log=$venv/pip-install.log
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
         -r "$requirements" >"$log" 2>&1; then
    if grep -q -E "NewConnectionError|Failed to establish|name resolution|Network is unreachable|ProxyError|ConnectTimeout|Read timed out|Could not fetch URL|SSLError|CERTIFICATE_VERIFY_FAILED" "$log"; then
      echo "setup: pip could not reach the package index (network, proxy, TLS certificates or pip configuration; log: $log)" >&2
    else
      echo "setup: pip install -r $requirements failed: $(grep -m1 '^ERROR' "$log" || tail -n1 "$log") (log: $log)" >&2
    fi
    exit 1
  fi
  echo "$req_hash" > "$venv/.requirements.sha256"
fi
