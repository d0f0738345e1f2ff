"""Built-in generators. Each module registers itself with ``renderer.base.register`` when imported.

An artist can host another CLIP-steered generator without touching this package:
put a module that calls ``renderer.base.register("name")`` on the Python path and
name it in ``KIOSK_GENERATORS`` (comma-separated module names).
"""
from __future__ import annotations

import importlib
import logging
import os

log = logging.getLogger(__name__)

BUILTIN = (
    "renderer.generators.default",
    "renderer.stylegan.generator",
    "renderer.vqgan_clip.generator",
    "renderer.biggan.generator",
    "renderer.dvae.generator",
    "renderer.deepdream.generator",
    "renderer.diffusion.generator",
    "renderer.family.pixels",
    "renderer.family.siren",
    "renderer.family.clipdraw",
    "renderer.family.stylegan_clip",
    "renderer.family.stylegan_walk",
)

_loaded = False


def load_all() -> None:
    global _loaded
    # The artist's modules are looked at on every call (importing twice is free), so a
    # process that sets KIOSK_GENERATORS after its first look still finds them.
    for mod in filter(None, (m.strip() for m in os.environ.get("KIOSK_GENERATORS", "").split(","))):
        importlib.import_module(mod)  # an artist's own generator: a missing module is an error worth seeing
    if _loaded:
        return
    for mod in BUILTIN:
        importlib.import_module(mod)
    _loaded = True
