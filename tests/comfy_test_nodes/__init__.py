"""A test-only ComfyUI node pack, linked into the test server beside comfyui-llmga: it writes what a graph
produced (CONDITIONING tensors) to the output folder, where host tests read it to compare numbers."""

from __future__ import annotations

import os

import folder_paths
from safetensors.torch import save_file


class SaveConditioningForTest:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "name": ("STRING", {"default": "cond"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, conditioning, name):
        cond, extra = conditioning[0]
        tensors = {"cond": cond.float().contiguous()}
        if extra.get("pooled_output") is not None:
            tensors["pooled"] = extra["pooled_output"].float().contiguous()
        save_file(tensors, os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors"))
        return {"ui": {"text": (name,)}}


NODE_CLASS_MAPPINGS = {"LLMGATestSaveConditioning": SaveConditioningForTest}
