"""Built-in generators. Each module registers itself with ``renderer.base.register`` when imported."""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

# module path -> why it may be missing (optional heavy dependencies)
BUILTIN = (
    "renderer.generators.default",
    "renderer.stylegan.generator",
    "renderer.vqgan_clip.generator",
)

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in BUILTIN:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue  # that generator is not part of this build yet
            raise
    _loaded = True
