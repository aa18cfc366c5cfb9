"""Training of LLMGA's checkpoints (stage-1 MLLM, stage-2 SD1.5 UNet, DiffRIR) on `accelerate`.

Every script writes checkpoints in exactly the formats the `llmga` loaders and the ComfyUI nodes read.
"""
