"""DeepDream: gradient ascent on a classifier's layer activations, octaves, jitter and tiling, optionally CLIP-steered.

``model`` builds torchvision's GoogLeNet / Inception v3 and loads their published
weights through the registry with ``torch.load(weights_only=True)``;
``generator`` registers ``deepdream``.
"""
