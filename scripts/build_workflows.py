"""Write the shareable workflows: `workflows/<name>.json` (the ComfyUI frontend's format) and their API-format twins
`workflows/api/<name>.json` (what `/prompt` runs; the host tests run these with tiny models swapped in).

Node inputs, outputs and widget order come from the running ComfyUI's `/object_info`, so a workflow is described
only by its nodes, their widget values and their links:

    python scripts/build_workflows.py            # starts the pinned ComfyUI with this pack, writes workflows/
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

from comfy_server import ComfyServer  # noqa: E402
from comfyui_host import resolve_comfyui  # noqa: E402
from workflow_api import is_widget, ui_to_api  # noqa: E402

from llmga.hub import DIFFRIR_FILE as DIFFRIR  # noqa: E402

ASSISTANT = "binxia/llmga-Qwen2-0.5B-full-finetune"
SD_T2I = "binxia/llmga-sd15-t2i-v2"
SD_INPAINT = "binxia/llmga-sd15-inpainting-v2"
# Sampling for LLMGA's SD1.5 as the official CLIs run it: 50 steps of the model repo's PNDM (PLMS) at CFG 7.5.
# ComfyUI has no PNDM; ipndm is the same 4th-order Adams-Bashforth multistep on the noise prediction with the DDIM
# transfer (warm-up orders 1-3), and ddim_uniform gives PNDM's timesteps (981, 961, ..., 1 with steps_offset 1).
SAMPLER = {"steps": 50, "cfg": 7.5, "sampler_name": "ipndm", "scheduler": "ddim_uniform", "denoise": 1.0}
# cli-sd15-inpainting.py binarises the mask at >= 125/255; ThresholdMask keeps mask > value, the same on 8-bit masks.
MASK_THRESHOLD = 0.49
SDXL_T2I = "binxia/llmga-sdxl-t2i"
SDXL_INPAINT = "binxia/llmga-sdxl-inpainting-v2"
# Sampling for LLMGA's SDXL as cli-sdxl.py runs it: 50 steps of the model repo's EulerDiscreteScheduler (SDXL base's,
# 'leading' timesteps 981, 961, ..., 1) at CFG 5.0, 1024x1024. ComfyUI's euler is the same step and ddim_uniform gives
# exactly those timesteps (normal would space them from 999 down to 0).
SDXL_SAMPLER = {"steps": 50, "cfg": 5.0, "sampler_name": "euler", "scheduler": "ddim_uniform", "denoise": 1.0}
# cli-sdxl-inpainting.py: 30 steps at strength 0.8 and the pipeline's CFG 7.5. diffusers then runs the last
# int(30 x 0.8) = 24 of the 30-step schedule (760, 727, ..., 1) from the picture noised to timestep 760; KSampler counts
# the steps it runs: 24 steps at denoise 0.8 build int(24 / 0.8) = 30 and run the same last 24.
SDXL_INPAINT_SAMPLER = {"steps": 24, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform", "denoise": 0.8}
# StableDiffusionXLInpaintPipeline binarises the mask at 0.5 (>= 128/255 on 8-bit masks, i.e. > 0.5).
SDXL_MASK_THRESHOLD = 0.5
SDXL_SIZE = 1024
SDXL_CONTROLNET = "controlnet-canny-sdxl-1.0.safetensors"
# stabilityai/sd-vae-ft-mse (what cli-sd15-editing.py loads) as ComfyUI users keep it: the single-file release of the
# same weights in stabilityai/sd-vae-ft-mse-original.
EDIT_VAE = "vae-ft-mse-840000-ema-pruned.safetensors"
# cli-sd15-editing.py centre-crops the picture to a square and resizes it to 512x512 before the assistant and the edit.
EDIT_SIZE = 512


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    title: str | None = None
    size: tuple[int, int] = (340, 120)


@dataclass(frozen=True)
class Family:
    """What a workflow changes between LLMGA's SD1.5 and SDXL models: the loader and long-prompt encoder nodes, the
    released models, the official sampling (text to image, inpainting), the latent size and the UNet's mask threshold.
    pure_noise_inpaint: the official inpainting starts from pure noise (strength 1.0) rather than the noised picture."""

    loader: str
    encoder: str
    t2i: str
    inpaint: str
    sampler: dict
    inpaint_sampler: dict
    size: int
    mask_threshold: float
    pure_noise_inpaint: bool
    encoder_size: tuple[int, int]


SD15 = Family("LLMGALoadSD15", "LLMGALongPromptEncode", SD_T2I, SD_INPAINT, SAMPLER, SAMPLER, 512, MASK_THRESHOLD,
              True, (360, 260))
SDXL = Family("LLMGALoadSDXL", "LLMGALongPromptEncodeSDXL", SDXL_T2I, SDXL_INPAINT, SDXL_SAMPLER,
              SDXL_INPAINT_SAMPLER, SDXL_SIZE, SDXL_MASK_THRESHOLD, False, (360, 420))


@dataclass
class Workflow:
    name: str
    note: str
    nodes: list[Node]


def ui_workflow(workflow: Workflow, info: dict) -> dict:
    """The frontend's JSON for `workflow`, widget values in /object_info order, links numbered in node order."""
    nodes, links = [], []
    by_id = {node.id: node for node in workflow.nodes}
    outputs: dict[int, list[dict]] = {}
    for node in workflow.nodes:
        if node.type == "MarkdownNote":
            continue
        spec = info[node.type]
        outputs[node.id] = [{"name": name, "type": kind, "slot_index": i, "links": []}
                            for i, (name, kind) in enumerate(zip(spec["output_name"], spec["output"], strict=True))]
    for order, node in enumerate(workflow.nodes):
        entry = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                 "order": order, "mode": 0, "inputs": [], "outputs": outputs.get(node.id, []),
                 "properties": {"Node name for S&R": node.type}, "widgets_values": []}
        if node.title:
            entry["title"] = node.title
        if node.type == "MarkdownNote":
            entry["widgets_values"] = [node.widgets["text"]]
            nodes.append(entry)
            continue
        unknown = set(node.widgets) | set(node.links)
        for group in ("required", "optional"):
            for name, spec in info[node.type]["input"].get(group, {}).items():
                unknown.discard(name)
                widget = is_widget(spec)
                if widget:
                    options = spec[1] if len(spec) > 1 else {}
                    entry["widgets_values"].append(node.widgets[name] if name in node.widgets else default(spec))
                    if options.get("control_after_generate"):
                        entry["widgets_values"].append("fixed")
                if name in node.links or not widget:
                    port = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": None}
                    if widget:
                        port["widget"] = {"name": name}
                    if group == "optional" and not widget:
                        port["shape"] = 7
                    if name in node.links:
                        source, slot = node.links[name]
                        link_id = len(links) + 1
                        kind = outputs[source][slot]["type"]
                        links.append([link_id, source, slot, node.id, len(entry["inputs"]), kind])
                        outputs[source][slot]["links"].append(link_id)
                        port["link"] = link_id
                    entry["inputs"].append(port)
        if unknown:
            raise ValueError(f"{workflow.name}: node {node.id} ({node.type}) has no inputs named {sorted(unknown)}")
        nodes.append(entry)
    assert all(source in by_id for _, source, *_ in links)
    workflow_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-llmga/workflows/{workflow.name}"))
    return {"id": workflow_id, "revision": 0, "last_node_id": max(by_id), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}}, "version": 0.4}


