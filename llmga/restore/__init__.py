"""DiffRIR restoration, free of ComfyUI (modules load on demand, so the CLI starts without torch):

- `network`: the S2 network (`DiffRIR`: prior diffusion + DIRformer) for scale 1, 2 and 4, seeded `initial_noise`;
- `dirformer`, `prior`: its two halves, the dynamically modulated transformer and the CPEN + 4-step prior diffusion;
- `checkpoint`: strict, safe loading of the released S2 weights (`load_diffrir`) and `save_diffrir` to safetensors;
- `inference`: padding, compositing and tiled inference on whole images (`python -m llmga restore`, in
  `llmga.cli.restore`, runs it);
- training pieces: `degradations` (D1: Real-ESRGAN second-order degradation; D2: luminance/contrast error) with
  `jpeg` (DiffJPEG in torch), `s1` (the first-stage network that also sees the ground truth), `discriminator`
  (Real-ESRGAN's U-Net discriminator with spectral norm), `perceptual` (the VGG19 perceptual loss, local weights
  only) and `training` (crops, the training-pair pool, the stage-2 training prior, the losses of S1, S2a and S2b, the
  GAN stage's losses and USM sharpening).
"""
