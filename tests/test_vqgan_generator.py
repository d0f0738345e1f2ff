"""The vqgan_clip generator end to end with tiny models: resume, cancel, AMP, timelapse, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from renderer.base import GeneratorUnavailable, RenderCancelled, build
from renderer.vqgan_clip import memory
from renderer.vqgan_clip.generator import TINY_LABEL, VqganClipGenerator, parse_settings
from renderer.vqgan_clip.vqgan import VQGAN, tiny_config
from tests.vqgan_helpers import TINY_SETTINGS, request, tiny_ctx, write_tiny_vqgan


def test_resume_after_cancel_is_bit_identical(tmp_path):
    settings = dict(TINY_SETTINGS, symmetry={"edge": 0.5, "tone": 0.5, "semantic": 0.3})
    straight = build("vqgan_clip", settings, tiny_ctx(tmp_path / "a")).render(request(), tiny_ctx(tmp_path / "a"))

    seen = []
    ctx = tiny_ctx(tmp_path / "b", progress=lambda info: seen.append(info), should_stop=lambda: len(seen) >= 3)
    with pytest.raises(RenderCancelled):
        build("vqgan_clip", settings, ctx).render(request(), ctx)
    assert [i["step"] for i in seen] == [1, 2, 3]
    assert (tmp_path / "b" / "work" / "optim_state.pt").is_file()
    ctx2 = tiny_ctx(tmp_path / "b")
    resumed = VqganClipGenerator(parse_settings(settings), ctx2).render(request(), ctx2)  # a fresh "process"
    assert resumed.meta["resumed_from"] == 3 and straight.meta["resumed_from"] == 0
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))
    assert straight.meta["losses"] == resumed.meta["losses"]


def test_progress_meta_and_timelapse(tmp_path):
    seen = []
    ctx = tiny_ctx(tmp_path, progress=seen.append)
    gen = build("vqgan_clip", dict(TINY_SETTINGS, steps=4, timelapse=1, timelapse_format="both"), ctx)
    assert gen.label == TINY_LABEL
    res = gen.render(request(width=50, height=30), ctx)
    assert res.image.size == (48, 28)  # rounded to the VQGAN factor (4)
    assert {"step", "total", "loss", "image"} <= set(seen[-1]) and seen[-1]["image"].size == (48, 28)
    assert res.meta["prompt"] == "a door to heaven:1|a door to hell:1"
    assert res.meta["models"]["vqgan"]["weights"] == "random-init"
    import cv2

    cap = cv2.VideoCapture(str(res.extra_files["timelapse"]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4  # one frame per step, the last is the final image
    cap.release()
    assert res.extra_files["timelapse_gif"].stat().st_size > 0


def test_bf16_autocast_on_cpu_runs_finite(tmp_path):
    ctx = tiny_ctx(tmp_path, dtype=torch.bfloat16)
    res = build("vqgan_clip", dict(TINY_SETTINGS, steps=2), ctx).render(
        request(prompts=(("heaven", 1.0), ("hell", 1.0), ("blurry", -0.5))), ctx)
    assert all(np.isfinite(v) for v in res.meta["losses"].values())
    assert np.asarray(res.image).std() > 0


def test_real_checkpoint_path_and_init_image(tmp_path):
    ckpt, _ = write_tiny_vqgan(tmp_path / "weights", name="mine")
    from PIL import Image

    init = tmp_path / "edited.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8")).save(init)
    ctx = tiny_ctx(tmp_path)
    gen = build("vqgan_clip", dict(TINY_SETTINGS, vqgan=str(ckpt), steps=2), ctx)
    res = gen.render(request(width=32, height=32, init_image=str(init)), ctx)
    assert res.meta["init_image"] == str(init)
    assert len(res.meta["models"]["vqgan"]["sha256"]) == 64


def test_missing_weights_name_the_fetch_command(tmp_path):
    with pytest.raises(GeneratorUnavailable, match="fetch-models vqgan_imagenet_f16_16384"):
        build("vqgan_clip", {"clip_models": ["tiny"]}, tiny_ctx(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="fetch-models open_clip_ViT-B-32-openai"):
        build("vqgan_clip", {"vqgan": "tiny"}, tiny_ctx(tmp_path))


@pytest.mark.parametrize("key,value,needle", [("panorama", "zigzag", "smoothstep"), ("steps", 0, "steps"),
                                               ("symmetry", {"mirror": 1}, "edge, tone, semantic"),
                                               ("colour", 1, "unknown setting")])
def test_bad_settings_are_named(tmp_path, key, value, needle):
    with pytest.raises(GeneratorUnavailable, match=needle):
        parse_settings({key: value})


def test_memory_error_names_the_largest_size_that_fits():
    torch.manual_seed(0)
    dec = memory.DecoderShape.of(VQGAN(tiny_config()))
    from renderer.vqgan_clip.clip_guidance import load_clip

    clip = memory.ClipShape.of(load_clip("tiny", None, torch.device("cpu")).model)
    need = memory.estimate(dec, [clip], 1024, 512, 16).bytes
    budget = need // 3
    with pytest.raises(memory.CanvasTooLarge) as err:
        memory.check_fits(dec, [clip], 1024, 512, 16, budget)
    best = memory.largest_fitting(dec, [clip], 1024, 512, 16, budget)
    assert f"largest size that fits is {best[0]}x{best[1]}" in str(err.value)
    assert memory.estimate(dec, [clip], *best, 16).bytes <= budget
    assert memory.estimate(dec, [clip], best[0] + 8, best[1] + 4, 16).bytes > budget
    assert best[0] == 2 * best[1] or abs(best[0] / best[1] - 2) < 0.2
    assert memory.estimate_seconds(dec, [clip], 64, 64, 8) > 0


def test_channels_last_decoding_keeps_the_picture(tmp_path):
    # Channels-last activations (the CPU's fast layout too) change the memory order only, not the picture.
    images = []
    for i, layout in enumerate((True, False)):
        ctx = tiny_ctx(tmp_path / str(i))
        res = build("vqgan_clip", dict(TINY_SETTINGS, steps=2, channels_last=layout), ctx).render(request(), ctx)
        images.append(np.asarray(res.image).astype(int))
    assert np.abs(images[0] - images[1]).max() <= 2
