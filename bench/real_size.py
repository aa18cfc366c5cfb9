"""Random-weight models at the released sizes (or at the tests' tiny sizes, through the same code) for bench/gpu.py.

The assistant is built in memory from the library's own pieces rather than written as a 14 GB folder and read back:
the tests' tiny LLMGA checkpoint (tests/fixtures/mllm.py) gives config.json, generation_config.json and the
tokenizer; `read_checkpoint` reads them; at real size the config takes the 7B dimensions (`SEVEN_B`); then the base
config (`LLMGACheckpoint.base_config`), the vision tower's config (`vision_config`: CLIP ViT-L/14-336 at real size,
the fixture's tiny tower otherwise), `build_projector`, `LLMGAModel`, `load_tokenizer` and `Assistant`, as
`load_llmga` assembles them. Weights are drawn on the target device in the target dtype (no fp32 copy on the CPU).

The SD1.5 model is written in the released formats by the tests' fixture writers (tests/fixtures/sd15.py): a
diffusers folder for the pack's loader and the same weights as one single file for ComfyUI's own; at real size with
SD1.5's full UNet (float16, 1.7 GB per copy), at tiny size with the fixtures' two-level UNet.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

from transformers import AutoModelForCausalLM, CLIPVisionModel, GenerationConfig  # noqa: E402

from llmga.devices import assistant_attention  # noqa: E402
from llmga.mllm.chat import Assistant  # noqa: E402
from llmga.mllm.checkpoint import read_checkpoint  # noqa: E402
from llmga.mllm.loader import (  # noqa: E402
    LoadedAssistant,
    find_vision_tower,
    load_tokenizer,
    vision_config,
    vision_tower_name,
)
from llmga.mllm.model import LLMGAModel, build_projector  # noqa: E402
from llmga.mllm.preprocess import ImageProcessing  # noqa: E402

# The released base LLMs' config.json (lmsys/vicuna-7b-v1.5, Qwen/Qwen2-7B-Instruct) where they differ from the tiny
# fixtures, and CLIP ViT-L/14-336's width for the projector (openai/clip-vit-large-patch14-336).
SEVEN_B = {
    "vicuna": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                   intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096, mm_hidden_size=1024),
    "qwen2": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0,
                  sliding_window=131072, max_window_layers=28, tie_word_embeddings=False, mm_hidden_size=1024),
}
SEVEN_B_NAMES = {"vicuna": "Vicuna-7B", "qwen2": "Qwen2-7B"}
TINY_SD15, RANDOM_SD15 = "tiny-sd15", "random-sd15"


def fixture_checkpoint(root: Path, family: str) -> Path:
    """The tests' tiny LLMGA checkpoint of `family` under `root` (written when missing), its CLIP tower beside it."""
    from fixtures.mllm import FAMILY_SPECS, build_clip_vision_tower, build_llmga_checkpoint

    folder = root / "LLM" / FAMILY_SPECS[family].checkpoint_name
    if not (folder / "config.json").is_file():
        tower = root / "clip_vision" / "openai" / "clip-vit-large-patch14-336"
        if not (tower / "model.safetensors").is_file():
            tower = build_clip_vision_tower(root / "clip_vision")
        build_llmga_checkpoint(root / "LLM", family, tower)
    return folder


def build_assistant(folder: Path, family: str, *, tiny: bool, device: torch.device, dtype: torch.dtype,
                    attention: str) -> Assistant:
    """An `Assistant` over random weights: the checkpoint in `folder` (`fixture_checkpoint`) at its own size when
    `tiny`, else with the 7B dimensions of `family` (SEVEN_B) and CLIP ViT-L/14-336. attention: as `load_llmga`
    takes it (auto/sdpa/flash_attention_2/eager). The ids that end a reply can never be generated
    (`exclude_stop_tokens`), so every reply decodes its whole token budget."""
    checkpoint = read_checkpoint(folder)
    if not tiny:
        checkpoint = replace(checkpoint, config={**checkpoint.config, **SEVEN_B[family]})
    config = checkpoint.config
    base_config = checkpoint.base_config()
    tower_name = vision_tower_name(config)
    # Tiny: the fixture's own tower folder (its path is mm_vision_tower); real size: CLIP ViT-L/14-336's config.
    local_tower = find_vision_tower(tower_name, (), allow_paths=tiny)
    implementation = assistant_attention(attention, device, dtype)
    torch.manual_seed(0)
    with torch.device(device):
        language_model = AutoModelForCausalLM.from_config(base_config, dtype=dtype,
                                                          attn_implementation=implementation)
        tower = CLIPVisionModel(vision_config(tower_name, local_tower)).to(dtype)
        projector = build_projector(config["mm_projector_type"], config["mm_hidden_size"],
                                    base_config.hidden_size).to(dtype)
    language_model.generation_config = GenerationConfig.from_pretrained(folder)
    model = LLMGAModel(language_model.eval(), tower.eval(), projector.eval(),
                       select_layer=config.get("mm_vision_select_layer", -2),
                       select_feature=config.get("mm_vision_select_feature", "patch"))
    processing = ImageProcessing.from_folder(local_tower) if local_tower is not None else ImageProcessing()
    assistant = Assistant(LoadedAssistant(model=model, tokenizer=load_tokenizer(folder), image_processing=processing,
                                          checkpoint=checkpoint, attention=implementation))
    exclude_stop_tokens(assistant)
    return assistant


def exclude_stop_tokens(assistant: Assistant) -> None:
    """Zero the output-embedding rows of every id that ends a reply (`Assistant.eos_ids`): their logits are 0 while
    the largest of the others is far above, so greedy decoding of random weights never ends early. How fast a token
    is decoded does not depend on which token it is."""
    ids = assistant.eos_ids()
    with torch.no_grad():
        assistant.loaded.model.language_model.get_output_embeddings().weight[ids] = 0


def write_sd15(models: Path, tokenizer_dir: Path, *, tiny: bool, device: torch.device) -> tuple[str, str]:
    """An SD1.5 model with random weights in `models` (a ComfyUI models folder), written when missing; returns its
    diffusers folder's name (models/diffusers) and its single file's name (models/checkpoints). tokenizer_dir: the
    SD1.5 CLIP tokenizer (ComfyUI's comfy/sd1_tokenizer). Real size: SD1.5's UNet, drawn on `device`."""
    from bench_edit import random_sd15_unet
    from fixtures.sd15 import UNET_CONV_OUT_SCALE, tiny_sd15_unet, write_sd15_model

    name = TINY_SD15 if tiny else RANDOM_SD15
    single_file = models / "checkpoints" / f"{name}.safetensors"
    if single_file.is_file():  # written last
        return name, single_file.name
    if tiny:
        unet = tiny_sd15_unet(seed=2)
    else:
        with torch.random.fork_rng(devices=[]):
            unet = random_sd15_unet(device, seed=2)
        with torch.no_grad():  # as the fixtures' UNet: small noise predictions keep guided sampling finite
            unet.conv_out.weight.mul_(UNET_CONV_OUT_SCALE)
            unet.conv_out.bias.mul_(UNET_CONV_OUT_SCALE)
        unet = unet.half().cpu()  # SD1.5 releases ship float16 files
    write_sd15_model(models, name, unet, tokenizer_dir)
    return name, single_file.name
