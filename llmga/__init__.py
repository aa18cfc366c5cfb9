"""LLMGA: the library behind the comfyui-llmga node pack.

Runs without ComfyUI (torch + transformers + diffusers only); never import comfy, folder_paths or server here.
"""

__version__ = "0.1.0"
