"""BigGAN-deep from the pytorch-pretrained-biggan format, checked against an independent float64 forward;
refused files; the Big Sleep tricks and generator."""
from __future__ import annotations

import shutil

import pytest
import torch

from renderer.base import GeneratorUnavailable, build
from renderer.biggan import generator as bs
from renderer.biggan.model import OFFICIAL, BigGAN, load_biggan, param_count, read_config, tiny_config
from renderer.checkpoint_io import CheckpointError, UnsafePickle
from tests.biggan_helpers import official_shapes, reference_forward, write_official
from tests.family2_helpers import damaged_variants, malicious_torch_file
from tests.vqgan_helpers import request, tiny_ctx

TINY = {"biggan": "tiny", "clip_models": ["tiny"], "steps": 4, "cutouts": 4, "progress_every": 1,
        "checkpoint_every": 0}


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-2019", "zip"])
@pytest.mark.parametrize("truncation", [1.0, 0.4, 0.73])
def test_official_file_matches_float64_reference(tmp_path, legacy, truncation):
    cfg = tiny_config()
    bin_path, json_path, sd = write_official(tmp_path, cfg, legacy=legacy)
    model = load_biggan(bin_path)  # config.json found beside it
    assert model.cfg == read_config(json_path) == cfg
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, cfg.z_dim, generator=g)
    cls = torch.softmax(torch.randn(2, cfg.num_classes, generator=g) * 3, 1)
    out = model(z, cls, truncation)
    ref = reference_forward(sd, cfg, z, cls, truncation)
    assert out.shape == (2, 3, 32, 32)
    assert out.std() > 0.05  # not a degenerate picture
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


def test_our_module_has_every_official_name_after_folding():
    for cfg in (tiny_config(), OFFICIAL[128], OFFICIAL[512]):
        with torch.device("meta"):
            ours = BigGAN(cfg).state_dict()
        folded = {k.replace(".weight_orig", ".weight"): v for k, v in official_shapes(cfg).items()
                  if not k.endswith((".weight_u", ".weight_v"))}
        assert set(ours) == set(folded)
        assert all(tuple(ours[k].shape) == tuple(folded[k]) for k in ours)
    # the published generators' size: BigGAN-deep is ~50M parameters plus 51 rows of statistics per batch norm
    assert 50e6 < param_count(OFFICIAL[128]) < 60e6


def test_damaged_foreign_and_mismatched_files_name_the_file(tmp_path):
    cfg = tiny_config()
    bin_path, json_path, sd = write_official(tmp_path / "good", cfg)
    for kind, bad in damaged_variants(bin_path, tmp_path / "bad").items():
        shutil.copy(json_path, bad.with_suffix(".json"))
        with pytest.raises(CheckpointError, match=str(bad)):
            load_biggan(bad)
    # a real state dict of another network (keys do not match)
    other = tmp_path / "other" / "x.bin"
    other.parent.mkdir()
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    shutil.copy(json_path, other.with_suffix(".json"))
    with pytest.raises(CheckpointError, match="missing .*generator"):
        load_biggan(other)
    # the right names with a config for a different width
    wide = tmp_path / "wide.json"
    wide.write_text(json_path.read_text().replace('"channel_width": 4', '"channel_width": 8'))
    with pytest.raises(CheckpointError, match="shape"):
        load_biggan(bin_path, wide)
    broken = tmp_path / "broken.json"
    broken.write_text('{"output_dim": 32,')
    with pytest.raises(CheckpointError, match="broken.json"):
        load_biggan(bin_path, broken)
    odd = tmp_path / "odd.json"
    odd.write_text(json_path.read_text().replace('"output_dim": 32', '"output_dim": 64'))
    with pytest.raises(CheckpointError, match="output_dim"):
        load_biggan(bin_path, odd)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = malicious_torch_file(tmp_path / "evil.bin", marker)
    write_official(tmp_path / "cfg", tiny_config())
    shutil.copy(tmp_path / "cfg" / "biggan-tiny.json", tmp_path / "evil.json")
    with pytest.raises(UnsafePickle, match="evil.bin"):
        load_biggan(evil)
    assert not marker.exists()


