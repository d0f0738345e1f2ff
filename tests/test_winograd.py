"""NNPACK's Winograd 3x3 convolutions (renderer.winograd): the same function as torch's, forward and backward,
used only where they can run, and the Doorways generator's ``winograd`` setting end to end."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from renderer import winograd
from renderer.base import GeneratorUnavailable, build
from renderer.vqgan_clip.generator import parse_settings
from renderer.vqgan_clip.vqgan import VQGAN, tiny_config, use_taming_layers
from tests.vqgan_helpers import TINY_SETTINGS, request, tiny_ctx

needs_nnpack = pytest.mark.skipif(not winograd.available(), reason="this torch build has no NNPACK")


def _case(c_in: int = 32, c_out: int = 48, size: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, size, size + 8, generator=g)
    w = torch.randn(c_out, c_in, 3, 3, generator=g) / (3 * c_in ** 0.5)
    b = torch.randn(c_out, generator=g)
    return x, w, b


@needs_nnpack
def test_forward_and_every_gradient_equal_torchs_convolution():
    x, w, b = _case()
    gy = torch.randn(2, 48, 128, 136, generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for fn in (winograd.conv3x3, lambda *a: F.conv2d(*a, padding=1)):
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = fn(xs, ws, bs)
        y.backward(gy)
        outs.append(y.detach())
        grads.append([t.grad for t in (xs, ws, bs)])
    scale = outs[1].abs().max()
    err = (outs[0] - outs[1]).abs().max() / scale
    assert 0 < err < 2e-5, err  # Winograd rounds differently (not bit-equal), but only at float32's level
    for name, a, r in zip(("input", "weight", "bias"), *grads):
        rel = float((a - r).abs().max() / r.abs().max())
        assert rel < 2e-5, (name, rel)


@needs_nnpack
def test_only_the_input_gradient_is_made_when_weights_are_frozen():
    # the decoder's weights are frozen in a render: no weight gradient, so x is not even kept for it
    x, w, b = _case(size=128)
    xs = x.clone().requires_grad_(True)
    y = winograd.conv3x3(xs, w, b)
    y.square().mean().backward()
    ref = x.clone().requires_grad_(True)
    F.conv2d(ref, w, b, padding=1).square().mean().backward()
    assert w.grad is None and b.grad is None
    assert float((xs.grad - ref.grad).abs().max() / ref.grad.abs().max()) < 2e-5


def test_use_winograd_swaps_only_plain_3x3_stride_1_convolutions_and_keeps_the_weights():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                        nn.Conv2d(8, 8, 3, padding=1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert winograd.use_winograd(net) == 2
    assert [type(m).__name__ for m in net] == ["WinogradConv2d", "Conv2d", "Conv2d", "Conv2d", "Conv2d",
                                               "WinogradConv2d"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and set(before) == set(net.state_dict())
    assert winograd.use_direct(net) == 2 and all(type(m) is nn.Conv2d for m in net)


def test_the_decoder_swaps_back_to_taming_layers_for_the_classic_loop():
    vq = VQGAN(tiny_config())
    n = winograd.use_winograd(vq.decoder)
    assert n > 0 and any(isinstance(m, winograd.WinogradConv2d) for m in vq.decoder.modules())
    use_taming_layers(vq.decoder)
    assert not any(isinstance(m, winograd.WinogradConv2d) for m in vq.decoder.modules())


@needs_nnpack
@pytest.mark.parametrize("case", ["channels_last", "small", "bfloat16_autocast", "float64"])
def test_where_winograd_cannot_pay_the_layer_is_exactly_torchs(case):
    conv = nn.Conv2d(32, 32, 3, padding=1)
    ref = nn.Conv2d(32, 32, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    winograd.use_winograd(conv)
    x = torch.randn(1, 32, 128, 128)
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif case == "small":
        x = x[:, :, :64, :64].contiguous()
    elif case == "float64":
        x, conv, ref = x.double(), conv.double(), ref.double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bfloat16_autocast"):
        a, b = conv(x), ref(x)
    assert a.dtype == b.dtype and torch.equal(a, b)
    # and where it can, it does run: not bit-equal to the direct convolution
    with torch.no_grad():
        big = torch.randn(1, 32, 128, 128)
        assert not torch.equal(conv.float()(big), ref.float()(big))


@needs_nnpack
def test_a_failing_nnpack_is_logged_once_and_torch_takes_over(monkeypatch, caplog):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(winograd, "_failed", [])
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    ref = nn.Conv2d(16, 16, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    winograd.use_winograd(conv)
    x = torch.randn(1, 16, 128, 128)
    with caplog.at_level(logging.WARNING, logger="renderer.winograd"), torch.no_grad():
        for _ in range(3):
            assert torch.equal(conv(x), ref(x))
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records if "NNPACK" in r.getMessage()] == [
        "NNPACK's Winograd convolution failed (NNPACK SpatialConvolution_updateOutput failed); "
        "using torch's own convolutions from now on"]


def test_the_setting_resolves_per_device_and_is_checked():
    assert winograd.wanted(False, torch.device("cpu")) is False
    assert winograd.wanted(True, torch.device("cuda")) is False
    assert winograd.wanted(True, torch.device("cpu")) is winograd.available()
    speedup = winograd.cpu_speedup(torch.get_num_threads())
    assert winograd.wanted("auto", torch.device("cpu")) == (winograd.available() and speedup >= winograd.MIN_SPEEDUP)
    with pytest.raises(GeneratorUnavailable, match=r"winograd.*'auto', true, false"):
        parse_settings({"winograd": "fast"})


@needs_nnpack
def test_doorways_render_with_winograd_keeps_the_picture(tmp_path):
    # 128x128: the tiny decoder's last level runs at 128x128 px, where Winograd is used; float32 only
    images, decoders = [], []
    for i, wino in enumerate((True, False)):
        ctx = tiny_ctx(tmp_path / str(i))
        gen = build("vqgan_clip", dict(TINY_SETTINGS, steps=3, winograd=wino), ctx)
        res = gen.render(request(width=128, height=128), ctx)
        images.append(np.asarray(res.image).astype(int))
        dec = gen._vqgan("tiny")[0].decoder
        decoders.append(sum(isinstance(m, winograd.WinogradConv2d) for m in dec.modules()))
    assert decoders[0] > 0 and decoders[1] == 0
    d = np.abs(images[0] - images[1])
    assert d.max() <= 3 and d.mean() < 0.2, (d.max(), d.mean())


@needs_nnpack
def test_under_bfloat16_the_decoder_stays_channels_last_without_winograd(tmp_path):
    ctx = tiny_ctx(tmp_path, dtype=torch.bfloat16)
    gen = build("vqgan_clip", dict(TINY_SETTINGS, steps=1, winograd=True), ctx)
    gen.render(request(width=128, height=128), ctx)
    dec = gen._vqgan("tiny")[0].decoder
    assert not any(isinstance(m, winograd.WinogradConv2d) for m in dec.modules())
    assert dec.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
