#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), link this pack into ComfyUI and start it on 127.0.0.1:8188
# (PORT overrides the port). Extra arguments go to ComfyUI's main.py.
#   - COMFYUI_PATH set: that ComfyUI, with its own models/, input/, output/ and custom_nodes/ folders.
#   - otherwise: the pinned ComfyUI 0.3.75 from .cache/, with its models/, input/, output/, user/ and
#     custom_nodes/ in comfyui_home/ (LLMGA_COMFYUI_HOME overrides), which the cache never touches.
# The pack's workflows appear in ComfyUI's template browser under "comfyui-llmga".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup.sh" | tail -n 1)
host=$("$py" "$root/scripts/comfyui_host.py" path)
args=(--listen 127.0.0.1 --port "${PORT:-8188}")
if [ -n "${COMFYUI_PATH:-}" ]; then
  "$py" "$root/scripts/comfyui_host.py" link >&2
else
  home=${LLMGA_COMFYUI_HOME:-$root/comfyui_home}
  mkdir -p "$home/models" "$home/custom_nodes" "$home/user"
  "$py" "$root/scripts/comfyui_host.py" link --custom-nodes "$home/custom_nodes" >&2
  args+=(--base-directory "$home" --database-url "sqlite:///$home/user/comfyui.db")
  echo "run: models go in $home/models/<kind>/ (checkpoints, diffusers, LLM, ...)" >&2
fi
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() or torch.backends.mps.is_available() else 1)"; then
  echo "run: no GPU found, starting ComfyUI with --cpu" >&2
  args+=(--cpu)
fi
cd "$host"
exec "$py" main.py "${args[@]}" "$@"
