"""The "stylegan" generator: W+ sampling exactly as Strange Attractions did it, settings, meta, batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from renderer import base
from renderer.base import GeneratorUnavailable, RenderContext, RenderRequest
from renderer.stylegan.generator import StyleGANGenerator, to_pil
from tests.stylegan_helpers import tiny_sg1, tiny_sg2, tiny_sg3, write_nvlabs_pkl, write_tf_pkl


def _ctx(tmp_path: Path) -> RenderContext:
    return RenderContext(device=torch.device("cpu"), dtype=torch.float32, weights_dir=tmp_path / "weights",
                         work_dir=tmp_path / "work")


def _req(seed: int = 7, size: int = 16, **params) -> RenderRequest:
    return RenderRequest(job_id=1, exhibit="strange_attractions", generator="stylegan", prompts=(), seed=seed,
                         width=size, height=size, params=params)


@pytest.fixture()
def sg2_ckpt(tmp_path: Path):
    net = tiny_sg2()
    return net, write_nvlabs_pkl(net, tmp_path / "tiny-sg2.pkl")


def test_wplus_render_is_randn_times_sigma_into_synthesis(sg2_ckpt, tmp_path: Path) -> None:
    net, path = sg2_ckpt
    gen = base.build("stylegan", {"checkpoint": str(path), "sigma": 1.5}, _ctx(tmp_path))
    res = gen.render(_req(seed=123), _ctx(tmp_path))
    ws = torch.randn(net.num_ws, net.w_dim, generator=torch.Generator().manual_seed(123)) * 1.5
    expected = np.asarray(to_pil(net(ws[None], noise_mode="const")[0]))
    assert res.image.mode == "RGB" and res.image.size == (16, 16)
    assert np.array_equal(np.asarray(res.image), expected)
    meta = res.meta
    assert meta["generator"] == "stylegan" and meta["checkpoint"] == "tiny-sg2"
    assert len(meta["checkpoint_sha256"]) == 64 and meta["sigma"] == 1.5 and meta["mode"] == "wplus"
    assert meta["num_ws"] == net.num_ws == 6 and "label" in meta and meta["family"] == "stylegan2"


def test_same_seed_same_image_other_seed_other_image(sg2_ckpt, tmp_path: Path) -> None:
    _, path = sg2_ckpt
    gen = base.build("stylegan", {"checkpoint": str(path)}, _ctx(tmp_path))
    a, b, c = (np.asarray(gen.render(_req(seed=s), _ctx(tmp_path)).image) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_truncation_mode_at_sigma_zero_is_the_average_w(sg2_ckpt, tmp_path: Path) -> None:
    net, path = sg2_ckpt
    gen = base.build("stylegan", {"checkpoint": str(path), "mode": "truncation", "sigma": 0.0}, _ctx(tmp_path))
    res = gen.render(_req(seed=5), _ctx(tmp_path))
    ws = net.w_avg.expand(1, net.num_ws, -1)
    assert np.array_equal(np.asarray(res.image), np.asarray(to_pil(net(ws)[0])))
    assert res.meta["mode"] == "truncation"


def test_sigma_range_is_drawn_per_seed_and_job_params_override(sg2_ckpt, tmp_path: Path) -> None:
    _, path = sg2_ckpt
    gen = base.build("stylegan", {"checkpoint": str(path), "sigma_range": [0.5, 3.0]}, _ctx(tmp_path))
    sigmas = [gen.render(_req(seed=s), _ctx(tmp_path)).meta["sigma"] for s in range(6)]
    assert all(0.5 <= s <= 3.0 for s in sigmas) and len(set(sigmas)) == 6
    assert gen.render(_req(seed=3), _ctx(tmp_path)).meta["sigma"] == sigmas[3]
    assert gen.render(_req(seed=3, sigma=2.25), _ctx(tmp_path)).meta["sigma"] == 2.25


def test_other_sizes_are_cover_cropped(sg2_ckpt, tmp_path: Path) -> None:
    _, path = sg2_ckpt
    gen = base.build("stylegan", {"checkpoint": str(path)}, _ctx(tmp_path))
    req = RenderRequest(job_id=1, exhibit="x", generator="stylegan", prompts=(), seed=1, width=40, height=24)
    assert gen.render(req, _ctx(tmp_path)).image.size == (40, 24)


def test_render_batch_matches_single_renders(sg2_ckpt, tmp_path: Path) -> None:
    _, path = sg2_ckpt
    gen = base.build("stylegan", {"checkpoint": str(path), "batch": 3}, _ctx(tmp_path))
    seeds, sigmas = [4, 5, 6, 7], [0.5, 1.0, 2.0, 4.0]
    batch = gen.render_batch(seeds, sigmas)
    assert len(batch) == 4
    for seed, sigma, img in zip(seeds, sigmas, batch):
        single = gen.render(_req(seed=seed, sigma=sigma), _ctx(tmp_path)).image
        diff = np.abs(np.asarray(img, dtype=int) - np.asarray(single, dtype=int))
        assert diff.max() <= 1
    with pytest.raises(ValueError, match="sigmas"):
        gen.render_batch([1, 2], [1.0])


@pytest.mark.parametrize("make,writer", [(tiny_sg1, write_tf_pkl), (tiny_sg3, write_nvlabs_pkl)], ids=["sg1", "sg3"])
def test_other_families_render_with_extreme_sigma(make, writer, tmp_path: Path) -> None:
    path = writer(make(), tmp_path / "net.pkl")
    gen = base.build("stylegan", {"checkpoint": str(path), "sigma": 50.0, "noise_mode": "random"}, _ctx(tmp_path))
    res = gen.render(_req(seed=9), _ctx(tmp_path))
    assert res.meta["sigma"] == 50.0 and "nonfinite_fixed" not in res.meta
    again = gen.render(_req(seed=9), _ctx(tmp_path))
    assert np.array_equal(np.asarray(res.image), np.asarray(again.image))  # random noise is seeded too


def test_nonfinite_output_is_repaired_and_recorded(tmp_path: Path) -> None:
    net = tiny_sg2()
    with torch.no_grad():
        net.b16.torgb.bias[0] = float("nan")
    path = write_nvlabs_pkl(net, tmp_path / "nan.pkl")
    gen = base.build("stylegan", {"checkpoint": str(path)}, _ctx(tmp_path))
    res = gen.render(_req(), _ctx(tmp_path))
    assert res.meta["nonfinite_fixed"] == 16 * 16
    assert np.asarray(res.image)[:, :, 0].max() == 128  # nan -> 0 -> mid grey


def test_cache_goes_to_the_weights_dir(sg2_ckpt, tmp_path: Path) -> None:
    _, path = sg2_ckpt
    base.build("stylegan", {"checkpoint": str(path)}, _ctx(tmp_path))
    assert list((tmp_path / "weights" / ".cache" / "stylegan").glob("tiny-sg2.pkl.*.safetensors"))


def test_registry_name_resolves_in_the_weights_dir(tmp_path: Path) -> None:
    net = tiny_sg2()
    (tmp_path / "weights").mkdir()
    write_nvlabs_pkl(net, tmp_path / "weights" / "stylegan2-ada-pytorch-ffhq.pkl")
    gen = base.build("stylegan", {"checkpoint": "stylegan2-ada-ffhq", "sigma": 0.7}, _ctx(tmp_path))
    res = gen.render(_req(seed=11), _ctx(tmp_path))
    assert res.meta["checkpoint"] == "stylegan2-ada-ffhq" and res.meta["format"] == "nvlabs"
    ws = torch.randn(net.num_ws, net.w_dim, generator=torch.Generator().manual_seed(11)) * 0.7
    assert np.array_equal(np.asarray(res.image), np.asarray(to_pil(net(ws[None])[0])))


def test_missing_registry_checkpoint_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(GeneratorUnavailable, match="python -m kiosk fetch-models stylegan2-ada-ffhq"):
        base.build("stylegan", {"checkpoint": "stylegan2-ada-ffhq"}, _ctx(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="not found"):
        base.build("stylegan", {"checkpoint": str(tmp_path / "nope.pkl")}, _ctx(tmp_path))


@pytest.mark.parametrize("settings,needle", [
    ({"sigma": -1}, "sigma"), ({"sigma": "big"}, "sigma"), ({"sigma_range": [3, 1]}, "sigma_range"),
    ({"sigma": 1, "sigma_range": [1, 2]}, "either"), ({"mode": "z"}, "wplus, truncation"),
    ({"noise_mode": "loud"}, "const, random, none"), ({"batch": 0}, "batch"), ({"sigmaa": 1}, "sigmaa"),
    ({}, "checkpoint"),
])
def test_bad_settings_are_named(settings, needle, tmp_path: Path, sg2_ckpt) -> None:
    settings = dict(settings)
    if needle != "checkpoint":
        settings["checkpoint"] = str(sg2_ckpt[1])
    with pytest.raises(GeneratorUnavailable, match=needle):
        base.build("stylegan", settings, _ctx(tmp_path))


def test_damaged_checkpoint_is_unavailable_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "broken.pkl"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(GeneratorUnavailable, match="broken.pkl"):
        base.build("stylegan", {"checkpoint": str(path)}, _ctx(tmp_path))


def test_generator_object_and_progress(sg2_ckpt, tmp_path: Path) -> None:
    _, path = sg2_ckpt
    seen: list[dict] = []
    ctx = _ctx(tmp_path)
    ctx.progress = seen.append
    gen = base.build("stylegan", {"checkpoint": str(path)}, ctx)
    assert isinstance(gen, StyleGANGenerator) and gen.name == "stylegan" and "StyleGAN2" in gen.label
    gen.render(_req(), ctx)
    assert seen and seen[-1]["total"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_matches_float32(tmp_path: Path) -> None:
    net = tiny_sg2(num_fp16_res=2)
    path = write_nvlabs_pkl(net, tmp_path / "fp16.pkl")
    ctx = RenderContext(device=torch.device("cuda"), dtype=torch.float16, weights_dir=tmp_path, work_dir=tmp_path)
    gen = base.build("stylegan", {"checkpoint": str(path)}, ctx)
    res = gen.render(_req(seed=3), ctx)
    assert res.meta["fp16"] is True
    ws = torch.randn(net.num_ws, net.w_dim, generator=torch.Generator().manual_seed(3))
    ref = np.asarray(to_pil(net(ws[None])[0]), dtype=int)
    assert np.abs(np.asarray(res.image, dtype=int) - ref).mean() < 3


def _bf16_ctx(tmp_path: Path) -> RenderContext:
    return RenderContext(device=torch.device("cpu"), dtype=torch.bfloat16, weights_dir=tmp_path / "weights",
                         work_dir=tmp_path / "work")


@pytest.mark.parametrize("make,writer", [(tiny_sg2, write_nvlabs_pkl), (tiny_sg1, write_tf_pkl),
                                         (tiny_sg3, write_nvlabs_pkl)], ids=["sg2", "sg1", "sg3"])
def test_worker_in_bfloat16_synthesises_in_bfloat16_close_to_float32(make, writer, tmp_path: Path) -> None:
    # precision "auto" picks bfloat16 on a CPU where it measures faster; the piece then differs from float32
    # only by bfloat16's rounding, and says so in its metadata
    path = writer(make(), tmp_path / "net.pkl")
    settings = {"checkpoint": str(path), "sigma": 1.0}
    gen16 = base.build("stylegan", settings, _bf16_ctx(tmp_path))
    gen32 = base.build("stylegan", settings, _ctx(tmp_path))
    assert gen16.render_dtype == torch.bfloat16 and gen32.render_dtype is None
    diffs = []
    for seed in (1, 2, 3):
        r16, r32 = gen16.render(_req(seed=seed, size=32), _bf16_ctx(tmp_path)), gen32.render(_req(seed=seed, size=32), _ctx(tmp_path))
        assert r16.meta["precision"] == "bfloat16 autocast" and r32.meta["precision"] == "float32"
        diffs.append(np.abs(np.asarray(r16.image, dtype=int) - np.asarray(r32.image, dtype=int)))
    d = np.stack(diffs)
    assert d.max() > 0, "bfloat16 autocast did not run: the images are bit-identical to float32"
    assert d.mean() < 2.0 and np.mean(d > 8) < 0.02, (d.mean(), np.mean(d > 8))


def test_amp_false_keeps_float32_when_the_worker_renders_in_bfloat16(sg2_ckpt, tmp_path: Path) -> None:
    _, path = sg2_ckpt
    gen = base.build("stylegan", {"checkpoint": str(path), "amp": False}, _bf16_ctx(tmp_path))
    ref = base.build("stylegan", {"checkpoint": str(path)}, _ctx(tmp_path))
    a, b = gen.render(_req(seed=3), _bf16_ctx(tmp_path)), ref.render(_req(seed=3), _ctx(tmp_path))
    assert a.meta["precision"] == "float32" and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    # a job cannot switch it: amp is fixed when the generator is built
    c = gen.render(_req(seed=3, amp=True), _bf16_ctx(tmp_path))
    assert c.meta["precision"] == "float32" and np.array_equal(np.asarray(c.image), np.asarray(b.image))
    with pytest.raises(GeneratorUnavailable, match=r"setting amp='yes' is invalid; allowed: true or false"):
        base.build("stylegan", {"checkpoint": str(path), "amp": "yes"}, _bf16_ctx(tmp_path))
