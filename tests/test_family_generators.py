"""Every member of the CLIP-steered family on the shared loop, with a tiny random CLIP.

StyleGAN+CLIP runs on a tiny random-initialised StyleGAN2 written as an NVlabs pickle
with its mapping network (tests/stylegan_mapping_helpers.py).

For each generator: gradients reach every parameter tensor, the loss falls on a
fixed target, a cancelled render resumes bit-identically, and settings are
validated with errors that name the key.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from renderer.base import GeneratorUnavailable, RenderCancelled, build
from renderer.guidance.loop import Hooks, OptimConfig, Problem, optimise
from renderer.vqgan_clip.clip_guidance import load_clip, spherical_dist
from tests.vqgan_helpers import request, tiny_ctx

BASE = {"clip_models": ["tiny"], "steps": 6, "cutouts": 8, "progress_every": 1, "checkpoint_every": 0}
FAMILY = {
    "pixels": {"lr": 0.05},
    "fourier": {"lr": 0.05},
    "siren": {"layers": 3, "hidden": 32, "lr": 1e-3},
    "clipdraw": {"strokes": 24, "lr": 1.0, "samples": 8},
    "stylegan_clip": {"lr": 0.05},
}
CHECKPOINT: dict[str, str] = {}
# Learning rates for the fixed-target descent (a whole-image CLIP embedding target, no cutouts).
TARGET_LR = {"pixels": 0.1, "fourier": 0.1, "siren": 2e-3, "clipdraw": 1.0, "stylegan_clip": 0.1}


@pytest.fixture(scope="module", autouse=True)
def tiny_stylegan(tmp_path_factory):
    from tests.stylegan_helpers import tiny_sg2
    from tests.stylegan_mapping_helpers import mapping_tensors, write_nvlabs_with_mapping

    path = write_nvlabs_with_mapping(tiny_sg2(res=32), mapping_tensors(), tmp_path_factory.mktemp("sg") / "tiny.pkl")
    CHECKPOINT["stylegan_clip"] = str(path)
    yield
    CHECKPOINT.clear()


def settings(name, **kw):
    extra = {"checkpoint": CHECKPOINT[name]} if name in CHECKPOINT else {}
    return {**BASE, **FAMILY[name], **extra, **kw}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_gradients_reach_every_parameter_and_the_loss_falls_on_a_fixed_target(tmp_path, name):
    ctx = tiny_ctx(tmp_path)
    gen = build(name, settings(name, strokes=12) if name == "clipdraw" else settings(name), ctx)
    s = gen.settings
    g = torch.Generator().manual_seed(1)
    canvas = gen.make_canvas(s, 32, 32, g, torch.device("cpu"), None, None)
    clip = load_clip("tiny", None, torch.device("cpu"))
    target_img = torch.zeros(1, 3, 32, 32)
    target_img[:, 0, :, :16] = 1.0  # red left half, black right half: a fixed picture
    target = clip.encode_image(target_img).detach()

    def term(image, step):
        emb = clip.encode_image(F.interpolate(image, size=clip.size, mode="bilinear", align_corners=False))
        return {"target": spherical_dist(emb[:, None], target[None]).mean()}

    leaves = [canvas.params] if isinstance(canvas.params, torch.Tensor) else list(canvas.params)
    loss = term(canvas.image(canvas.params), 0)["target"]
    loss.backward()
    for i, t in enumerate(leaves):
        assert t.grad is not None and t.grad.abs().sum() > 0, f"{name}: no gradient reaches parameter {i}"
        t.grad = None
    start = float(loss.detach())
    res = optimise(Problem(params=canvas.params, generate=canvas.image, terms=[term], constrain=canvas.constrain,
                           lr_scale=canvas.lr_scale),
                   OptimConfig(steps=20, lr=TARGET_LR[name], progress_every=0), Hooks(work_dir=tmp_path / "w"))
    assert res.losses["target"] < 0.6 * start, f"{name}: {start:.4f} -> {res.losses['target']:.4f}"


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_resume_after_cancel_is_bit_identical(tmp_path, name):
    s = settings(name, symmetry={"tone": 0.5, "semantic": 0.2}, timelapse=2, timelapse_format="gif")
    straight = build(name, s, tiny_ctx(tmp_path / "a")).render(request(), tiny_ctx(tmp_path / "a"))
    seen = []
    ctx = tiny_ctx(tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 3)
    with pytest.raises(RenderCancelled):
        build(name, s, ctx).render(request(), ctx)
    ctx2 = tiny_ctx(tmp_path / "b")
    resumed = build(name, s, ctx2).render(request(), ctx2)  # a fresh generator, as a restarted worker builds it
    assert resumed.meta["resumed_from"] == 3 and straight.meta["resumed_from"] == 0
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))
    assert straight.meta["losses"] == resumed.meta["losses"]
    assert straight.meta["generator"] == name and "tiny random-initialised CLIP" in straight.meta["label"]
    assert straight.extra_files["timelapse"].suffix == ".gif"


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_init_image_and_bf16_autocast(tmp_path, name):
    from PIL import Image

    init = tmp_path / "init.png"
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:, :24] = (200, 40, 40)
    Image.fromarray(arr).save(init)
    ctx = tiny_ctx(tmp_path, dtype=torch.bfloat16)
    extra = {"init_fit_steps": 60} if name == "siren" else {"init_fit_steps": 25} if name == "stylegan_clip" else {}
    res = build(name, settings(name, steps=1, **extra), ctx).render(request(init_image=str(init)), ctx)
    assert all(np.isfinite(v) for v in res.meta["losses"].values())
    out = np.asarray(res.image).astype(float)
    if name in ("pixels", "fourier"):  # exact inversion of the picture into the parameters, one step later
        assert np.abs(out - arr).mean() < 12
    elif name == "stylegan_clip":  # W fitted to the picture first: closer to it than the unfitted start
        assert np.abs(out - arr).mean() < np.abs(np.asarray(build(name, settings(name, steps=1), ctx).render(
            request(), ctx).image).astype(float) - arr).mean()
    elif name == "siren":  # fitted to the picture before CLIP takes over: left redder than right
        assert out[:, :20, 0].mean() > out[:, 28:, 0].mean() + 40


@pytest.mark.parametrize("name,key,value,needle", [
    ("pixels", "decorrelate", 1, "true or false"), ("fourier", "decay_power", -1, "decay_power"),
    ("siren", "layers", 0, "an integer from 1 to 64"), ("clipdraw", "background", [2, 0, 0], "each in 0..1"),
    ("clipdraw", "strokes", 1.5, "strokes"), ("siren", "colour", 1, "unknown setting"),
    ("pixels", "panorama", "zigzag", "smoothstep"), ("stylegan_clip", "space", "z", "w, w\\+"),
    ("stylegan_clip", "checkpoint", "", "a non-empty text"), ("stylegan_clip", "checkpoint", "nope.pkl", "not found")])
def test_bad_settings_are_named(tmp_path, name, key, value, needle):
    with pytest.raises(GeneratorUnavailable, match=needle) as err:
        build(name, settings(name, **{key: value}), tiny_ctx(tmp_path))
    assert f"generator {name!r}" in str(err.value)
