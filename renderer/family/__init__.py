"""Members of the CLIP-steered family that are only a parametrisation of the picture.

Each module registers a generator on the shared loop (:mod:`renderer.guidance`):
``pixels`` and ``fourier`` (Lucid-style images: raw pixels or a 1/f-scaled
spectrum, both with decorrelated colour), ``siren`` (Deep Daze: a sine-activated
coordinate network), ``clipdraw`` (cubic Bézier strokes rasterised in PyTorch,
also saved as SVG) and ``stylegan_clip`` (W or W+ of a StyleGAN steered by CLIP).
"""
