"""A small iterative generator used by the worker tests: it behaves like an optimising
generator (many steps, progress frames, a checkpoint per step, resume after a restart)
without any model weights. Loaded through ``KIOSK_GENERATORS=tests.plugins.stepwise``."""
from __future__ import annotations

import json
import time

import numpy as np
from PIL import Image

from exhibits.files import atomic_write_text
from renderer.base import RenderCancelled, RenderResult, register


class Stepwise:
    name = "stepwise"
    label = "test generator (iterative, no model)"

    def __init__(self, settings):
        self.steps = int(settings.get("steps", 20))
        self.step_seconds = float(settings.get("step_seconds", 0.05))

    def render(self, req, ctx):
        ckpt = ctx.work_dir / "state.json"
        state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "value": float(req.seed % 255), "resumed": 0}
        if state["step"]:
            state["resumed"] += 1
        h, w = req.height, req.width
        for step in range(state["step"], self.steps):
            if ctx.should_stop():
                raise RenderCancelled(f"stopped at step {step}")
            time.sleep(self.step_seconds)
            state["value"] = (state["value"] * 1.1 + 7) % 255
            state["step"] = step + 1
            atomic_write_text(ckpt, json.dumps(state))
            img = Image.fromarray(np.full((h, w, 3), (int(state["value"]), 80, 200 - step % 100), np.uint8))
            ctx.progress({"step": step + 1, "total": self.steps, "image": img})
        img = Image.fromarray(np.full((h, w, 3), (int(state["value"]), 120, 40), np.uint8))
        return RenderResult(img, {"generator": self.name, "label": self.label, "resumed": state["resumed"],
                                  "steps": self.steps, "models": {}})


@register("stepwise")
def factory(settings, ctx):
    return Stepwise(settings)
