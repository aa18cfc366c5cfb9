"""The training subpackage: trains LLMGA's checkpoints (stage-1 MLLM, stage-2 SD1.5 UNet, DiffRIR) on `accelerate`.

Trainers run as `accelerate launch -m training.<name> --config F`. Every trainer writes checkpoints in exactly
the formats the `llmga` loaders and the ComfyUI nodes read. `training.data` holds the dataset readers, the
stage-1 conversation builders with their loss masks, and the inpainting mask generators.
"""