def test_notebook_tricks():
    one_hot = torch.zeros(1, 1000)
    one_hot[0, 7] = 1
    spread = torch.full((1, 1000), 0.02)
    assert bs.class_sparsity_loss(one_hot, 50.0) == 0
    assert bs.class_sparsity_loss(spread, 50.0) == pytest.approx(1.0)  # (50 * 0.02)^2
    normal = torch.randn(1, 100000, generator=torch.Generator().manual_seed(0))
    skewed = normal.abs() * 3
    assert bs.latent_statistics_loss(normal) < 4.1 < bs.latent_statistics_loss(skewed)
    mix = bs.differentiable_topk(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), 2, 1.0)
    assert (mix[0, [0, 2]] == 0).all() and (mix[0, [1, 3]] > 0).all()


def test_big_sleep_renders_and_the_tricks_move_the_classes(tmp_path):
    seen = []
    ctx = tiny_ctx(tmp_path, progress=seen.append)
    gen = build("big_sleep", dict(TINY, steps=12, lr=0.2), ctx)
    assert gen.label == bs.TINY_LABEL
    res = gen.render(request(), ctx)
    assert res.image.size == (32, 32)
    assert [i["step"] for i in seen] == list(range(1, 13))
    assert res.meta["models"]["biggan"]["weights"] == "random-init"
    assert set(res.meta["losses"]) == {"prompts", "latent", "class_sparsity", "total"}
    # the sparsity trick pushes every class but the winner toward zero: below the 2% everyone starts at
    assert res.meta["top_classes"][1][1] < 0.02


def test_big_sleep_loads_an_official_file_by_path_and_by_registry_name(tmp_path):
    weights = tmp_path / "weights"
    bin_path, _, _ = write_official(weights, tiny_config(), name="biggan-deep-256")
    ctx = tiny_ctx(tmp_path)
    res = build("big_sleep", dict(TINY, biggan=str(bin_path), steps=1), ctx).render(request(), ctx)
    assert len(res.meta["models"]["biggan"]["sha256"]) == 64
    with pytest.raises(GeneratorUnavailable, match="fetch-models biggan-deep-512"):
        build("big_sleep", dict(TINY, biggan="biggan-deep-512"), ctx)
    with pytest.raises(GeneratorUnavailable, match="fetch-models open_clip_ViT-B-32-openai"):
        build("big_sleep", {"biggan": "tiny"}, ctx)
    with pytest.raises(GeneratorUnavailable, match="truncation"):
        build("big_sleep", dict(TINY, truncation=1.5), ctx)


def test_memory_refusal_names_the_largest_official_size_that_fits():
    clip_bytes = 600 * 2**20
    need = {size: bs.estimate_bytes(c, param_count(c), clip_bytes) for size, c in OFFICIAL.items()}
    assert need[128] < need[256] < need[512]
    budget = (need[256] + need[512]) // 2
    with pytest.raises(bs.cs.CanvasTooLarge, match=r"largest size that fits is 256x256 \(biggan-deep-256\)"):
        bs.check_memory(OFFICIAL[512], param_count(OFFICIAL[512]), clip_bytes, budget, 32)
    assert bs.check_memory(OFFICIAL[256], param_count(OFFICIAL[256]), clip_bytes, budget, 32) == need[256]
    with pytest.raises(bs.cs.CanvasTooLarge, match="not even biggan-deep-128"):
        bs.check_memory(OFFICIAL[256], param_count(OFFICIAL[256]), clip_bytes, need[128] // 2, 32)


def test_big_sleep_resumes_bit_identically_and_runs_under_bf16_autocast(tmp_path):
    import numpy as np

    from renderer.base import RenderCancelled

    a = tiny_ctx(tmp_path / "a")
    straight = build("big_sleep", TINY, a).render(request(), a)
    seen = []
    b = tiny_ctx(tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 2)
    with pytest.raises(RenderCancelled):
        build("big_sleep", TINY, b).render(request(), b)
    b2 = tiny_ctx(tmp_path / "b")
    resumed = build("big_sleep", TINY, b2).render(request(), b2)
    assert resumed.meta["resumed_from"] == 2
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))
    c = tiny_ctx(tmp_path / "c", dtype=torch.bfloat16)
    res = build("big_sleep", dict(TINY, steps=2), c).render(request(), c)
    assert all(np.isfinite(v) for v in res.meta["losses"].values()) and np.asarray(res.image).std() > 0
