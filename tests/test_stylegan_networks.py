"""The synthesis networks against independent reference computations written here with plain tensor ops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from renderer.stylegan.ops import design_lowpass_filter, firwin_lowpass, upfirdn2d
from renderer.stylegan.sg1 import SG1Synthesis, sg1_channels
from renderer.stylegan.sg2 import SG2Synthesis, sg2_channels
from renderer.stylegan.sg3 import SG3Synthesis
from tests.stylegan_helpers import sg1_tf_variables, tiny_sg1, tiny_sg2, tiny_sg3, ws_for

SQRT2 = math.sqrt(2)


# --------------------------------------------------------------------------- StyleGAN2: a per-sample reference


def _fir4() -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    f = torch.outer(f, f)
    return f / f.sum()


def _depthwise(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    c = x.shape[0]
    return F.conv2d(x[None], f.flip(0, 1)[None, None].expand(c, 1, *f.shape), groups=c)[0]


def _zero_insert(x: torch.Tensor, trailing: bool) -> torch.Tensor:
    c, h, w = x.shape
    out = x.new_zeros(c, 2 * h - (0 if trailing else 1), 2 * w - (0 if trailing else 1))
    out[:, ::2, ::2] = x
    return out


def reference_sg2(net: SG2Synthesis, ws: torch.Tensor) -> torch.Tensor:
    """StyleGAN2 'skip' synthesis one sample at a time, float64, from the state dict by name."""
    sd = {k: v.double() for k, v in net.state_dict().items()}
    fir = _fir4() * 4
    images = []
    for w in ws.double():
        def styles(prefix: str, i: int) -> torch.Tensor:
            a = sd[f"{prefix}.affine.weight"]
            return a @ w[i] / math.sqrt(a.shape[1]) + sd[f"{prefix}.affine.bias"]

        def layer(x: torch.Tensor, prefix: str, i: int, up: bool) -> torch.Tensor:
            wm = sd[f"{prefix}.weight"] * styles(prefix, i)[None, :, None, None]
            wm = wm / (wm.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
            if up:  # transposed conv = zero insertion + true convolution, then the [1,3,3,1] FIR
                y = F.conv2d(F.pad(_zero_insert(x, False), [2, 2, 2, 2])[None], wm.flip(2, 3))[0]
                y = _depthwise(F.pad(y, [1, 1, 1, 1]), fir)
            else:
                y = F.conv2d(x[None], wm, padding=1)[0]
            y = y + sd[f"{prefix}.noise_const"] * sd[f"{prefix}.noise_strength"]
            y = y + sd[f"{prefix}.bias"][:, None, None]
            return F.leaky_relu(y, 0.2) * SQRT2

        def torgb(x: torch.Tensor, prefix: str, i: int) -> torch.Tensor:
            wt = sd[f"{prefix}.weight"]
            s = styles(prefix, i) / math.sqrt(wt.shape[1])
            return F.conv2d(x[None], wt * s[None, :, None, None])[0] + sd[f"{prefix}.bias"][:, None, None]

        x = sd["b4.const"]
        x = layer(x, "b4.conv1", 0, False)
        img = torgb(x, "b4.torgb", 1)
        i = 1
        for res in net.block_resolutions[1:]:
            x = layer(x, f"b{res}.conv0", i, True)
            x = layer(x, f"b{res}.conv1", i + 1, False)
            img = _depthwise(F.pad(_zero_insert(img, True), [2, 1, 2, 1]), fir)
            img = img + torgb(x, f"b{res}.torgb", i + 2)
            i += 2
        images.append(img)
    return torch.stack(images).float()


def test_sg2_matches_per_sample_reference() -> None:
    net = tiny_sg2(res=32)
    ws = ws_for(net, n=3)
    ours = net(ws, noise_mode="const")
    ref = reference_sg2(net, ws)
    assert ours.shape == (3, 3, 32, 32)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), (ours - ref).abs().max()


def test_sg2_grouped_batch_path_matches_single_samples() -> None:
    net = tiny_sg2()
    ws = ws_for(net, n=3)
    grouped = net.synthesize(ws, "const", None)  # one grouped conv for the whole batch (the CUDA path)
    singles = torch.cat([net(ws[i:i + 1]) for i in range(3)])
    assert torch.allclose(grouped, singles, atol=1e-5)
    assert torch.allclose(net(ws), singles, atol=1e-5)


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_fused_and_activation_scaled_paths_agree(up: int) -> None:
    from renderer.stylegan.ops import modulated_conv2d_sg2, setup_filter

    x, w, s = torch.randn(3, 6, 8, 8), torch.randn(5, 6, 3, 3), torch.randn(3, 6)
    f = setup_filter([1, 3, 3, 1])
    for demod in (True, False):
        a = modulated_conv2d_sg2(x, w, s, demodulate=demod, up=up, padding=1, resample_filter=f, fused=True)
        b = modulated_conv2d_sg2(x, w, s, demodulate=demod, up=up, padding=1, resample_filter=f, fused=False)
        assert a.shape == (3, 5, 8 * up, 8 * up) and torch.allclose(a, b, atol=1e-4)


def test_sg2_num_ws_follows_resolution() -> None:
    assert [SG2Synthesis(8, r, 3, sg2_channels(r, 4096, 4)).num_ws for r in (16, 64, 256)] == [6, 10, 14]
    assert SG2Synthesis(8, 1024, 3, sg2_channels(1024, 4096, 4)).num_ws == 18
    assert SG2Synthesis(8, 512, 3, sg2_channels(512, 4096, 4)).num_ws == 16


def test_sg2_noise_modes() -> None:
    net = tiny_sg2()
    ws = ws_for(net, n=1)
    const, none = net(ws, noise_mode="const"), net(ws, noise_mode="none")
    r1 = net(ws, noise_mode="random", generator=torch.Generator().manual_seed(5))
    r2 = net(ws, noise_mode="random", generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(const, none)
    assert torch.equal(r1, r2) and not torch.allclose(r1, const)
    with pytest.raises(ValueError, match="noise_mode"):
        net(ws, noise_mode="loud")
    with pytest.raises(ValueError, match=r"\[N, 6, 16\]"):
        net(torch.zeros(1, 5, 16))


# --------------------------------------------------------------------------- StyleGAN3: one layer by hand


def _ref_filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp):
    """Zero insertion, 2-D filters (outer products), full-resolution activation, then stride slicing."""
    x = x.double() + b.double().reshape(1, -1, 1, 1)
    n, c, h, w = x.shape
    xu = x.new_zeros(n, c, h * up, w * up)
    xu[:, :, ::up, ::up] = x
    x = F.pad(xu, [pad[0], pad[1], pad[2], pad[3]])
    if fu is not None:
        f2 = torch.outer(fu.double(), fu.double()) * up * up
        x = F.conv2d(x, f2.flip(0, 1)[None, None].expand(c, 1, *f2.shape), groups=c)
    x = (F.leaky_relu(x, slope) * gain).clamp(-clamp, clamp)
    if fd is not None:
        f2 = fd.double() if fd.ndim == 2 else torch.outer(fd.double(), fd.double())
        x = F.conv2d(x, f2.flip(0, 1)[None, None].expand(c, 1, *f2.shape), groups=c)
    return x[:, :, ::down, ::down]


@pytest.mark.parametrize("radial", [False, True])
def test_sg3_layer_matches_hand_computation(radial: bool) -> None:
    net = tiny_sg3(radial=radial)
    ws = ws_for(net, n=2)
    x = net.input(ws[:, 0])
    for idx, name in enumerate(net.layer_names[:-1]):
        layer = getattr(net, name)
        w = ws[:, idx + 1].double()
        a, b = layer.affine.weight.double(), layer.affine.bias.double()
        s = w @ a.t() / math.sqrt(a.shape[1]) + b
        wt = layer.weight.double()
        wt = wt / wt.square().mean(dim=[1, 2, 3], keepdim=True).sqrt()
        s = s / s.square().mean().sqrt()
        outs = []
        for i in range(x.shape[0]):
            wm = wt * s[i][None, :, None, None]
            wm = wm / (wm.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
            wm = wm / layer.magnitude_ema.double().sqrt()
            outs.append(F.conv2d(x[i:i + 1].double(), wm, padding=layer.conv_kernel - 1))
        y = _ref_filtered_lrelu(torch.cat(outs), layer.up_filter, layer.down_filter, layer.bias, layer.up_factor,
                                layer.down_factor, layer.padding, SQRT2, 0.2, 256)
        ours = layer(x, ws[:, idx + 1], fp16=False)
        assert ours.shape == y.shape == (2, layer.out_channels, layer.out_size, layer.out_size)
        assert torch.allclose(ours.double(), y, atol=1e-4), (name, (ours.double() - y).abs().max())
        x = ours


def test_sg3_input_affine_rotates_fourier_features() -> None:
    net = tiny_sg3()
    inp = net.input
    with torch.no_grad():
        inp.affine.weight.zero_()
        inp.affine.bias.copy_(torch.tensor([0.0, 2.0, 0.0, 0.0]))  # 90 degree rotation, no translation
    w = torch.zeros(1, net.w_dim)
    x = inp(w)
    # By hand: features sin(2*pi*(grid . R freqs + phase)) mixed by weight / sqrt(C).
    theta = torch.tensor([[0.5 * inp.size / inp.sampling_rate, 0, 0], [0, 0.5 * inp.size / inp.sampling_rate, 0]])
    grid = F.affine_grid(theta[None], [1, 1, inp.size, inp.size], align_corners=False)[0]
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    freqs = inp.freqs @ rot
    amp = (1 - (freqs.norm(dim=1) - inp.bandwidth) / (inp.sampling_rate / 2 - inp.bandwidth)).clamp(0, 1)
    feat = torch.sin(2 * math.pi * (grid @ freqs.t() + inp.phases)) * amp
    ref = (feat @ (inp.weight / math.sqrt(inp.channels)).t()).permute(2, 0, 1)
    assert torch.allclose(x[0], ref, atol=1e-5)


def test_sg3_num_ws_and_layer_names() -> None:
    net = SG3Synthesis(8, 64, 3, channel_base=512, channel_max=16)
    assert net.num_ws == 16 and len(net.layer_names) == 15
    assert net.layer_names[-1] == "L14_64_3"


def test_firwin_is_a_unit_gain_lowpass_with_half_gain_at_cutoff() -> None:
    taps = firwin_lowpass(24, cutoff=8.0, width=6.0, fs=64.0)
    assert taps.sum() == pytest.approx(1.0) and np.allclose(taps, taps[::-1])
    freq = np.arange(24) - 11.5
    response = abs(np.sum(taps * np.exp(-2j * np.pi * freq * 8.0 / 64.0)))
    assert response == pytest.approx(0.5, abs=0.05)
    radial = design_lowpass_filter(12, 4.0, 3.0, 32.0, radial=True)
    assert radial.shape == (12, 12) and float(radial.sum()) == pytest.approx(1.0, abs=1e-5)


def test_separable_upfirdn_equals_2d_filter() -> None:
    x = torch.randn(2, 3, 9, 9)
    f = torch.tensor([0.1, 0.4, 0.4, 0.1])
    a = upfirdn2d(x, f, up=2, down=1, padding=[2, 1, 3, 0], gain=4)
    b = upfirdn2d(x, torch.outer(f, f), up=2, down=1, padding=[2, 1, 3, 0], gain=4)
    assert torch.allclose(a, b, atol=1e-6)
    c = upfirdn2d(x, f, down=2, padding=1)
    d = upfirdn2d(x, torch.outer(f, f), down=2, padding=1)
    assert torch.allclose(c, d, atol=1e-6)


# --------------------------------------------------------------------------- StyleGAN1: AdaIN by hand from TF arrays


def test_sg1_epilogue_matches_tf_semantics() -> None:
    net = tiny_sg1()
    tfv = dict(sg1_tf_variables(net))
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    w = torch.randn(2, net.w_dim, dtype=torch.float64)
    scope = "8x8/Conv1"
    # TF: x + noise * weight[c]; + bias; lrelu; instance norm; style = dense(w) (gain 1, wscale); x*(ys+1)+yb
    noise = torch.from_numpy(tfv["noise3"]).double()
    y = x + noise * torch.from_numpy(tfv[f"{scope}/Noise/weight"]).double().reshape(1, -1, 1, 1)
    y = F.leaky_relu(y + torch.from_numpy(tfv[f"{scope}/bias"]).double().reshape(1, -1, 1, 1), 0.2)
    y = y - y.mean(dim=[2, 3], keepdim=True)
    y = y / (y.square().mean(dim=[2, 3], keepdim=True) + 1e-8).sqrt()
    style = w @ torch.from_numpy(tfv[f"{scope}/StyleMod/weight"]).double() / math.sqrt(net.w_dim)
    style = (style + torch.from_numpy(tfv[f"{scope}/StyleMod/bias"]).double()).reshape(2, 2, 8, 1, 1)
    ref = y * (style[:, 0] + 1) + style[:, 1]
    ours = net.double().epilogues[3](x, w, "const", None)
    assert torch.allclose(ours, ref, atol=1e-9)


def test_sg1_fused_upscale_conv_is_nearest_upscale_with_flipped_kernel() -> None:
    net = tiny_sg1(res=16)
    x = torch.randn(2, 8, 8, 8)
    fused = net._up_conv(3, x, fused=True)
    w = net.convs[3].flip(2, 3) * net.conv_gains[3]
    plain = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_sg1_lod_blends_lower_resolution_rgb() -> None:
    net = tiny_sg1(res=16)
    ws = ws_for(net, n=1)
    full = net(ws)
    with torch.no_grad():
        net.lod.fill_(1.0)
    coarse = net(ws)
    with torch.no_grad():
        net.lod.fill_(0.0)
    assert not torch.allclose(full, coarse)
    # lod = 1: the 8x8 image, nearest-upscaled, replaces the 16x16 one
    assert torch.allclose(coarse[0, :, ::2, ::2], coarse[0, :, 1::2, 1::2])


def test_sg1_num_ws_and_channels() -> None:
    assert sg1_channels(1024) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    assert [SG1Synthesis(8, r, 3, {k: 4 for k in sg1_channels(r)}).num_ws for r in (256, 512, 1024)] == [14, 16, 18]


# --------------------------------------------------------------------------- every family: bf16 autocast, extreme sigma


@pytest.mark.parametrize("make", [tiny_sg1, tiny_sg2, tiny_sg3], ids=["sg1", "sg2", "sg3"])
def test_bf16_autocast_on_cpu_runs_and_stays_finite(make) -> None:
    net = make()
    ws = ws_for(net, n=2)
    ref = net(ws)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(ws)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.1 * ref.abs().mean() + 0.05


@pytest.mark.parametrize("make", [tiny_sg1, tiny_sg2, tiny_sg3], ids=["sg1", "sg2", "sg3"])
def test_extreme_sigma_stays_finite(make) -> None:
    net = make()
    out = net(ws_for(net, n=2, sigma=50.0))
    assert torch.isfinite(out).all()
