#!/usr/bin/env bash
# Set up everything the pack, its tests and its ComfyUI host need, from nothing; safe to run again.
#   - a virtual environment (LLMGA_VENV, default .venv) on Python 3.11 (PYTHON overrides the interpreter);
#   - the ComfyUI host: COMFYUI_PATH if set, else the pinned 0.3.75 (see scripts/comfyui_host.py);
#   - torch==2.14.1 + torchvision==0.29.1 (TORCH_SPEC overrides; ComfyUI's core imports torchvision);
#   - torchaudio matching the installed torch when the host imports it at startup (ComfyUI newer than 0.3.75),
#     checked on every run, so a reused venv gets it too. No torchaudio release matches torch 2.14.1, so a new venv
#     for such a host gets torch==2.9.1 + torchvision==0.24.1 + torchaudio 2.9 instead;
#   - the host's requirements (without torch*), requirements.txt and requirements-dev.txt.
# Prints the venv's python as its last line.
#
# `setup.sh --lowest-transformers` sets up the second, small venv instead (LLMGA_LOWEST_VENV, default
# .cache/venv-lowest-transformers), where scripts/test.sh runs the parity tests (tests/lowest_transformers.txt) on the
# oldest transformers requirements.txt allows: that exact version, the tokenizers it takes, LOWEST_TORCH_SPEC
# (default torch==2.13.0, a CPU build), the rest of requirements.txt and pytest; no ComfyUI, no torchvision.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "${1:-}" = --lowest-transformers ]; then
  venv=${LLMGA_LOWEST_VENV:-$root/.cache/venv-lowest-transformers}
  lowest=$(sed -n 's/^transformers>=\([0-9.]*\).*/\1/p' "$root/requirements.txt")
  if [ -z "$lowest" ]; then
    echo "setup: error: requirements.txt has no 'transformers>=X' line to take the lowest version from" >&2
    exit 2
  fi
  spec="${LOWEST_TORCH_SPEC:-torch==2.13.0} transformers==$lowest"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv (parity tests on transformers $lowest)" >&2
    "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv "$venv"
  fi
  py=$venv/bin/python
  # The other runtime requirements as requirements.txt bounds them, and what the tests themselves import.
  others=$(grep -v -e '^transformers' -e '^#' -e '^$' "$root/requirements.txt" | sed 's/ *#.*//')
  tools=$(grep -E '^(pytest|pytest-timeout|packaging)[<>=! ]' "$root/requirements-dev.txt" | sed 's/ *#.*//')
  stamp=$(printf '%s\n' "$spec" "$others" "$tools" | sha256sum | cut -c1-16)
  if [ "$(cat "$venv/.llmga-requirements" 2>/dev/null)" != "$stamp" ]; then
    echo "setup: installing $spec and the other requirements into $venv" >&2
    # shellcheck disable=SC2086
    "$py" -m pip --disable-pip-version-check install --quiet $spec $others $tools
    echo "$stamp" > "$venv/.llmga-requirements"
  fi
  "$py" -c "import torch, transformers, diffusers, pytest; assert transformers.__version__ == '$lowest'" >/dev/null
  echo "$py"
  exit 0
fi

venv=${LLMGA_VENV:-$root/.venv}

if [ ! -x "$venv/bin/python" ]; then
  interpreter=${PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "setup: creating $venv with $interpreter" >&2
  "$interpreter" -m venv "$venv"
fi
py=$venv/bin/python
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

host=$("$py" "$root/scripts/comfyui_host.py" path)
echo "setup: ComfyUI host at $host" >&2
needs_torchaudio=$("$py" "$root/scripts/comfyui_host.py" needs-torchaudio)
if [ "$needs_torchaudio" = yes ]; then
  torch_spec=${TORCH_SPEC:-"torch==2.9.1 torchvision==0.24.1"}
else
  torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
fi

# An explicit TORCH_SPEC is applied to a reused venv too (pip does nothing when it is already met).
if [ -n "${TORCH_SPEC:-}" ] || ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing $torch_spec" >&2
  # shellcheck disable=SC2086
  pip install --quiet $torch_spec
fi

if [ "$needs_torchaudio" = yes ] && ! "$py" -c "import torchaudio" >/dev/null 2>&1; then
  torch_version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])")
  echo "setup: ComfyUI at $host imports torchaudio at startup; installing the torchaudio of torch $torch_version" >&2
  # torchaudio 2.x is released with the torch of the same minor version, and pins it exactly.
  if ! pip install --quiet "torch==$torch_version" "torchaudio==${torch_version%.*}.*"; then
    echo "setup: error: no torchaudio release matches torch $torch_version; rerun with" \
         "TORCH_SPEC=\"torch==2.9.1 torchvision==0.24.1\" (or a new LLMGA_VENV) to get a torch that has one" >&2
    exit 2
  fi
fi

"$py" "$root/scripts/comfyui_host.py" requirements "$venv/host-requirements.txt"

# Reinstall only when a requirements file changed.
stamp=$(cat "$venv/host-requirements.txt" "$root/requirements.txt" "$root/requirements-dev.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.llmga-requirements" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing requirements" >&2
  pip install --quiet -r "$venv/host-requirements.txt" -r "$root/requirements.txt" -r "$root/requirements-dev.txt"
  echo "$stamp" > "$venv/.llmga-requirements"
fi
"$py" -c "import torch, torchvision, transformers, diffusers" >/dev/null
if [ "$needs_torchaudio" = yes ]; then
  "$py" -c "import torchaudio" >/dev/null
fi
echo "$py"
