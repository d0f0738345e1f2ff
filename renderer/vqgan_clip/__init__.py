"""VQGAN+CLIP: a VQGAN decoder steered by CLIP prompts, with panoramas and symmetry losses.

Modules: ``vqgan`` (the model and its safe checkpoint loader), ``clip_guidance``
(open_clip models and prompt losses), ``cutouts`` (batched crops and
augmentations), ``losses`` (symmetry and panorama terms), ``memory`` (estimates before a run) and ``generator`` (the
registered ``vqgan_clip`` generator, a canvas on the shared loop in
:mod:`renderer.guidance`).
"""
