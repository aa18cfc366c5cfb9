"""comfyui-llmga: the ComfyUI entry point (V3 schema API).

ComfyUI imports this folder as a package; everything inside is imported relatively so ComfyUI's own
top-level `nodes`, `server`, `utils` modules are never shadowed.
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
