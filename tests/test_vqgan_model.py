"""VQGAN from taming building blocks: official-format checkpoints load by name, safely."""
from __future__ import annotations

import os

import pytest
import torch

from renderer.vqgan_clip.vqgan import (CheckpointError, UnsafeCheckpointError, VQGAN, load_vqgan, read_config,
                                       read_lightning_state_dict, tiny_config, vector_quantize)
from tests.vqgan_helpers import write_tiny_vqgan


@pytest.mark.parametrize("gumbel", [False, True])
def test_lightning_checkpoint_loads_and_decodes_identically(tmp_path, gumbel):
    ckpt, original = write_tiny_vqgan(tmp_path, gumbel=gumbel)
    assert read_config(ckpt.with_suffix(".yaml")).gumbel is gumbel
    loaded = load_vqgan(ckpt)  # yaml found beside the ckpt
    assert isinstance(loaded, VQGAN)
    assert not any(k.startswith("loss.") for k in loaded.state_dict())
    g = torch.Generator().manual_seed(1)
    z = original.random_latent(32, 32, g)
    with torch.no_grad():
        assert torch.equal(original.synth(z), loaded.synth(z))
        img = torch.rand(1, 3, 32, 32) * 2 - 1
        assert torch.equal(original.encode(img), loaded.encode(img))
    # the encoder's latent is made of codebook rows
    zq = loaded.encode(img)
    rows = zq.movedim(1, 3).reshape(-1, zq.shape[1])
    assert all((loaded.codebook == r).all(1).any() for r in rows)


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "hook": Evil()}, bad)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_lightning_state_dict(bad)
    assert "evil.ckpt" in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_bad_config_names_file_and_allowed_targets(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("model:\n  target: taming.models.cond_transformer.Net2NetTransformer\n  params: {}\n")
    with pytest.raises(CheckpointError) as err:
        read_config(p)
    assert "m.yaml" in str(err.value) and "taming.models.vqgan.VQModel" in str(err.value)


def test_weights_not_matching_config_is_a_clear_error(tmp_path):
    ckpt, _ = write_tiny_vqgan(tmp_path, gumbel=False)
    with pytest.raises(CheckpointError, match="do not match"):
        load_vqgan(ckpt, tiny_config(gumbel=True))


def test_vector_quantize_snaps_with_straight_through_gradient():
    cb = torch.randn(5, 3)
    x = torch.randn(2, 4, 3, requires_grad=True)
    q = vector_quantize(x, cb)
    assert torch.allclose(q, cb[torch.cdist(x.detach(), cb.expand(2, 5, 3)).argmin(-1)])
    (q * torch.arange(3.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(3.0).expand(2, 4, 3))


def test_checkpointed_decoder_matches_plain():
    torch.manual_seed(0)
    vq = VQGAN(tiny_config())
    z = vq.random_latent(32, 32, torch.Generator().manual_seed(0)).requires_grad_(True)
    out1 = vq.synth(z)
    g1, = torch.autograd.grad(out1.sum(), z)
    vq.grad_checkpoint = True
    out2 = vq.synth(z)
    g2, = torch.autograd.grad(out2.sum(), z)
    assert torch.allclose(out1, out2) and torch.allclose(g1, g2, atol=1e-6)


def test_latent_bounds_are_the_codebook_box():
    vq = VQGAN(tiny_config())
    lo, hi = vq.latent_bounds()
    assert lo.shape == (1, vq.cfg.embed_dim, 1, 1)
    assert torch.equal(lo.flatten(), vq.codebook.min(0).values)


@pytest.mark.parametrize("channels_last", [False, True])
def test_polyphase_upsampling_is_nearest_then_conv_values_and_gradients(channels_last: bool) -> None:
    from taming.modules.diffusionmodules.model import Upsample

    from renderer.vqgan_clip.vqgan import PolyphaseUpsample

    torch.manual_seed(3)
    plain = Upsample(16, with_conv=True)
    fast = PolyphaseUpsample(plain.conv)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 16, 7, 9).contiguous(memory_format=fmt).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    a, b = fast(x), plain(y)
    assert a.shape == b.shape == (2, 16, 14, 18)
    assert (a - b).abs().max() < 1e-5 * b.abs().max()
    g = torch.randn_like(b)
    (a * g).sum().backward()
    (b * g).sum().backward()
    assert (x.grad - y.grad).abs().max() < 1e-5 * y.grad.abs().max()
    assert plain.conv.weight.grad is not None  # the weight still learns through the derived kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fast(x.detach())
    assert low.dtype == torch.bfloat16 and (low.float() - b.detach()).abs().max() < 0.05 * b.abs().max()


def test_decoder_with_polyphase_upsampling_decodes_as_taming_does() -> None:
    import copy

    from taming.modules.diffusionmodules.model import Decoder, ResnetBlock

    from renderer.vqgan_clip.vqgan import PolyphaseUpsample, use_taming_layers

    torch.manual_seed(4)
    vq = VQGAN(tiny_config()).eval()
    assert any(isinstance(level.upsample, PolyphaseUpsample) for level in vq.decoder.up if hasattr(level, "upsample"))
    assert not any(type(m) in (ResnetBlock, Decoder) for m in vq.decoder.modules())  # fused swish everywhere
    ref = copy.deepcopy(vq)
    assert use_taming_layers(ref.decoder) > 0
    assert type(ref.decoder) is Decoder and any(type(m) is ResnetBlock for m in ref.decoder.modules())
    assert set(vq.state_dict()) == set(ref.state_dict())  # same names: checkpoints load either way
    z = vq.random_latent(32, 48, torch.Generator().manual_seed(1)).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    a, b = vq.synth(z), ref.synth(z_ref)
    assert (a - b).abs().max() < 1e-5
    w = torch.rand_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    assert (z.grad - z_ref.grad).abs().max() < 1e-5 * z_ref.grad.abs().max() + 1e-7
    vq.grad_checkpoint = True  # the checkpointed decode is the same function
    z.grad = None
    c = vq.synth(z)
    (c * w).sum().backward()
    assert torch.allclose(c, a, atol=1e-6) and (z.grad - z_ref.grad).abs().max() < 1e-5 * z_ref.grad.abs().max() + 1e-7