def default(spec: list):
    """A widget's default value: its `default`, else a combo's first option."""
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
    return choices[0] if choices else None


def note(text: str) -> Node:
    return Node(1, "MarkdownNote", (40, 40), {"text": text}, size=(520, 260))


def assistant_nodes(task: str, message: str, *, image=None, mask=None, history=None, chat_id=3) -> list[Node]:
    links = {"assistant": (2, 0)}
    links.update({k: v for k, v in (("image", image), ("mask", mask), ("history", history)) if v is not None})
    return [Node(2, "LLMGALoadAssistant", (40, 340), {"model": ASSISTANT}, size=(340, 230)),
            Node(chat_id, "LLMGAChat", (420, 340), {"message": message, "task": task}, links, size=(400, 440))]


def t2i_nodes(prompt_from: tuple[int, int], first_id: int, x: int = 880, family: Family = SD15, *,
              with_loader: bool = True, seed: int = 0, y: int = 340) -> list[Node]:
    loader, encode, latent, sampler, decode, save = range(first_id, first_id + 6)
    nodes = [Node(loader, family.loader, (x, y - 240), {"model": family.t2i}, size=(340, 100))] if with_loader else []
    sd = first_id if with_loader else 10
    return nodes + [
        Node(encode, family.encoder, (x, y), {"negative_prompt": ""}, {"clip": (sd, 1), "prompt": prompt_from},
             size=family.encoder_size),
        Node(latent, "EmptyLatentImage", (x, y + family.encoder_size[1] + 260),
             {"width": family.size, "height": family.size}, size=(320, 110)),
        Node(sampler, "KSampler", (x + 400, y), {"seed": seed, **family.sampler},
             {"model": (sd, 0), "positive": (encode, 0), "negative": (encode, 1), "latent_image": (latent, 0)},
             size=(320, 270)),
        Node(decode, "VAEDecode", (x + 760, y), {}, {"samples": (sampler, 0), "vae": (sd, 2)}, size=(220, 50)),
        Node(save, "SaveImage", (x + 760, y + 100), {"filename_prefix": "llmga"}, {"images": (decode, 0)},
             size=(400, 420)),
    ]


