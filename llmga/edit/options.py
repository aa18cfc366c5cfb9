"""Names the editing code accepts, importable without torch (the CLI builds its parser from them)."""

METHODS = ("direct_inversion_p2p", "ddpm_inversion")
"""direct_inversion_p2p: the paper's Direct Inversion + Prompt-to-Prompt; ddpm_inversion: the official code's method."""

CONTROLLERS = ("refine", "replace")
"""Prompt-to-Prompt: refine aligns prompts of any length token by token; replace swaps words one for one."""
