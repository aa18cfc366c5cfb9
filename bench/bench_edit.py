"""Editing time and peak memory against plain text-to-image with the same steps on the same UNet.

t2i:      DDIM sampling with CFG (one UNet call on [uncond, cond] per step), stock SDPA attention — what a T2I run
          costs in the UNet.
di_p2p:   Direct Inversion + Prompt-to-Prompt (refine + LocalBlend) through the diffusers attention processors:
          the inversion pass (batch 1) and the edit pass (batch 3) — the whole edit.
ddpm:     the official method: DiffEdit mask, edit-friendly inversion (CFG 3.5) and masked sampling (CFG 7.5).

The prompts are LLMGA-like (two 75-token chunks, T = 152) and tokenised with the real SD1.5 CLIP tokenizer; the
text encoder and VAE are left out of all variants (they cost the same in each). Times are medians of interleaved
repetitions; the ratio is against t2i (target for di_p2p: <= 2.2). Peak memory: CUDA's max_memory_allocated per
variant on a GPU; on a CPU, in a fresh process running that variant once (--only), how far the peak RSS rises
above the RSS with the model loaded (Linux /proc: VmHWM after resetting it, minus VmRSS).

    python bench/bench_edit.py [--unet DIR] [--size 256] [--steps 20] [--repeats 3] [--device auto] [--dtype auto]

Without --unet the UNet is SD1.5's architecture with random weights (diffusers' default config of
`runwayml/stable-diffusion-v1-5`'s unet: 320/640/1280/1280 channels, 8 heads, 768-d context).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "bench")]

import torch  # noqa: E402
from peak_memory import rss_mb  # noqa: E402

from llmga.edit.attention import EmptyControl  # noqa: E402
from llmga.edit.diffusers_attention import attention_control, unet_eps  # noqa: E402
from llmga.edit.inversion import ddim_sample, direct_inversion_edit  # noqa: E402
from llmga.prompt.long_prompt import encode_prompt_group  # noqa: E402

SOURCE = ("a photo of a tabby cat sitting on a wooden bench in a sunny park, green trees and a lake behind it, "
          "soft afternoon light, shallow depth of field, highly detailed fur, warm colours, ") * 3
TARGET = SOURCE.replace("tabby cat", "golden retriever dog").replace("sunny", "snowy")
VARIANTS = ("t2i", "di_p2p", "ddpm")


def random_sd15_unet(device: torch.device, seed: int = 0):
    """SD1.5's UNet architecture (diffusers' default config of `runwayml/stable-diffusion-v1-5`'s unet) with seeded
    random float32 weights, built on `device` (a GPU initialises its 860 M parameters in a blink)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        return UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)


def sd15_unet(folder: Path | None, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    if folder is not None:
        unet = UNet2DConditionModel.from_pretrained(folder, torch_dtype=dtype)
    else:
        unet = random_sd15_unet(device).to(dtype)
    return unet.to(device).eval()


def prompt_group(dtype: torch.dtype, device: torch.device):
    from comfyui_host import resolve_comfyui
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(resolve_comfyui() / "comfy" / "sd1_tokenizer")
    generator = torch.Generator().manual_seed(0)

    def tokenize(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # the text encoder is not what is measured
        return torch.randn(ids.shape[0], 77, 768, generator=generator), torch.zeros(ids.shape[0], 768)

    group = encode_prompt_group((SOURCE, TARGET, ""), tokenize, encode, bos=tokenizer.bos_token_id,
                                eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    return group, tokenize, [e.cond.to(device, dtype) for e in group.encoded]


def runner(name: str, unet, group, tokenize, contexts, latent: torch.Tensor, steps: int):
    from llmga.edit.ddpm import DdpmContexts, ddpm_inversion_edit
    from llmga.edit.p2p import build_p2p_controller

    source, target, uncond = contexts
    eps = unet_eps(unet)

    def t2i() -> None:
        ddim_sample(latent, target, eps, steps, guidance=7.5, uncond=uncond)

    def di_p2p() -> None:
        control = build_p2p_controller(group, tokenize, blend_words=(("cat",), ("dog",)))
        with attention_control(unet, control):
            direct_inversion_edit(latent, source, target, uncond, eps, steps, 7.5, control)

    def ddpm() -> None:
        with attention_control(unet, EmptyControl()):
            ddpm_inversion_edit(latent, DdpmContexts.shared(source, target, uncond), eps, steps=steps,
                                generator=torch.Generator().manual_seed(0))

    return {"t2i": t2i, "di_p2p": di_p2p, "ddpm": ddpm}[name]


def timed(run, device: torch.device) -> tuple[float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", type=Path, help="a diffusers unet folder (default: random SD1.5 architecture)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=("auto", "fp32", "fp16"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--only", choices=VARIANTS, help="run one variant once and print its peak RSS (internal)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = torch.float16 if args.dtype == "fp16" or (args.dtype == "auto" and device.type == "cuda") else torch.float32
    unet = sd15_unet(args.unet, device, dtype)
    group, tokenize, contexts = prompt_group(torch.float32, device)
    latent = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(1)).to(device)
    runs = {name: runner(name, unet, group, tokenize, contexts, latent, args.steps) for name in VARIANTS}
    if args.only:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = rss_mb("VmRSS")
        runs[args.only]()
        print(json.dumps({"peak_rss_mb": rss_mb("VmHWM"), "before_mb": before}))
        return
    print(f"device {device}, dtype {dtype}, latent {tuple(latent.shape)}, steps {args.steps}, T {group.length}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    runs["t2i"]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    peaks: dict[str, int] = {}
    for i in range(args.repeats):
        for name in VARIANTS[i % 3:] + VARIANTS[: i % 3]:
            seconds, peaks[name] = timed(runs[name], device)
            times[name].append(seconds)
        print(f"  repetition {i + 1}: " + "  ".join(f"{n} {times[n][-1]:.2f}s" for n in VARIANTS), flush=True)
    base = statistics.median(times["t2i"])
    print(f"{'variant':>8}  {'median s':>9}  {'ratio':>6}  peak memory")
    for name in VARIANTS:
        if device.type == "cuda":
            memory = f"{peaks[name] / 2**20:.0f} MiB allocated"
        else:
            command = [sys.executable, __file__, "--only", name, "--size", str(args.size), "--steps", "2",
                       "--device", "cpu", "--dtype", args.dtype] + (["--unet", str(args.unet)] if args.unet else [])
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            out = json.loads(result.stdout.splitlines()[-1])
            memory = f"+{out['peak_rss_mb'] - out['before_mb']:.0f} MB RSS above the loaded model"
        median = statistics.median(times[name])
        print(f"{name:>8}  {median:9.2f}  {median / base:6.2f}  {memory}")


if __name__ == "__main__":
    main()
