"""StyleGAN synthesis networks (v1, v2/ADA, v3) in plain PyTorch, their safe loaders and the "stylegan" generator.

Import the submodules directly: :mod:`renderer.stylegan.loaders` (``load_synthesis``),
:mod:`renderer.stylegan.generator` (registers ``"stylegan"``), :mod:`renderer.stylegan.sg1` /
``sg2`` / ``sg3`` (the networks) and :mod:`renderer.stylegan.unpickle` (``CheckpointError``).
"""
