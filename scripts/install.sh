#!/usr/bin/env bash
# One-command setup for a fresh Debian machine (the README's install command).
# - Debian packages: Mesa EGL for headless pyrender rendering, libusb for open3d.
# - Python: the CPU torch wheel first (pinned), then the project with its dev extras (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libusb-1.0-0 libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libglvnd0 >/dev/null
fi
python3 -m pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev]"
echo "mirage3d installed: $(python3 -m pip show mirage3d | grep ^Version)"
