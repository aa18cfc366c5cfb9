"""A library model under ComfyUI's model management, through its public functions only.

ComfyUI moves the network between its offload device (the CPU) and the GPU: `load_models_gpu` before a node runs
it, and `free_memory` when another model (SD) needs the room, or when the node is asked to let go right away.
`ModelPatcher(model, load_device, offload_device)`, `load_models_gpu(models, force_full_load=)`, `loaded_models()`,
`LoadedModel(patcher)` and `free_memory(memory_required, device, keep_loaded)` read the same in ComfyUI 0.3.64,
0.3.75 (the tested host) and its newer main branch.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import comfy.model_management as mm
import comfy.model_patcher
import torch

Model = TypeVar("Model")

# free_memory frees at least this many bytes: far past any device, so every model it may unload is unloaded.
EVERYTHING = 1e30


class ManagedModel(Generic[Model]):
    """`model` (what the nodes use: the Assistant, the DiffRIR network) and the ModelPatcher of its torch network.

    network None: weights that cannot move (bitsandbytes placed them on the GPU); load and offload do nothing.
    """

    def __init__(self, model: Model, network: torch.nn.Module | None, load_device: torch.device):
        self.model = model
        self.patcher = None if network is None else comfy.model_patcher.ModelPatcher(
            network, load_device=load_device, offload_device=mm.unet_offload_device())

    def load(self) -> None:
        """Move the whole network to its load device (ComfyUI frees room first, offloading other models)."""
        if self.patcher is not None:
            mm.load_models_gpu([self.patcher], force_full_load=True)

    def offload(self) -> None:
        """Unload the network to its offload device now, as ComfyUI does when it needs the memory; every other
        loaded model stays where it is."""
        if self.patcher is None:
            return
        others = [mm.LoadedModel(patcher) for patcher in mm.loaded_models()
                  if patcher is not None and patcher is not self.patcher]
        mm.free_memory(EVERYTHING, self.patcher.load_device, keep_loaded=others)
