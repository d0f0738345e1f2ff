"""DALL-E dVAE from pickled-module releases through the allowlist, checked against a float64 reference;
hostile and damaged pickles refused with nothing run; the dvae_clip generator."""
from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from renderer.base import GeneratorUnavailable, RenderCancelled, build
from renderer.checkpoint_io import CheckpointError, UnsafePickle
from renderer.dvae import generator as dg
from renderer.dvae.model import load_decoder, load_encoder, map_pixels, unmap_pixels
from tests.dvae_helpers import dall_e_package, reference_decode, reference_encode, write_decoder_pkl, write_encoder_pkl
from tests.family2_helpers import RunsCode, damaged_variants, malicious_plain_pickle, malicious_torch_file
from tests.vqgan_helpers import request, tiny_ctx

TINY = {"dvae": "tiny", "clip_models": ["tiny"], "steps": 3, "cutouts": 4, "progress_every": 1,
        "checkpoint_every": 0}


def _globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    out = io.StringIO()
    pickletools.dis(data, out=out)
    return {line.split("GLOBAL", 1)[1].strip().strip("'") for line in out.getvalue().splitlines() if "GLOBAL" in line}


@pytest.mark.parametrize("blocks", [1, 2])
def test_decoder_pkl_matches_float64_reference(tmp_path, blocks):
    path = tmp_path / "decoder.pkl"
    sd = write_decoder_pkl(path, n_blk_per_group=blocks, seed=blocks)
    # the file names the package's classes, as the release does
    assert {"dall_e.decoder Decoder", "dall_e.decoder DecoderBlock", "dall_e.utils Conv2d",
            "torch.nn.modules.upsampling Upsample", "torch._utils _rebuild_parameter"} <= _globals(path)
    dec = load_decoder(path)
    assert dec.cfg.n_blk_per_group == blocks and dec.cfg.vocab_size == 64
    z = torch.softmax(torch.randn(2, 64, 3, 5, generator=torch.Generator().manual_seed(0)) * 3, 1)
    out = dec(z)
    assert out.shape == (2, 6, 24, 40)
    torch.testing.assert_close(out.double(), reference_decode(sd, z, blocks), atol=1e-5, rtol=0)
    px = dec.pixels(z)
    assert px.min() >= 0 and px.max() <= 1 and px.std() > 0.01


def test_encoder_pkl_matches_float64_reference_and_pixel_mapping(tmp_path):
    sd = write_encoder_pkl(tmp_path / "encoder.pkl")
    enc = load_encoder(tmp_path / "encoder.pkl")
    x = map_pixels(torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(enc(x).double(), reference_encode(sd, x, 1), atol=1e-5, rtol=0)
    assert torch.allclose(unmap_pixels(map_pixels(torch.linspace(0, 1, 11).view(1, 1, 1, 11))),
                          torch.linspace(0, 1, 11).view(1, 1, 1, 11), atol=1e-6)


def test_legacy_serialisation_also_loads(tmp_path):
    sd = write_decoder_pkl(tmp_path / "decoder.pkl", legacy=True)
    z = torch.softmax(torch.randn(1, 64, 2, 2), 1)
    torch.testing.assert_close(load_decoder(tmp_path / "decoder.pkl")(z).double(), reference_decode(sd, z, 1),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["torch-zip", "plain-pickle", "inside-module"])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "decoder.pkl"
    if kind == "torch-zip":
        malicious_torch_file(path, marker)
    elif kind == "plain-pickle":
        malicious_plain_pickle(path, marker)
    else:  # a genuine-looking decoder with one attribute that runs code when unpickled
        with dall_e_package() as cls:
            dec = cls["Decoder"](16, 16, 1, 64)
            dec.blocks.group_1.block_1.extra = RunsCode(marker)
            torch.save(dec, path)
    with pytest.raises(CheckpointError, match=r"decoder\.pkl") as err:
        load_decoder(path)
    if kind != "plain-pickle":
        assert isinstance(err.value, UnsafePickle)
        assert "posix.system" in str(err.value) or "os.system" in str(err.value)
    assert not marker.exists()


def test_foreign_globals_and_wrong_files_are_refused(tmp_path):
    # torch's own modules outside the allowlist (a Linear) are refused too: only the package's layout loads
    path = tmp_path / "decoder.pkl"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafePickle, match="torch.nn.modules.linear.Linear"):
        load_decoder(path)
    write_encoder_pkl(tmp_path / "enc" / "decoder.pkl")
    with pytest.raises(CheckpointError, match="expected dall_e.decoder.Decoder"):
        load_decoder(tmp_path / "enc" / "decoder.pkl")
    good = tmp_path / "good" / "decoder.pkl"
    write_decoder_pkl(good)
    for kind, bad in damaged_variants(good, tmp_path / "bad").items():
        with pytest.raises(CheckpointError, match=str(bad)):
            load_decoder(bad)
    (tmp_path / "state.pkl").write_bytes(b"")
    torch.save({"blocks.input.w": torch.zeros(1)}, tmp_path / "state.pkl")
    with pytest.raises(CheckpointError, match="state.pkl"):
        load_decoder(tmp_path / "state.pkl")


