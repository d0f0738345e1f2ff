"""A small iterative generator used by the worker tests: it behaves like an optimising
generator (many steps, progress frames, a checkpoint per step, resume after a restart)
without any model weights. Loaded through ``KIOSK_GENERATORS=tests.plugins.stepwise``."""
from __future__ import annotations

import json
import os
import signal
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
        # fault injection for the unattended-running tests
        self.kill_prompt = settings.get("kill_prompt")  # a job with this prompt kills its worker at step 2
        self.fill_disk_file = settings.get("fill_disk_file")  # filled until the disk is full when a render ends

    def render(self, req, ctx):
        ckpt = ctx.work_dir / "state.json"
        state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "value": float(req.seed % 255), "resumed": 0}
        if state["step"]:
            state["resumed"] += 1
        h, w = req.height, req.width
        for step in range(state["step"], self.steps):
            if ctx.should_stop():
                raise RenderCancelled(f"stopped at step {step}")
            if step == 2 and self.kill_prompt and any(t == self.kill_prompt for t, _ in req.prompts):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.step_seconds)
            state["value"] = (state["value"] * 1.1 + 7) % 255
            state["step"] = step + 1
            atomic_write_text(ckpt, json.dumps(state))
            img = Image.fromarray(np.full((h, w, 3), (int(state["value"]), 80, 200 - step % 100), np.uint8))
            ctx.progress({"step": step + 1, "total": self.steps, "image": img})
        img = Image.fromarray(np.full((h, w, 3), (int(state["value"]), 120, 40), np.uint8))
        if self.fill_disk_file:
            fill_disk(self.fill_disk_file)
        return RenderResult(img, {"generator": self.name, "label": self.label, "resumed": state["resumed"],
                                  "steps": self.steps, "models": {}})


def fill_disk(path) -> None:
    """Write zeros to ``path`` until the filesystem refuses (ENOSPC)."""
    with open(path, "ab", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass


@register("stepwise")
def factory(settings, ctx):
    return Stepwise(settings)