def inpaint_nodes(pixels: tuple[int, int], mask: tuple[int, int], prompt_from: tuple[int, int], x: int = 880,
                  family: Family = SD15) -> list[Node]:
    """The official 9-channel pipeline on native nodes: the UNet gets the mask binarised (ThresholdMask) and sampling
    never blends the picture back in (noise_mask off: the model keeps the context itself); SD1.5 starts from pure
    noise (the encoded picture x 0), SDXL from the encoded picture noised to its denoise (strength 0.8). The soft mask
    serves Paste Back only."""
    below = family.encoder_size[1] + 60
    pure_noise = [Node(19, "LatentMultiply", (x + 400, 680), {"multiplier": 0.0}, {"samples": (12, 2)},
                       title="Pure noise start (official)", size=(320, 80))] if family.pure_noise_inpaint else []
    return [
        Node(10, family.loader, (x, 100), {"model": family.inpaint}, size=(340, 100)),
        Node(11, family.encoder, (x, 340), {"negative_prompt": ""}, {"clip": (10, 1), "prompt": prompt_from},
             size=family.encoder_size),
        Node(18, "ThresholdMask", (x, 340 + below), {"value": family.mask_threshold}, {"mask": mask},
             title="Binary mask (official)", size=(320, 80)),
        Node(12, "InpaintModelConditioning", (x, 540 + below), {"noise_mask": False},
             {"positive": (11, 0), "negative": (11, 1), "vae": (10, 2), "pixels": pixels, "mask": (18, 0)},
             size=(320, 140)),
        *pure_noise,
        Node(13, "KSampler", (x + 400, 340), {"seed": 0, **family.inpaint_sampler},
             {"model": (10, 0), "positive": (12, 0), "negative": (12, 1),
              "latent_image": (19, 0) if family.pure_noise_inpaint else (12, 2)}, size=(320, 270)),
        Node(14, "VAEDecode", (x + 760, 340), {}, {"samples": (13, 0), "vae": (10, 2)}, size=(220, 50)),
        Node(15, "LLMGAPasteBack", (x + 760, 440), {"feathering": 8},
             {"original": pixels, "generated": (14, 0), "mask": mask}, size=(300, 130)),
        Node(16, "SaveImage", (x + 1100, 340), {"filename_prefix": "llmga"}, {"images": (15, 0)}, size=(400, 420)),
    ]


