"""BigGAN-deep (our own module) and Big Sleep: BigGAN steered by CLIP.

``model`` reads the published weights in the format of the PyPI
``pytorch-pretrained-biggan`` package (a ``config.json`` and a ``torch.save``d
state dict) without running any of its code; ``generator`` registers
``big_sleep``.
"""
