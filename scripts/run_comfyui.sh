#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), link this pack into the ComfyUI host and start it on
# 127.0.0.1:8188 (PORT overrides the port). Extra arguments go to ComfyUI's main.py.
# The pack's workflows appear in ComfyUI's template browser under "comfyui-llmga".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup.sh" | tail -n 1)
host=$("$py" "$root/scripts/comfyui_host.py" path)
"$py" "$root/scripts/comfyui_host.py" link >&2
device=()
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() or torch.backends.mps.is_available() else 1)"; then
  echo "run: no GPU found, starting ComfyUI with --cpu" >&2
  device=(--cpu)
fi
cd "$host"
exec "$py" main.py --listen 127.0.0.1 --port "${PORT:-8188}" "${device[@]}" "$@"