def with_restore(nodes: list[Node], pixels: tuple[int, int], mask: tuple[int, int], x: int = 880) -> list[Node]:
    """The inpaint nodes with LLMGA Paste Back replaced by DiffRIR: the decoded result is restored against the
    original's kept pixels (which DiffRIR keeps exactly, as Paste Back did)."""
    kept = [node for node in nodes if node.type not in ("LLMGAPasteBack", "SaveImage")]
    return kept + [
        Node(17, "LLMGALoadDiffRIR", (x + 760, 560), {"model": DIFFRIR}, size=(300, 90)),
        Node(15, "LLMGADiffRIRRestore", (x + 760, 700), {"seed": 0},
             {"diffrir": (17, 0), "generated": (14, 0), "reference": pixels, "mask": mask}, size=(300, 250)),
        Node(16, "SaveImage", (x + 1100, 340), {"filename_prefix": "llmga"}, {"images": (15, 0)}, size=(400, 420)),
    ]


def controlnet_nodes(family: Family, controlnet: str) -> list[Node]:
    """Text-to-image nodes with the prompt's conditioning through ControlNetApplyAdvanced (control image: node 4)."""
    return [
        *[n for n in t2i_nodes((3, 1), 10, family=family) if n.type != "KSampler"],
        Node(20, "ControlNetLoader", (880, 1000 + family.encoder_size[1] - 260), {"control_net_name": controlnet},
             size=(340, 60)),
        Node(21, "ControlNetApplyAdvanced", (1280, 100), {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0},
             {"positive": (11, 0), "negative": (11, 1), "control_net": (20, 0), "image": (4, 0), "vae": (10, 2)},
             size=(320, 190)),
        Node(13, "KSampler", (1280, 340), {"seed": 0, **family.sampler},
             {"model": (10, 0), "positive": (21, 0), "negative": (21, 1), "latent_image": (12, 0)}, size=(320, 270)),
    ]


def reply_preview(chat_id: int = 3, node_id: int = 30, pos=(420, 820)) -> Node:
    return Node(node_id, "PreviewAny", pos, {}, {"source": (chat_id, 0)}, title="Assistant reply", size=(400, 200))


def edit_nodes(method: str, instruction: str, *, official: bool = False) -> list[Node]:
    """The official two-turn editing flow (cli-sd15-editing.py): turn 0 'Generate a similar image' with the picture
    gives the source prompt, turn 1 the bare instruction gives the target prompt; each reply is parsed like the
    official code (no tags: the whole reply), then LLMGA Inversion Edit edits the picture. official: the picture is
    also centre-cropped to a 512x512 square first (ImageScale), the VAE is sd-vae-ft-mse (VAELoader) and the edit
    node's `official` is on (each phase's prompt encoding, the sampled DiffEdit mask), as there."""
    picture, vae = ((15, 0), (16, 0)) if official else ((4, 0), (10, 2))
    official_nodes = [
        Node(15, "ImageScale", (40, 980), {"upscale_method": "lanczos", "width": EDIT_SIZE, "height": EDIT_SIZE,
                                           "crop": "center"}, {"image": (4, 0)}, title="Square 512x512 (official)",
             size=(340, 130)),
        Node(16, "VAELoader", (880, 240), {"vae_name": EDIT_VAE}, title="sd-vae-ft-mse (official)", size=(340, 60)),
    ] if official else []
    return [
        Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
        *official_nodes,
        *assistant_nodes("similar_image", "Generate a similar image", image=picture),
        Node(6, "LLMGAChat", (420, 1300), {"message": instruction, "task": "chat"},
             {"assistant": (2, 0), "history": (3, 3)}, title="LLMGA Chat (instruction)", size=(400, 440)),
        Node(7, "LLMGAExtractGenerationPrompt", (880, 560), {"no_tag_fallback": "whole reply"}, {"reply": (3, 4)},
             title="Source prompt", size=(340, 120)),
        Node(8, "LLMGAExtractGenerationPrompt", (880, 720), {"no_tag_fallback": "whole reply"}, {"reply": (6, 4)},
             title="Target prompt", size=(340, 120)),
        Node(10, "LLMGALoadSD15", (880, 100), {"model": SD_T2I}, size=(340, 100)),
        Node(11, "LLMGAInversionEdit", (1280, 100), {"method": method, "official": official},
             {"model": (10, 0), "clip": (10, 1), "vae": vae, "image": picture, "source_prompt": (7, 0),
              "target_prompt": (8, 0)}, size=(360, 620)),
        Node(12, "SaveImage", (1680, 100), {"filename_prefix": "llmga_edit"}, {"images": (11, 0)}, size=(400, 420)),
        Node(13, "MaskToImage", (1680, 560), {}, {"mask": (11, 1)}, size=(220, 50)),
        Node(14, "PreviewImage", (1680, 640), {}, {"images": (13, 0)}, title="Edit mask", size=(400, 320)),
        reply_preview(), reply_preview(6, 31, (420, 1780)),
    ]


