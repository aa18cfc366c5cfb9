#!/usr/bin/env bash
# Set up everything the pack, its tests and its ComfyUI host need, from nothing; safe to run again.
#   - a virtual environment (LLMGA_VENV, default .venv) on Python 3.11 (PYTHON overrides the interpreter);
#   - torch==2.14.1 + torchvision==0.29.1 (TORCH_SPEC overrides; ComfyUI's core imports torchvision);
#   - the ComfyUI host: COMFYUI_PATH if set, else the pinned 0.3.75 (see scripts/comfyui_host.py);
#   - the host's requirements (without torch*), requirements.txt and requirements-dev.txt.
# Prints the venv's python as its last line.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LLMGA_VENV:-$root/.venv}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$venv/bin/python" ]; then
  interpreter=${PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "setup: creating $venv with $interpreter" >&2
  "$interpreter" -m venv "$venv"
fi
py=$venv/bin/python
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

if ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing $torch_spec" >&2
  # shellcheck disable=SC2086
  pip install --quiet $torch_spec
fi

host=$("$py" "$root/scripts/comfyui_host.py" path)
echo "setup: ComfyUI host at $host" >&2
"$py" "$root/scripts/comfyui_host.py" requirements "$venv/host-requirements.txt"

# Reinstall only when a requirements file changed.
stamp=$(cat "$venv/host-requirements.txt" "$root/requirements.txt" "$root/requirements-dev.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.llmga-requirements" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing requirements" >&2
  pip install --quiet -r "$venv/host-requirements.txt" -r "$root/requirements.txt" -r "$root/requirements-dev.txt"
  echo "$stamp" > "$venv/.llmga-requirements"
fi
"$py" -c "import torch, torchvision, transformers, diffusers" >/dev/null
echo "$py"
