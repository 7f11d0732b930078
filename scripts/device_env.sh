#!/usr/bin/env bash
# Source this on an offline GPU machine (e.g. the H100 used for training) from the repo root:
#   source scripts/device_env.sh
# It installs the wheels carried in .whl/ (packages the GPU image lacks: diffusers, trimesh, pyrender, ...)
# into /tmp/site (PyOpenGL 3.1.9 instead of pyrender's 3.1.0 pin: on Python 3.12 3.1.0 fails on textured
# meshes with "No array-type handler for type _ctypes.type"), unpacks the GL loader .debs carried in .gl/ (for pyrender through NVIDIA's EGL),
# and installs mirage3d itself (editable, without dependencies). Idempotent: a second call is quick.
if [ ! -f /tmp/site/.mirage3d-ready ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  touch /tmp/site/.mirage3d-ready
fi
if [ -d .gl ] && [ ! -f /tmp/.gl-ready ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; touch /tmp/.gl-ready
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYOPENGL_PLATFORM=egl PYGLET_HEADLESS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if ! python3 -c "import mirage3d.cli" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
fi