EDIT_NOTE = ("\n\nAs in the official editing CLI, the first **LLMGA Chat** describes the picture (*Generate a similar "
             "image*: the source prompt) and the second answers your instruction (the target prompt). Edit the "
             "instruction in the second Chat.")

EDIT_OFFICIAL_NOTE = ("\n\nAs there, the picture is centre-cropped to a 512×512 square (**Square 512x512**) and "
                      "encoded and decoded with `sd-vae-ft-mse` (**sd-vae-ft-mse**): save "
                      f"`{EDIT_VAE}` from https://huggingface.co/stabilityai/sd-vae-ft-mse-original in "
                      "`models/vae/` (or connect the SD loader's VAE instead). **LLMGA Inversion Edit** has "
                      "*official* on: each phase encodes the prompts as the official pipeline (the inversion's source "
                      "prompt cut to 77 tokens) and the DiffEdit mask starts from VAE posterior samples.")

MODELS_NOTE = ("\n\nModels: an LLMGA assistant in `models/LLM/` and LLMGA's SD1.5 in `models/diffusers/` — the "
               "released `binxia/…` names are downloaded on first use when the loaders' *allow_download* is on.")

SAMPLER_NOTE = ("\n\nSampling: 50 steps of `ipndm` on the `ddim_uniform` schedule at CFG 7.5. The official pipelines "
                "run 50 steps of the model repo's PNDM scheduler at CFG 7.5; ComfyUI has no PNDM, and `ipndm` is its "
                "multistep (4th-order Adams–Bashforth on the noise prediction) while `ddim_uniform` gives its "
                "timesteps (981, 961, …, 1), so only PNDM's first-step correction (one more model call) is missing. "
                "For fewer steps, switch to `dpmpp_2m` + `karras` (about 25 steps).")
INPAINT_NOTE = ("\n\nAs the official 9-channel pipeline: the UNet gets the mask binarised at 125/255 "
                "(**Binary mask**), sampling starts from pure noise (**Pure noise start**) and never blends the "
                "picture back outside the mask (InpaintModelConditioning's *noise_mask* off: the model keeps the "
                "context itself). The soft mask goes only to the assistant and to the compositing at the end. Unlike "
                "the official CLI, which stretches to 512×512, it runs at the picture's own size.")
