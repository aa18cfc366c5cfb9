"""Stable Diffusion 1.5 helpers (model layouts and weight conversion), free of ComfyUI."""
