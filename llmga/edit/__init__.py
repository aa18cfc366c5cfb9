"""Instruction editing on SD1.5, free of ComfyUI (modules load on demand, so the CLI starts without torch):

- `inversion`: the SD1.5 DDIM schedule, DDIM inversion and Direct Inversion;
- `attention`: the attention-hook interface (`AttentionControl`, `controlled_attention`);
- `alignment`, `p2p`: Prompt-to-Prompt token alignment and controllers (refine, replace, reweight, LocalBlend);
- `ddpm`: the official method — edit-friendly DDPM inversion, SDE-DPM-Solver++ 2M, DiffEdit mask;
- `run`: one edit from a latent and two prompts, for any binding; `diffusers_attention`, `pipeline`: the diffusers
  binding (which `python -m llmga edit`, in `llmga.cli.edit`, runs).
"""