PASTE_NOTE = " The official CLI has no paste-back: connect VAE Decode to Save Image to see its raw output."
WORKFLOWS = [
    Workflow("llmga_text_to_image",
             "## LLMGA: text to image\n\nType a short idea into **LLMGA Chat**. The assistant writes a detailed "
             "prompt; **LLMGA Long Prompt Encode** feeds all of it (up to 300 tokens) to LLMGA's SD1.5 the way it "
             "was trained." + SAMPLER_NOTE + MODELS_NOTE,
             [note(""), *assistant_nodes("text_to_image", "a cozy wooden cabin in a snowy forest at dusk"),
              *t2i_nodes((3, 1), 10), reply_preview()]),
    Workflow("llmga_similar_image",
             "## LLMGA: similar image\n\nLoad a picture; the assistant describes it as a generation prompt and "
             "SD1.5 paints a new image with the same content." + SAMPLER_NOTE + MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              *assistant_nodes("similar_image", "", image=(4, 0)), *t2i_nodes((3, 1), 10), reply_preview()]),
    Workflow("llmga_inpaint",
             "## LLMGA: inpainting\n\nLoad a picture with a transparent hole (or paint a mask in the mask editor). "
             "The assistant sees the hole black, as in its training, and imagines what belongs there; LLMGA's "
             "9-channel SD1.5 paints it and **LLMGA Paste Back** keeps every other pixel exactly." + INPAINT_NOTE
             + PASTE_NOTE + SAMPLER_NOTE + MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              *assistant_nodes("inpaint", "", image=(4, 0), mask=(4, 1)), *inpaint_nodes((4, 0), (4, 1), (3, 1)),
              reply_preview()]),
    Workflow("llmga_outpaint",
             "## LLMGA: outpainting\n\n**LLMGA Outpaint Canvas** adds room around the picture (multiples of 8); the "
             "assistant imagines the whole scene and LLMGA's inpainting SD1.5 fills the new area; **LLMGA Paste Back** "
             "blends the seam over the canvas's feathered mask." + INPAINT_NOTE + PASTE_NOTE + SAMPLER_NOTE
             + MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              Node(5, "LLMGAOutpaintCanvas", (40, 980), {"right": 256, "left": 0, "top": 0, "bottom": 0,
                                                         "feathering": 16}, {"image": (4, 0)}, size=(340, 200)),
              *assistant_nodes("outpaint", "", image=(5, 0), mask=(5, 1)), *inpaint_nodes((5, 0), (5, 1), (3, 1)),
              reply_preview()]),
    Workflow("llmga_controlnet",
             "## LLMGA: prompt + ControlNet\n\nThe assistant's long prompt composes with any SD1.5 ControlNet: the "
             "conditioning from **LLMGA Long Prompt Encode** goes through ControlNetApplyAdvanced. Use a control "
             "image made for your ControlNet (a lineart or canny drawing, a depth map…)." + SAMPLER_NOTE + MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, title="Control image",
                             size=(340, 320)),
              *assistant_nodes("text_to_image", "a lighthouse on a cliff in a storm"),
              *controlnet_nodes(SD15, "control_v11p_sd15_lineart.pth"), reply_preview()]),
    Workflow("llmga_interactive",
             "## LLMGA: two turns\n\nThe first **LLMGA Chat** turns an idea into an image; the second continues the "
             "same conversation (its *history* input) to refine it, and renders again." + SAMPLER_NOTE + MODELS_NOTE,
             [note(""), *assistant_nodes("text_to_image", "a fox in a meadow"), *t2i_nodes((3, 1), 10),
              Node(6, "LLMGAChat", (420, 1500), {"message": "Make it a snowy winter night.", "task": "chat"},
                   {"assistant": (2, 0), "history": (3, 3)}, size=(400, 440)),
              *t2i_nodes((6, 1), 20, with_loader=False, y=1500, seed=1), reply_preview(),
              reply_preview(6, 31, (420, 1980))]),
]
RESTORE_NOTE = ("\n\n**LLMGA DiffRIR Restore** then makes the new region's texture, brightness and contrast match the "
                "kept pixels (which it keeps exactly). DiffRIR's weights are not on the hub: download the S2 x1 GAN "
                "weights from the Google Drive folder linked in https://github.com/Zj-BinXia/DiffRIR and save them "
                f"as `models/diffrir/{DIFFRIR}` (or pick your file in **LLMGA Load DiffRIR**).")
WORKFLOWS += [
    Workflow("llmga_inpaint_restore",
             "## LLMGA: inpainting + DiffRIR\n\nLike *llmga_inpaint*: the assistant imagines what belongs in the "
             "hole and LLMGA's 9-channel SD1.5 paints it." + RESTORE_NOTE + INPAINT_NOTE + SAMPLER_NOTE + MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              *assistant_nodes("inpaint", "", image=(4, 0), mask=(4, 1)),
              *with_restore(inpaint_nodes((4, 0), (4, 1), (3, 1)), (4, 0), (4, 1)), reply_preview()]),
    Workflow("llmga_outpaint_restore",
             "## LLMGA: outpainting + DiffRIR\n\nLike *llmga_outpaint*: **LLMGA Outpaint Canvas** adds room, the "
             "assistant imagines the whole scene and LLMGA's inpainting SD1.5 fills the new area." + RESTORE_NOTE
             + INPAINT_NOTE + SAMPLER_NOTE + MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              Node(5, "LLMGAOutpaintCanvas", (40, 980), {"right": 256, "left": 0, "top": 0, "bottom": 0,
                                                         "feathering": 16}, {"image": (4, 0)}, size=(340, 200)),
              *assistant_nodes("outpaint", "", image=(5, 0), mask=(5, 1)),
              *with_restore(inpaint_nodes((5, 0), (5, 1), (3, 1)), (5, 0), (5, 1)), reply_preview()]),
]
SDXL_SAMPLER_NOTE = ("\n\nSampling: 50 steps of `euler` on the `ddim_uniform` schedule at CFG 5.0, 1024×1024, as "
                     "`cli-sdxl.py` runs LLMGA's SDXL. Its scheduler is the one saved in the model repo, SDXL base's "
                     "Euler (EulerDiscreteScheduler, 'leading' timesteps 981, 961, …, 1): ComfyUI's `euler` takes the "
                     "same step and `ddim_uniform` gives exactly those timesteps (`normal` would space them from 999 "
                     "to 0). Only the starting noise differs, by 0.3% (diffusers scales it by √(σ²+1), ComfyUI by σ).")