def test_gumbel_softmax_is_seeded_and_hard_is_one_hot():
    logits = torch.randn(1, 10, 2, 2)
    a = dg.gumbel_softmax(logits, 1.0, False, torch.Generator().manual_seed(3))
    b = dg.gumbel_softmax(logits, 1.0, False, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.allclose(a.sum(1), torch.ones(1, 2, 2))
    h = dg.gumbel_softmax(logits.requires_grad_(True), 0.5, True, torch.Generator().manual_seed(3))
    assert set(h.detach().unique().tolist()) == {0.0, 1.0}
    h[:, 0].sum().backward()
    assert logits.grad.abs().sum() > 0  # straight-through: gradients still reach the logits


def test_dvae_clip_resumes_bit_identically_after_a_cancel(tmp_path):
    straight_ctx = tiny_ctx(tmp_path / "a")
    straight = build("dvae_clip", dict(TINY, steps=4), straight_ctx).render(request(width=32, height=24), straight_ctx)
    assert straight.image.size == (32, 24)
    seen = []
    ctx = tiny_ctx(tmp_path / "b", progress=seen.append, should_stop=lambda: len(seen) >= 2)
    with pytest.raises(RenderCancelled):
        build("dvae_clip", dict(TINY, steps=4), ctx).render(request(width=32, height=24), ctx)
    ctx2 = tiny_ctx(tmp_path / "b")
    resumed = build("dvae_clip", dict(TINY, steps=4), ctx2).render(request(width=32, height=24), ctx2)
    assert resumed.meta["resumed_from"] == 2
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))


def test_dvae_clip_from_official_files_with_an_init_image(tmp_path):
    from PIL import Image

    weights = tmp_path / "weights"
    write_decoder_pkl(weights / "dall-e-decoder.pkl")
    write_encoder_pkl(weights / "dall-e-encoder.pkl")
    init = tmp_path / "init.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype("uint8")).save(init)
    ctx = tiny_ctx(tmp_path)
    gen = build("dvae_clip", dict(TINY, dvae="dall-e-dvae", steps=1), ctx)  # by registry name
    res = gen.render(request(width=16, height=16, init_image=str(init)), ctx)
    assert res.meta["models"]["dvae"]["file"] == "dall-e-decoder.pkl" and res.meta["init_image"] == str(init)
    (weights / "dall-e-decoder.pkl").unlink()
    with pytest.raises(GeneratorUnavailable, match="fetch-models dall-e-dvae"):
        build("dvae_clip", dict(TINY, dvae="dall-e-dvae"), tiny_ctx(tmp_path / "x"))
    with pytest.raises(GeneratorUnavailable, match="'tau'"):
        build("dvae_clip", dict(TINY, tau=0), ctx)


def test_memory_refusal_names_the_largest_canvas_that_fits():
    from renderer import clip_steered as cs
    from renderer.dvae.model import DecoderConfig, Decoder

    with torch.device("meta"):
        dec = Decoder(DecoderConfig())  # the released decoder's shape (n_hid 256, 8192 tokens)
    est = lambda w, h: dg.estimate_bytes(dec, w, h, 400 * 2**20)  # noqa: E731
    budget = est(512, 256)
    with pytest.raises(cs.CanvasTooLarge) as err:
        cs.check_fits(est, 1024, 512, 8, budget, "dVAE+CLIP")
    best = cs.largest_fitting(est, 1024, 512, 8, budget)
    assert f"largest size that fits is {best[0]}x{best[1]}" in str(err.value)
    assert best == (512, 256)
    assert cs.check_fits(est, 512, 256, 8, budget, "dVAE+CLIP") == budget


def test_dvae_clip_runs_under_bf16_autocast(tmp_path):
    ctx = tiny_ctx(tmp_path, dtype=torch.bfloat16)
    res = build("dvae_clip", dict(TINY, steps=2), ctx).render(request(width=16, height=16), ctx)
    assert all(np.isfinite(v) for v in res.meta["losses"].values())
