"""DiffRIR restoration, free of ComfyUI (modules load on demand, so the CLI starts without torch):

- `network`: the S2 network (`DiffRIR`: prior diffusion + DIRformer) for scale 1, 2 and 4, seeded `initial_noise`;
- `dirformer`, `prior`: its two halves, the dynamically modulated transformer and the CPEN + 4-step prior diffusion;
- `checkpoint`: strict, safe loading of the released S2 weights (`load_diffrir`) and `save_diffrir` to safetensors;
- `inference`: padding, compositing and tiled inference on whole images; `cli`: `python -m llmga restore`.
"""