SDXL_INPAINT_NOTE = ("\n\nAs the official SDXL inpainting pipeline (`cli-sdxl-inpainting.py`: the 9-channel UNet in "
                     "StableDiffusionXLInpaintPipeline at strength 0.8): the UNet gets the mask binarised at 0.5 "
                     "(**Binary mask**), sampling starts from the picture itself noised to the strength "
                     "(InpaintModelConditioning's latent at *denoise* 0.8, so what lies under the hole shows through a "
                     "little, unlike SD1.5's pure-noise start) and never blends the picture back outside the mask "
                     "(*noise_mask* off: the model keeps the context itself). The soft mask goes only to the "
                     "assistant and to the compositing at the end. Unlike the official CLI, which stretches to "
                     "1024×1024, it runs at the picture's own size (SDXL does best near 1024×1024; the size "
                     "conditioning keeps the official 1024)."
                     "\n\nSampling: the official 30 steps at strength 0.8 and CFG 7.5 with the model repo's Euler "
                     "scheduler run the last int(30 × 0.8) = 24 steps of a 30-step schedule (timesteps 760, 727, …, "
                     "1). KSampler counts the steps it runs: **24 steps at denoise 0.8** of `euler` on `ddim_uniform` "
                     "build int(24 / 0.8) = 30 and run the same last 24 (`ddim_uniform` gives the repo's 'leading' "
                     "timesteps).")
SDXL_MODELS_NOTE = ("\n\nModels: an LLMGA assistant in `models/LLM/` and LLMGA's SDXL in `models/diffusers/` — the "
                    f"released `{SDXL_T2I}` and `{SDXL_INPAINT}` are downloaded on first use when the loaders' "
                    "*allow_download* is on.")
