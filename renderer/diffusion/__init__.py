"""CLIP-guided diffusion: OpenAI's ImageNet diffusion UNet (our own module, from the released state dicts)
sampled with CLIP gradients over cutouts, range and total-variation losses, as the 2021 notebooks did.

``unet`` holds the model and loader, ``sampling`` the Gaussian diffusion (linear schedule, respaced
steps, learned variances, DDPM and DDIM samplers, guidance), ``generator`` registers ``clip_diffusion``.
"""
