"""DALL-E's discrete VAE (our own modules, read from the released pickles through an allowlist) steered by CLIP.

``model`` holds the decoder/encoder and the restricted reader; ``generator``
registers ``dvae_clip``: token logits optimised through Gumbel-softmax.
"""