WORKFLOWS += [
    Workflow("llmga_sdxl_text_to_image",
             "## LLMGA SDXL: text to image\n\nType a short idea into **LLMGA Chat**. The assistant writes a detailed "
             "prompt; **LLMGA Long Prompt Encode (SDXL)** feeds all of it (up to 300 tokens) to both text encoders "
             "of LLMGA's SDXL the way it was trained." + SDXL_SAMPLER_NOTE + SDXL_MODELS_NOTE,
             [note(""), *assistant_nodes("text_to_image", "a cozy wooden cabin in a snowy forest at dusk"),
              *t2i_nodes((3, 1), 10, family=SDXL), reply_preview()]),
    Workflow("llmga_sdxl_similar_image",
             "## LLMGA SDXL: similar image\n\nLoad a picture; the assistant describes it as a generation prompt and "
             "LLMGA's SDXL paints a new image with the same content." + SDXL_SAMPLER_NOTE + SDXL_MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              *assistant_nodes("similar_image", "", image=(4, 0)), *t2i_nodes((3, 1), 10, family=SDXL),
              reply_preview()]),
    Workflow("llmga_sdxl_inpaint",
             "## LLMGA SDXL: inpainting\n\nLoad a picture with a transparent hole (or paint a mask in the mask "
             "editor). The assistant sees the hole black, as in its training, and imagines what belongs there; "
             "LLMGA's 9-channel SDXL paints it and **LLMGA Paste Back** keeps every other pixel exactly."
             + SDXL_INPAINT_NOTE + PASTE_NOTE + SDXL_MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              *assistant_nodes("inpaint", "", image=(4, 0), mask=(4, 1)),
              *inpaint_nodes((4, 0), (4, 1), (3, 1), family=SDXL), reply_preview()]),
    Workflow("llmga_sdxl_outpaint_restore",
             "## LLMGA SDXL: outpainting + DiffRIR\n\n**LLMGA Outpaint Canvas** adds room around the picture "
             "(multiples of 8, filled with gray); the assistant imagines the whole scene and LLMGA's inpainting SDXL "
             "fills the new area." + RESTORE_NOTE + SDXL_INPAINT_NOTE + SDXL_MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, size=(340, 320)),
              Node(5, "LLMGAOutpaintCanvas", (40, 980), {"right": 256, "left": 0, "top": 0, "bottom": 0,
                                                         "feathering": 16}, {"image": (4, 0)}, size=(340, 200)),
              *assistant_nodes("outpaint", "", image=(5, 0), mask=(5, 1)),
              *with_restore(inpaint_nodes((5, 0), (5, 1), (3, 1), family=SDXL), (5, 0), (5, 1)), reply_preview()]),
    Workflow("llmga_sdxl_controlnet",
             "## LLMGA SDXL: prompt + ControlNet\n\nThe assistant's long prompt composes with any SDXL ControlNet: "
             "the conditioning from **LLMGA Long Prompt Encode (SDXL)** goes through ControlNetApplyAdvanced. The "
             "workflow names diffusers' canny ControlNet: save `diffusion_pytorch_model.safetensors` from "
             "https://huggingface.co/diffusers/controlnet-canny-sdxl-1.0 as "
             f"`models/controlnet/{SDXL_CONTROLNET}` (or pick your SDXL ControlNet) and load a control image made "
             "for it (for canny: white edges on black)." + SDXL_SAMPLER_NOTE + SDXL_MODELS_NOTE,
             [note(""), Node(4, "LoadImage", (40, 620), {"image": "example.png"}, title="Control image",
                             size=(340, 320)),
              *assistant_nodes("text_to_image", "a lighthouse on a cliff in a storm"),
              *controlnet_nodes(SDXL, SDXL_CONTROLNET), reply_preview()]),
]
WORKFLOWS += [
    Workflow("edit_instruction",
             "## LLMGA: instruction editing (Direct Inversion + Prompt-to-Prompt)\n\nThe paper's editing: the "
             "picture is inverted with the source prompt and regenerated towards the target prompt while "
             "Prompt-to-Prompt keeps the layout. For a local edit, name the changed words in *blend_source_words* / "
             "*blend_target_words* (LocalBlend)." + EDIT_NOTE + MODELS_NOTE,
             [note(""), *edit_nodes("direct_inversion_p2p", "Make it winter, with snow everywhere.")]),
    Workflow("edit_official_ddpm",
             "## LLMGA: instruction editing (official DDPM inversion)\n\nWhat the official `cli-sd15-editing.py` "
             "runs: edit-friendly DDPM inversion (50 steps, skip 25, source CFG 3.5), a DiffEdit mask of where the "
             "prompts disagree, and target CFG 7.5 inside it." + EDIT_NOTE + EDIT_OFFICIAL_NOTE + MODELS_NOTE,
             [note(""), *edit_nodes("ddpm_inversion", "Make it winter, with snow everywhere.", official=True)]),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(resolve_comfyui(), Path(tmp))
        server.start()
        try:
            info = server.object_info()
        finally:
            server.stop()
    (ROOT / "workflows" / "api").mkdir(parents=True, exist_ok=True)
    for workflow in WORKFLOWS:
        workflow.nodes[0].widgets["text"] = workflow.note
        ui = ui_workflow(workflow, info)
        for path, data in ((ROOT / "workflows" / f"{workflow.name}.json", ui),
                           (ROOT / "workflows" / "api" / f"{workflow.name}.json", ui_to_api(ui, info))):
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
