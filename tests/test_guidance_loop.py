"""The shared optimisation loop with several parameter tensors, and the H.264 timelapse."""
from __future__ import annotations

import pytest
import torch

from renderer.base import RenderCancelled
from renderer.guidance.loop import Hooks, OptimConfig, Problem, optimise
from renderer.guidance.video import write_video


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, 3, 8, 8, generator=g).requires_grad_(True)
    b = torch.zeros(3).requires_grad_(True)
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(99))

    def image(params):
        x, bias = params
        return torch.sigmoid(x + bias.view(1, 3, 1, 1))

    def term(img, step):
        noise = torch.rand(img.shape, generator=g) * 0.01  # uses the tracked generator: resume must restore it
        return {"mse": (img + noise - target).pow(2).mean()}

    return Problem(params=[a, b], generate=image, terms=[term], generators=[g], lr_scale=[1.0, 0.5]), target


def test_several_tensors_with_their_own_lr_fall_and_resume_bit_identically(tmp_path):
    cfg = OptimConfig(steps=12, lr=0.2, lr_schedule="cosine", fingerprint="x", timelapse_every=4, progress_every=1,
                      timelapse_format="both")
    p1, target = _problem()
    first = (p1.generate(p1.params) - target).pow(2).mean().item()
    straight = optimise(p1, cfg, Hooks(work_dir=tmp_path / "a"))
    assert straight.losses["mse"] < first * 0.7
    assert p1.params[1].abs().sum() > 0  # the second tensor moved too

    seen = []
    p2, _ = _problem()
    with pytest.raises(RenderCancelled):
        optimise(p2, cfg, Hooks(work_dir=tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 5))
    p3, _ = _problem()  # a fresh process: new tensors, new generator
    resumed = optimise(p3, cfg, Hooks(work_dir=tmp_path / "b"))
    assert resumed.resumed_from == 5
    assert torch.equal(straight.image, resumed.image)
    assert straight.losses == resumed.losses
    import av

    with av.open(str(straight.timelapse["timelapse"])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in c.decode(stream)) == 3  # steps 4, 8 and 12 (the final image)
    assert straight.timelapse["timelapse_gif"].stat().st_size > 0


def test_lr_scale_must_match_the_tensors():
    p, _ = _problem()
    p.lr_scale = [1.0]
    with pytest.raises(ValueError, match="lr_scale has 1 entries for 2"):
        p.optimizer(0.1)


def test_video_formats_are_checked(tmp_path):
    with pytest.raises(ValueError, match="mp4, gif, both"):
        write_video([object()], tmp_path, "x", "avi")
