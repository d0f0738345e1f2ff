"""The weights-free default generator (renderer/generators/default.py)."""
from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch

from renderer import base
from renderer.base import GeneratorUnavailable, RenderCancelled, RenderContext, RenderRequest
from renderer.generators import default as dg


def make_ctx(tmp_path, dtype=torch.float32, **hooks) -> RenderContext:
    return RenderContext(device=torch.device("cpu"), dtype=dtype, weights_dir=tmp_path, work_dir=tmp_path, **hooks)


def make_req(seed=1, width=64, height=64, **params) -> RenderRequest:
    return RenderRequest(job_id=7, exhibit="demo", generator="default", prompts=(), seed=seed,
                         width=width, height=height, params=params)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny renders on a busy 2-core machine spend most of their
    time waiting at thread barriers otherwise.  The thread-count test sets its own."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def ctx(tmp_path):
    return make_ctx(tmp_path)


@pytest.fixture()
def gen(ctx):
    return base.build("default", {"name": "default"}, ctx)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def gradient_energy(image) -> float:
    """Mean absolute difference between neighbouring pixels: how busy the picture is."""
    a = pixels(image)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def hue_bins(image, bins=12, min_sat=0.25, min_share=0.03) -> int:
    """How many of ``bins`` hue sectors hold at least ``min_share`` of the saturated pixels."""
    a = pixels(image).reshape(-1, 3)[::7]
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in a])
    sat = hsv[(hsv[:, 1] > min_sat) & (hsv[:, 2] > 0.15)]
    if len(sat) == 0:
        return 0
    counts = np.bincount((sat[:, 0] * bins).astype(int) % bins, minlength=bins)
    return int((counts >= min_share * len(sat)).sum())


def test_registered_by_name(gen):
    assert "default" in base.names()
    assert gen.name == "default"
    assert gen.label == "weights-free pattern network (no trained model)"


def test_same_seed_same_bytes_even_from_a_fresh_generator(gen, ctx):
    req = make_req(seed=42, sigma=1.3)
    a = gen.render(req, ctx).image
    b = gen.render(req, ctx).image
    c = base.build("default", {}, ctx).render(req, ctx).image
    assert a.mode == "RGB"
    assert png(a) == png(b) == png(c)


def test_thread_count_changes_at_most_a_few_pixels_by_one_level(gen, ctx):
    req = make_req(seed=8, width=160, height=120, sigma=2.0)
    one = pixels(gen.render(req, ctx).image)
    torch.set_num_threads(2)
    two = pixels(gen.render(req, ctx).image)
    diff = np.abs(one - two) * 255
    assert diff.max() <= 1.0 + 1e-9
    assert (diff > 0).mean() < 0.01


def test_different_seeds_differ(gen, ctx):
    a = pixels(gen.render(make_req(seed=1), ctx).image)
    b = pixels(gen.render(make_req(seed=2), ctx).image)
    assert np.abs(a - b).mean() > 0.05


def test_arch_seed_changes_the_network(ctx):
    req = make_req(seed=3)
    a = pixels(base.build("default", {"arch_seed": 1}, ctx).render(req, ctx).image)
    b = pixels(base.build("default", {"arch_seed": 2}, ctx).render(req, ctx).image)
    assert np.abs(a - b).mean() > 0.05


def test_larger_sigma_makes_busier_pictures(gen, ctx):
    sigmas = (0.25, 1.0, 3.0)
    seeds = range(1, 9)
    energy = np.array([[gradient_energy(gen.render(make_req(seed=s, width=96, height=96, sigma=g), ctx).image)
                        for g in sigmas] for s in seeds])
    mean = energy.mean(axis=0)
    assert mean[0] < mean[1] < mean[2], mean
    assert mean[2] > 2.0 * mean[0], mean
    # not an average carried by one seed: most seeds get busier from calm to wild
    assert (energy[:, 2] > energy[:, 0]).sum() >= 6, energy


def test_sigma_zero_is_still_a_picture(gen, ctx):
    img = gen.render(make_req(seed=5, sigma=0.0), ctx).image
    assert pixels(img).std(axis=(0, 1)).mean() > 0.05


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_pictures_are_colourful_and_not_flat(gen, ctx, seed):
    img = gen.render(make_req(seed=seed, width=96, height=96, sigma=1.0), ctx).image
    a = pixels(img)
    assert a.std(axis=(0, 1)).min() > 0.08, "a colour channel is almost flat"
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 500
    assert hue_bins(img) >= 3, "fewer than three distinct hues"
    assert 0.12 < a.mean() < 0.88


