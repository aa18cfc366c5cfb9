"""The official inference scripts reproduced: cli-sd15.py and cli-sdxl.py (text to image), cli-sd15-inpainting.py and
cli-sdxl-inpainting.py (inpainting). The official code has no outpainting canvas: its users pad the picture and mask
the border themselves, which `official_inpaint` on `pipelines.outpaint_inputs(..., multiple=1)` (padding exactly as
asked, binary mask) matches.

What those scripts do that changes the picture (`OFFICIAL_SAMPLING`, one row per script), and so what this module does:
- the scheduler saved with the model (PNDM for llmga-sd15-t2i-v2 and -inpainting-v2, Euler for the SDXL models):
  `pipelines.load_sd_pipeline` always loads it; the steps, guidance and strength the scripts pass or leave to their
  pipelines' defaults; negative prompt none (SD1.5: "", SDXL: zero embeddings, `force_zeros_for_empty_prompt`);
- prompts: SD1.5 through the lpw encoding (`llmga.prompt.long_prompt`, mode "lpw"): 3 chunks for text to image (the
  community `lpw_stable_diffusion` pipeline's max_embeddings_multiples), 4 for inpainting
  (pipeline_stable_diffusion_inpaint_lpw.py); SDXL through `llmga.prompt.long_prompt_xl` at 4 chunks, the encoding
  pipeline_stable_diffusion_xl*_lpw.py share with training;
- text to image at the pipelines' default size: 512x512 for the community SD1.5 pipeline, the UNet's sample size x 8
  (1024x1024 for llmga-sdxl-t2i) for the SDXL one; cli-sdxl.py loads without torch_dtype, so in fp32
  (`OfficialSampling.dtype`);
- SD1.5 inpainting: the script's `resize2512` scales picture and mask with LANCZOS so the short side is 512 (the long
  side int(long / short · 512)) and binarises the mask at >= 125 of 255; the pipeline, called without a size, then
  stretches both to the UNet's sample size × 8 (512x512 for the released models) with LANCZOS, binarises the mask at
  0.5, paints `image * (mask < 0.5)` and returns that 512x512 picture;
- SDXL inpainting: cli-sdxl-inpainting.py hands the picture and the mask file as they are to the pipeline (its
  binarisation at 125 only makes the assistant's masked picture), which stretches both to its default size (1024x1024
  for llmga-sdxl-inpainting-v2) with LANCZOS, binarises the mask at 0.5 and denoises from the picture noised to
  strength 0.8 for int(30 x 0.8) = 24 of its 30 steps, at the pipeline's guidance 7.5;
- nothing is pasted back: the output is the pipeline's square picture, not the input's size.
What stays the pack's (docs/fidelity.md): the scripts pass no generator (unseeded, noise drawn on the GPU); here image i
is drawn from a CPU generator seeded with seed + i, so a seed gives the same picture on every device. The safety checker
the SD1.5 scripts run is not loaded, nor the SDXL invisible watermark (the official environment does not install it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .pipelines import (
    EXAMPLE_MODELS,
    SDPipeline,
    SDPipelineError,
    encode_prompts,
    is_inpainting_pipeline,
    is_sdxl_pipeline,
    pipeline_default_size,
    pipeline_embeddings,
    pipeline_family,
    seeded_generator,
)


@dataclass(frozen=True)
class OfficialSampling:
    """What one official script renders with: what it passes its pipeline, or leaves to the pipeline's defaults.

    size: the side of the square it renders at (the released models' UNet sample size x 8); strength: how far the
    picture is noised before inpainting (1: pure noise); encoding / chunks: the prompt encoding and its chunk cap;
    dtype: the precision it loads the pipeline in where the pack's `auto` differs on GPUs (None: `auto` is it).
    """

    script: str
    steps: int
    cfg: float
    size: int
    strength: float
    encoding: str
    chunks: int
    dtype: str | None = None


# (family, inpainting) -> the script. cli-sd15*.py: 50 steps and guidance 7.5 (the lpw pipelines' defaults), 512x512,
# lpw at max_embeddings_multiples 3 / 4, fp16. cli-sdxl.py: StableDiffusionXLPipeline lpw's defaults (50 steps,
# guidance 5.0, default_sample_size x 8), loaded without torch_dtype. cli-sdxl-inpainting.py:
# num_inference_steps=30, strength=0.80, the pipeline's guidance 7.5 and size, torch_dtype fp16.
OFFICIAL_SAMPLING = {
    ("sd15", False): OfficialSampling("cli-sd15.py", 50, 7.5, 512, 1.0, "lpw", 3),
    ("sd15", True): OfficialSampling("cli-sd15-inpainting.py", 50, 7.5, 512, 1.0, "lpw", 4),
    ("sdxl", False): OfficialSampling("cli-sdxl.py", 50, 5.0, 1024, 1.0, "llmga", 4, dtype="fp32"),
    ("sdxl", True): OfficialSampling("cli-sdxl-inpainting.py", 30, 7.5, 1024, 0.8, "llmga", 4),
}
# cli-sd15-inpainting.py resize2512: the short side to 512, then mask pixels >= 125 become 255. The SDXL script's
# assistant picture is masked at the same level.
RESIZE_SHORT_SIDE = 512
MASK_LEVEL = 125


def official_sampling(family: str, inpainting: bool) -> OfficialSampling:
    """The official script's settings for a model of `family` ("sd15" / "sdxl") and task (inpainting or not)."""
    return OFFICIAL_SAMPLING[(family, inpainting)]


def official_resize(image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
    """cli-sd15-inpainting.py `resize2512`: (image, mask) scaled with LANCZOS to a short side of 512 (the long side
    int(long / short · 512), truncated), the mask (grayscale, the image's size) then 0 below 125 and 255 from it."""
    width, height = image.size
    if height > width:
        size = (RESIZE_SHORT_SIDE, int(height / width * RESIZE_SHORT_SIDE))
    else:
        size = (int(width / height * RESIZE_SHORT_SIDE), RESIZE_SHORT_SIDE)
    resized = image.resize(size, Image.Resampling.LANCZOS)
    levels = np.asarray(mask.convert("L").resize(size, Image.Resampling.LANCZOS))
    return resized, Image.fromarray(np.where(levels >= MASK_LEVEL, 255, 0).astype(np.uint8))


def _as_mask_image(mask: np.ndarray | Image.Image) -> Image.Image:
    """A grayscale PIL mask; an [H, W] float array in [0, 1] becomes its 8-bit levels (exact for 8-bit masks)."""
    if isinstance(mask, Image.Image):
        return mask.convert("L")
    return Image.fromarray(np.rint(np.clip(np.asarray(mask, dtype=np.float64), 0, 1) * 255).astype(np.uint8))


def _official_embeddings(pipe: SDPipeline, prompt: str, sampling: OfficialSampling) -> dict:
    return pipeline_embeddings(pipe, encode_prompts(pipe, prompt, "", mode=sampling.encoding,
                                                    max_chunks=sampling.chunks))


def official_text_to_image(pipe: SDPipeline, prompt: str, *, seed: int, steps: int | None = None,
                           cfg: float | None = None, count: int = 1, size: int | None = None) -> list[Image.Image]:
    """cli-sd15.py's / cli-sdxl.py's `pipe(caption)`: `count` size x size pictures (None: the script's, 512 for SD1.5,
    the pipeline's default for SDXL), no negative, the script's encoding, steps and guidance unless told, the model's
    scheduler; image i drawn with seed + i. Needs a text-to-image (4-channel) UNet, as the scripts' pipelines do."""
    sampling = official_sampling(pipeline_family(pipe), inpainting=False)
    if is_inpainting_pipeline(pipe):
        family = pipeline_family(pipe)
        raise SDPipelineError(f"the official text to image ({sampling.script}) runs a text-to-image model such as "
                              f"{EXAMPLE_MODELS[(family, False)].removeprefix('binxia/')}, not an inpainting one: "
                              "choose that model or leave out --official")
    if size is None:
        size = pipeline_default_size(pipe) if is_sdxl_pipeline(pipe) else sampling.size
    embeddings = _official_embeddings(pipe, prompt, sampling)
    return [pipe(**embeddings, num_inference_steps=steps or sampling.steps, guidance_scale=sampling.cfg
                 if cfg is None else cfg, width=size, height=size, generator=seeded_generator(seed + index)).images[0]
            for index in range(count)]


def official_inpaint(pipe: SDPipeline, image: Image.Image, mask: np.ndarray | Image.Image, prompt: str, *, seed: int,
                     steps: int | None = None, cfg: float | None = None, count: int = 1) -> list[Image.Image]:
    """cli-sd15-inpainting.py (`resize2512` first) or cli-sdxl-inpainting.py (the picture and mask as given), then the
    inpainting pipeline at its default size (`pipelines.pipeline_default_size`: 512x512 / 1024x1024) with no negative,
    the script's encoding, strength (1 / 0.8), steps and guidance unless told; returns `count` pictures of that size
    (image i drawn with seed + i).

    mask: a grayscale PIL image or an [H, W] float array in [0, 1] (8-bit levels / 255), the image's size, white
    where new content is painted.
    """
    if not is_inpainting_pipeline(pipe):
        raise SDPipelineError("inpainting needs a pipeline loaded with inpainting=True (or a 9-channel inpainting "
                              "UNet such as llmga-sd15-inpainting-v2 or llmga-sdxl-inpainting-v2)")
    sampling = official_sampling(pipeline_family(pipe), inpainting=True)
    image, mask_image = image.convert("RGB"), _as_mask_image(mask)
    if not is_sdxl_pipeline(pipe):
        image, mask_image = official_resize(image, mask_image)
    side = pipeline_default_size(pipe)
    embeddings = _official_embeddings(pipe, prompt, sampling)
    return [pipe(**embeddings, image=image, mask_image=mask_image, width=side, height=side,
                 strength=sampling.strength, num_inference_steps=steps or sampling.steps,
                 guidance_scale=sampling.cfg if cfg is None else cfg,
                 generator=seeded_generator(seed + index)).images[0]
            for index in range(count)]
