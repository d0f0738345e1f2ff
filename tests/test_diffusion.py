"""CLIP-guided diffusion: the guided-diffusion UNet from its released state-dict format, checked against an
independent float64 forward; the schedule and samplers; guidance; the generator; refused files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from renderer.base import GeneratorUnavailable, RenderCancelled, build
from renderer.checkpoint_io import CheckpointError, UnsafePickle
from renderer.diffusion import generator as dg
from renderer.diffusion.sampling import Diffusion, kept_timesteps, linear_betas, range_loss, tv_loss
from renderer.diffusion.unet import CONFIGS, UNet, UNetConfig, load_unet, parameter_names
from tests.diffusion_helpers import official_shapes, reference_forward, write_official
from tests.family2_helpers import damaged_variants, malicious_torch_file
from tests.vqgan_helpers import request, tiny_ctx

TINY = {"model": "tiny", "clip_models": ["tiny"], "steps": 4, "sampler": "ddim", "cutouts": 4, "progress_every": 1,
        "checkpoint_every": 0}
SMALL = UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 1, 2),
                   attention_resolutions=(16, 8), num_head_channels=16)


def test_release_layout_names_and_shapes_match_our_module():
    for cfg in (CONFIGS[256], CONFIGS[512], SMALL):
        with torch.device("meta"):
            ours = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
        assert ours == dict(official_shapes(cfg))
    with torch.device("meta"):
        n = sum(p.numel() for p in UNet(CONFIGS[256]).parameters())
    assert n == 552_814_086  # the released 256x256 unconditional model's parameter count
    assert parameter_names(CONFIGS[256])[:2] == ["time_embed.0.weight", "time_embed.0.bias"]


def test_released_format_file_matches_float64_reference(tmp_path):
    path = tmp_path / "256x256_diffusion_uncond.pt"
    sd = write_official(path, SMALL)
    model = load_unet(path, SMALL)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([3.0, 871.0])
    out = model(x, t)
    assert out.shape == (2, 6, 32, 32)
    torch.testing.assert_close(out.double(), reference_forward(sd, SMALL, x, t), atol=2e-4, rtol=1e-4)


def test_wrong_damaged_and_hostile_files_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    write_official(good, SMALL)
    with pytest.raises(CheckpointError, match="shape|missing"):
        load_unet(good, UNetConfig(image_size=32, num_channels=64, num_res_blocks=1, channel_mult=(1, 1, 2),
                                   attention_resolutions=(16, 8), num_head_channels=16))
    for kind, bad in damaged_variants(good, tmp_path / "bad").items():
        with pytest.raises(CheckpointError, match=str(bad)):
            load_unet(bad, SMALL)
    marker = tmp_path / "pwned"
    evil = malicious_torch_file(tmp_path / "evil.pt", marker, wrap=lambda e: {"time_embed.0.weight": e})
    with pytest.raises(UnsafePickle, match="evil.pt"):
        load_unet(evil, SMALL)
    assert not marker.exists()


def test_respacing_and_a_perfect_denoiser_recover_the_picture():
    assert kept_timesteps(1000, 50, "ddim") == list(range(0, 1000, 20))
    kept = kept_timesteps(1000, 250, "ddpm")
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    full, short = Diffusion(list(range(1000))), Diffusion(kept_timesteps(1000, 50, "ddim"))
    ac_full = np.cumprod(1 - linear_betas(1000))
    assert np.allclose(short.ac, ac_full[::20]) and np.allclose(full.ac, ac_full)
    # a model that knows the answer (the data is one picture x0): DDIM with eta 0 lands exactly on it
    x0 = torch.rand(1, 3, 8, 8) * 2 - 1
    d = short

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = d.timesteps.index(int(t[0]))
        a = float(d.ac[i])
        eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for i in reversed(range(len(d))):
        out = d.p_mean_variance(oracle, x, i)
        x = d.ddim_step(out, x, i, torch.zeros_like(x), None)
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)
    # DDPM with the same oracle also ends on the picture (its last step adds no noise)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    for i in reversed(range(len(d))):
        out = d.p_mean_variance(oracle, x, i)
        x = d.ddpm_step(out, x, i, torch.randn(x.shape, generator=g), None)
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)


def test_guidance_losses():
    flat = torch.zeros(1, 3, 8, 8)
    assert tv_loss(flat) == 0 and range_loss(flat) == 0
    assert tv_loss(torch.randn(1, 3, 8, 8)) > 0
    assert range_loss(torch.full((1, 3, 4, 4), 1.5)) == pytest.approx(0.25)


def test_sampler_resumes_bit_identically_and_init_image_skips_steps(tmp_path):
    a = tiny_ctx(tmp_path / "a")
    straight = build("clip_diffusion", TINY, a).render(request(width=32, height=32), a)
    seen = []
    b = tiny_ctx(tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 2)
    with pytest.raises(RenderCancelled):
        build("clip_diffusion", TINY, b).render(request(width=32, height=32), b)
    b2 = tiny_ctx(tmp_path / "b")
    resumed = build("clip_diffusion", TINY, b2).render(request(width=32, height=32), b2)
    assert resumed.meta["resumed_from"] == 2
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))
    assert straight.meta["label"] == dg.TINY_LABEL and np.asarray(straight.image).std() > 0

    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(init)
    seen = []
    c = tiny_ctx(tmp_path / "c", progress=seen.append)
    res = build("clip_diffusion", dict(TINY, sampler="ddpm", skip_timesteps=2), c).render(
        request(width=32, height=32, init_image=str(init)), c)
    assert [i["total"] for i in seen][-1] == 2  # two of the four steps skipped
    red = np.asarray(res.image).astype(float).mean((0, 1))
    assert red[0] > red[1] + 30 and red[0] > red[2] + 30  # the init picture shows through


def test_settings_and_missing_weights(tmp_path):
    with pytest.raises(GeneratorUnavailable, match="skip_timesteps"):
        build("clip_diffusion", dict(TINY, skip_timesteps=4), tiny_ctx(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="'sampler'"):
        build("clip_diffusion", dict(TINY, sampler="euler"), tiny_ctx(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="fetch-models guided-diffusion-512"):
        build("clip_diffusion", dict(TINY, model="guided-diffusion-512"), tiny_ctx(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="image_size"):
        path = tmp_path / "mine.pt"
        path.write_bytes(b"x")
        build("clip_diffusion", dict(TINY, model=str(path)), tiny_ctx(tmp_path))


def test_memory_refusal_names_the_largest_canvas_that_fits():
    from renderer import clip_steered as cs

    with torch.device("meta"):
        unet = UNet(CONFIGS[256])
    est = lambda w, h: dg.estimate_bytes(unet, w, h, 500 * 2**20)  # noqa: E731
    budget = est(256, 256)
    with pytest.raises(cs.CanvasTooLarge, match="largest size that fits is 256x256"):
        cs.check_fits(est, 512, 512, 32, budget, "CLIP-guided diffusion")