def test_panorama_size_and_aspect_are_honoured(gen, ctx):
    img = gen.render(make_req(seed=9, width=768, height=384), ctx).image
    assert img.size == (768, 384)
    # the shorter side spans the same range whatever the aspect: the square picture
    # is the centre of the panorama, not a squeezed copy of it
    s = gen.effective_settings(make_req())
    net = dg.build_network(s)
    ws = dg.sample_ws(9, s.num_ws, s.sigma)
    wide = dg.forward(net, ws, 96, 48).reshape(48, 96, 3)
    square = dg.forward(net, ws, 48, 48).reshape(48, 48, 3)
    assert torch.allclose(wide[:, 24:72], square, atol=1e-4)


def test_fast_forward_matches_the_plain_reference():
    s = dg.parse_settings({"sigma": 2.0})
    net = dg.build_network(s)
    ws = dg.sample_ws(11, s.num_ws, s.sigma)
    fast = dg.forward(net, ws, 40, 24, chunk=200).numpy()  # several chunks, one partial
    ref = dg.reference_forward(net, ws, 40, 24)
    assert np.abs(fast - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_bfloat16_autocast_on_cpu_is_finite_and_close(gen, tmp_path):
    c32 = make_ctx(tmp_path, torch.float32)
    c16 = make_ctx(tmp_path, torch.bfloat16)
    req = make_req(seed=4, width=96, height=96, sigma=0.5)
    assert gen.render(req, c16).meta["autocast"] == "float32"  # opt-in only
    req = make_req(seed=4, width=96, height=96, sigma=0.5, autocast=True)
    r16 = gen.render(req, c16)
    assert r16.meta["autocast"] == "bfloat16"
    s = gen.effective_settings(req)
    net = dg.build_network(s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = dg.forward(net, dg.sample_ws(4, s.num_ws, 3.0), 64, 64)
    assert raw.dtype == torch.float32 and torch.isfinite(raw).all()
    a, b = pixels(gen.render(req, c32).image), pixels(r16.image)
    assert np.abs(a - b).mean() < 0.05


def test_meta_describes_the_piece(gen, ctx):
    meta = gen.render(make_req(seed=3, sigma=2.5), ctx).meta
    assert meta["generator"] == "default"
    assert meta["label"] == "weights-free pattern network (no trained model)"
    assert meta["sigma"] == 2.5 and meta["params"]["sigma"] == 2.5
    assert meta["num_ws"] == 14 and meta["arch_seed"] == dg.DEFAULTS["arch_seed"]
    assert meta["models"] == {}
    assert meta["seed"] == 3


def test_request_params_override_the_exhibit_settings(ctx):
    gen = base.build("default", {"sigma": 0.4, "num_ws": 6}, ctx)
    assert gen.render(make_req(), ctx).meta["sigma"] == 0.4
    meta = gen.render(make_req(sigma=2.0, prompts="ignored"), ctx).meta
    assert meta["sigma"] == 2.0 and meta["num_ws"] == 6


def test_progress_reports_and_cancellation(tmp_path):
    seen: list[dict] = []
    ctx = make_ctx(tmp_path, progress=seen.append)
    gen = base.build("default", {}, ctx)
    gen.render(make_req(), ctx)
    assert [(d["step"], d["total"]) for d in seen] == [(0, 1), (1, 1)]
    assert seen[-1]["image"].size == (64, 64)
    stop_ctx = make_ctx(tmp_path, should_stop=lambda: True)
    with pytest.raises(RenderCancelled):
        gen.render(make_req(), stop_ctx)


@pytest.mark.parametrize("num_ws,depth", [(1, 3), (3, 6), (20, 2)])
def test_any_latent_length_and_depth_work(ctx, num_ws, depth):
    gen = base.build("default", {"num_ws": num_ws, "depth": depth, "width": 8}, ctx)
    img = gen.render(make_req(width=32, height=20), ctx).image
    assert img.size == (32, 20)
    assert pixels(img).std() > 0.03


def test_hsv_palette(ctx):
    img = base.build("default", {"palette": "hsv"}, ctx).render(make_req(width=96, height=96), ctx).image
    assert hue_bins(img) >= 3


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"sigmma": 1.0}, "unknown setting.*'sigmma'.*allowed: arch_seed"),
        ({"palette": "neon"}, "palette must be one of cosine, hsv"),
        ({"num_ws": 0}, "num_ws must be in 1..64"),
        ({"width": "wide"}, "width must be an integer"),
        ({"sigma": -1}, "sigma must be in 0..20"),
        ({"sigma": float("nan")}, "sigma must be a finite number"),
    ],
)
def test_bad_settings_are_named(ctx, settings, message):
    with pytest.raises(GeneratorUnavailable, match=message):
        base.build("default", settings, ctx)


def test_bad_request_is_named(gen, ctx):
    with pytest.raises(GeneratorUnavailable, match="job 7: width must be an integer in 1..8192"):
        gen.render(make_req(width=0), ctx)
    with pytest.raises(GeneratorUnavailable, match="job 7 params.*sigma"):
        gen.render(make_req(sigma="big"), ctx)
    with pytest.raises(GeneratorUnavailable, match="seed must be"):
        gen.render(make_req(seed=-3), ctx)
