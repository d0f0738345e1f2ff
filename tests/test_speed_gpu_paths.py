"""The GPU-only precision paths, run on the CPU for shapes, dtypes and finiteness (speed is the benchmarks')."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from renderer.vqgan_clip.clip_guidance import load_clip
from renderer.vqgan_clip.vqgan import VQGAN, tiny_config
from tests.stylegan_helpers import tiny_sg2, ws_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_doorways  # noqa: E402


def test_doorways_float16_step_with_loss_scaling(tmp_path: Path) -> None:
    # CUDA without bfloat16 runs float16 autocast, which needs a GradScaler; the benchmark's step has one.
    torch.manual_seed(0)
    vq = VQGAN(tiny_config()).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    clip = load_clip("tiny", tmp_path, torch.device("cpu"))
    v = bench_doorways.Variant(vq, clip, 32, 4, True, torch.device("cpu"), amp=torch.float16)
    assert v.scaler is not None
    z0 = v.z.detach().clone()
    v.step()
    v.floor()
    assert v.z.dtype == torch.float32 and torch.isfinite(v.z).all()
    assert not torch.equal(v.z, z0)  # the scaled gradient was unscaled and applied


def test_sg2_float16_blocks_keep_shapes_and_stay_finite() -> None:
    # num_fp16_res blocks run in float16 on CUDA; the same code on the CPU, block by block.
    net = tiny_sg2(res=32, num_fp16_res=2).eval().requires_grad_(False)
    ws = ws_for(net, n=2)
    x = img = None
    i = 0
    with torch.no_grad():
        for res in net.block_resolutions:
            block = getattr(net, f"b{res}")
            x, img = block(x, img, ws[:, i:i + block.num_conv + 1], "const", None, True, torch.channels_last)
            assert x.dtype == (torch.float16 if block.use_fp16 else torch.float32)
            assert img.dtype == torch.float32 and img.shape[-1] == res
            i += block.num_conv
    assert torch.isfinite(img).all()
    assert (img - net(ws)).abs().max() < 0.05 * net(ws).abs().max() + 1e-2
