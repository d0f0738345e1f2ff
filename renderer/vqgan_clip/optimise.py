"""Moved to :mod:`renderer.guidance.loop` (the loop every CLIP-steered generator shares); kept for old imports."""
from renderer.guidance.loop import *  # noqa: F401,F403
from renderer.guidance.loop import LR_SCHEDULES, TIMELAPSE_FORMATS, Hooks, OptimConfig, OptimResult, Problem, optimise, to_pil  # noqa: F401
