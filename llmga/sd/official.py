"""The official SD1.5 inference scripts reproduced: cli-sd15.py (text to image), cli-sd15-inpainting.py (inpainting).
The official code has no outpainting canvas: its users pad the picture and mask the border themselves, which
`official_inpaint` on `pipelines.outpaint_inputs(..., multiple=1)` (padding exactly as asked, binary mask) matches.

What those scripts do that changes the picture, and so what this module does:
- the scheduler saved with the model (PNDM for llmga-sd15-t2i-v2 and -inpainting-v2): `load_sd15_pipeline` always
  loads it; 50 steps, guidance 7.5, negative prompt "" (the pipelines' defaults: the scripts pass none of them);
- prompts through the lpw encoding (`llmga.prompt.long_prompt`, mode "lpw"): 3 chunks for text to image (the
  community `lpw_stable_diffusion` pipeline's max_embeddings_multiples), 4 for inpainting
  (pipeline_stable_diffusion_inpaint_lpw.py);
- text to image at 512x512 (the community pipeline's default height and width);
- inpainting: the script's `resize2512` scales picture and mask with LANCZOS so the short side is 512 (the long side
  int(long / short · 512)) and binarises the mask at >= 125 of 255; the pipeline, called without a size, then
  stretches both to the UNet's sample size × 8 (512x512 for the released models) with LANCZOS, binarises the mask at
  0.5, paints `image * (mask < 0.5)` and returns that 512x512 picture: nothing is pasted back, the output is not the
  input's size.
What stays the pack's (docs/fidelity.md): the scripts pass no generator (unseeded, noise drawn on the GPU); here image i
is drawn from a CPU generator seeded with seed + i, so a seed gives the same picture on every device. The safety checker
the scripts run is not loaded.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .pipelines import (
    SDPipeline,
    SDPipelineError,
    encode_prompts,
    is_inpainting_pipeline,
    pipeline_embeddings,
    seeded_generator,
)

# cli-sd15.py / cli-sd15-inpainting.py call the pipelines with their defaults.
OFFICIAL_STEPS = 50
OFFICIAL_CFG = 7.5
# lpw_stable_diffusion.__call__(height=512, width=512), max_embeddings_multiples=3.
OFFICIAL_T2I_SIZE = 512
T2I_CHUNKS = 3
# pipeline_stable_diffusion_inpaint_lpw.py: max_embeddings_multiples=4.
INPAINT_CHUNKS = 4
# cli-sd15-inpainting.py resize2512: the short side to 512, then mask pixels >= 125 become 255.
RESIZE_SHORT_SIDE = 512
MASK_LEVEL = 125


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


def official_inpaint_size(pipe: SDPipeline) -> int:
    """The side the official inpainting pipeline works at: the UNet's sample size × 8 (512 for SD1.5)."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def _as_mask_image(mask: np.ndarray | Image.Image) -> Image.Image:
    """A grayscale PIL mask; an [H, W] float array in [0, 1] becomes its 8-bit levels (exact for 8-bit masks)."""
    if isinstance(mask, Image.Image):
        return mask.convert("L")
    return Image.fromarray(np.rint(np.clip(np.asarray(mask, dtype=np.float64), 0, 1) * 255).astype(np.uint8))


def official_text_to_image(pipe: SDPipeline, prompt: str, *, seed: int, steps: int = OFFICIAL_STEPS,
                           cfg: float = OFFICIAL_CFG, count: int = 1,
                           size: int = OFFICIAL_T2I_SIZE) -> list[Image.Image]:
    """cli-sd15.py's `pipe(caption)`: `count` size x size pictures (512, the official size, unless told), negative "",
    lpw at 3 chunks, the model's scheduler; image i drawn with seed + i. Needs a text-to-image (4-channel) UNet, as the
    community pipeline the script loads does."""
    if is_inpainting_pipeline(pipe):
        raise SDPipelineError("the official text to image (cli-sd15.py) runs a text-to-image model such as "
                              "llmga-sd15-t2i-v2, not an inpainting one: choose that model or leave out --official")
    embeddings = pipeline_embeddings(pipe, encode_prompts(pipe, prompt, "", mode="lpw", max_chunks=T2I_CHUNKS))
    return [pipe(**embeddings, num_inference_steps=steps, guidance_scale=cfg, width=size, height=size,
                 generator=seeded_generator(seed + index)).images[0] for index in range(count)]


def official_inpaint(pipe: SDPipeline, image: Image.Image, mask: np.ndarray | Image.Image, prompt: str, *, seed: int,
                     steps: int = OFFICIAL_STEPS, cfg: float = OFFICIAL_CFG, count: int = 1) -> list[Image.Image]:
    """cli-sd15-inpainting.py: `resize2512`, then the inpainting pipeline at its default size (`official_inpaint_size`,
    512x512), negative "", lpw at 4 chunks; returns `count` pictures of that size (image i drawn with seed + i).

    mask: a grayscale PIL image or an [H, W] float array in [0, 1] (8-bit levels / 255), the image's size, white
    where new content is painted.
    """
    if not is_inpainting_pipeline(pipe):
        raise SDPipelineError("inpainting needs a pipeline loaded with inpainting=True (or a 9-channel inpainting "
                              "UNet such as llmga-sd15-inpainting-v2)")
    sd_image, sd_mask = official_resize(image.convert("RGB"), _as_mask_image(mask))
    side = official_inpaint_size(pipe)
    embeddings = pipeline_embeddings(pipe, encode_prompts(pipe, prompt, "", mode="lpw", max_chunks=INPAINT_CHUNKS))
    return [pipe(**embeddings, image=sd_image, mask_image=sd_mask, width=side, height=side, strength=1.0,
                 num_inference_steps=steps, guidance_scale=cfg, generator=seeded_generator(seed + index)).images[0]
            for index in range(count)]

