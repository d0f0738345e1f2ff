"""The fast StyleGAN paths give the reference's images, and loading leaves no trace beyond the network.

Speed itself is measured in benchmarks/bench_stylegan.py; these tests hold the fast paths to the
same pictures and to what a caller may rely on.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exhibits.files import sha256_file
from renderer.stylegan.loaders import load_synthesis
from renderer.stylegan.unpickle import CheckpointError
from tests.stylegan_helpers import tiny_sg2, write_nvlabs_pkl, ws_for
from tests.test_stylegan_networks import reference_sg2


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("batch", [1, 4])
def test_sg2_fast_paths_match_the_reference(channels_last: bool, batch: int) -> None:
    net = tiny_sg2(res=32).eval().requires_grad_(False)
    net.channels_last = channels_last
    ws = ws_for(net, n=batch, sigma=1.5)
    ref = reference_sg2(net, ws)
    with torch.no_grad():
        ours = net(ws, noise_mode="const")
    assert ours.is_contiguous()
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()


def test_sg2_batch_equals_its_samples_with_random_noise() -> None:
    net = tiny_sg2(res=32).eval().requires_grad_(False)
    ws = ws_for(net, n=3)
    with torch.no_grad():
        batch = net(ws, noise_mode="none")
        singles = torch.cat([net(ws[i:i + 1], noise_mode="none") for i in range(3)])
        noisy = net(ws, noise_mode="random", generator=torch.Generator().manual_seed(1))
    assert torch.allclose(batch, singles, atol=1e-5)
    assert noisy.shape == batch.shape and torch.isfinite(noisy).all() and not torch.allclose(noisy, batch)


@pytest.mark.parametrize("split", [4, 8, 16])
def test_sg2_batch_split_into_samples_above_a_resolution_is_the_same_picture(split: int) -> None:
    # On the CPU a batch runs as one batch up to cpu_split_resolution and one sample at a time above it.
    net = tiny_sg2(res=32).eval().requires_grad_(False)
    ws = ws_for(net, n=3, sigma=1.5)
    with torch.no_grad():
        net.cpu_split_resolution = 0
        whole = {m: net(ws, noise_mode=m, generator=torch.Generator().manual_seed(7)) for m in ("const", "random")}
        net.cpu_split_resolution = split
        parts = {m: net(ws, noise_mode=m, generator=torch.Generator().manual_seed(7)) for m in ("const", "random")}
    for mode in ("const", "random"):  # random noise: the same draws as one batch makes, in the same order
        assert parts[mode].shape == whole[mode].shape and parts[mode].is_contiguous()
        assert torch.allclose(parts[mode], whole[mode], atol=2e-5), (mode, (parts[mode] - whole[mode]).abs().max())
    assert torch.allclose(parts["const"], reference_sg2(net, ws), atol=1e-4)
    ws = ws.clone().requires_grad_(True)  # gradients reach every sample's latent through the split
    net(ws).square().mean().backward()
    assert ws.grad is not None and bool((ws.grad.abs().sum(dim=(1, 2)) > 0).all())


def test_sg2_gradients_flow_through_the_fast_path() -> None:
    # Guidance by CLIP optimises the latent through the synthesis: the in-place epilogue must step aside.
    net = tiny_sg2(res=16).eval().requires_grad_(False)
    ws = ws_for(net, n=2).requires_grad_(True)
    net(ws).square().mean().backward()
    ours = ws.grad.clone()
    ws.grad = None
    reference_sg2(net, ws).square().mean().backward()
    assert torch.allclose(ours, ws.grad, atol=1e-5, rtol=1e-4)


def test_weights_changed_in_place_change_the_image() -> None:
    # Weight-only work is cached between images; writing a weight must not leave a stale cache behind.
    net = tiny_sg2(res=16).eval().requires_grad_(False)
    ws = ws_for(net, n=1)
    before = net(ws)
    with torch.no_grad():
        net.b8.conv1.weight.mul_(-0.5)
        net.b8.conv1.affine.weight.add_(0.3)
    after = net(ws)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, reference_sg2(net, ws), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_stays_close_to_float32() -> None:
    net = tiny_sg2(res=32).eval().requires_grad_(False)
    ws = ws_for(net, n=2)
    with torch.no_grad():
        ref = net(ws)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(ws).float()
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_loading_does_not_disturb_the_seeded_random_stream(tmp_path: Path) -> None:
    # A render seeds torch's generator and then loads a model; loading must not draw from that stream.
    path = write_nvlabs_pkl(tiny_sg2(), tmp_path / "g.pkl")
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    load_synthesis(path)
    assert torch.equal(torch.rand(4), expected)


def test_only_the_averaged_generator_is_decoded(tmp_path: Path) -> None:
    # Training pickles also carry D and G; a damaged tensor there does not stop the exhibit's model loading,
    # and a damaged tensor in G_ema's synthesis still fails with the file named.
    net = tiny_sg2()
    path = write_nvlabs_pkl(net, tmp_path / "g.pkl")
    data = path.read_bytes()
    marker = (4 * 3 * 3 * 3).to_bytes(8, "little")  # the writer's D is a 3->4 3x3 conv: its storage's length
    at = data.rfind(marker)
    assert at > 0
    broken = tmp_path / "broken-d.pkl"
    broken.write_bytes(data[:at] + (10 ** 6).to_bytes(8, "little") + data[at + 8:])
    loaded = load_synthesis(broken)
    ws = ws_for(net)
    assert torch.equal(loaded.net(ws), net(ws))

    w = net.b4.conv1.weight
    marker = w.numel().to_bytes(8, "little")
    at = data.find(marker)
    assert at > 0
    bad = tmp_path / "broken-g.pkl"
    bad.write_bytes(data[:at] + (10 ** 6).to_bytes(8, "little") + data[at + 8:])
    with pytest.raises(CheckpointError, match="broken-g.pkl"):
        load_synthesis(bad)


def test_background_sha256_is_the_files(tmp_path: Path) -> None:
    path = write_nvlabs_pkl(tiny_sg2(), tmp_path / "g.pkl")
    loaded = load_synthesis(path)
    assert loaded.sha256 == sha256_file(path)
    assert loaded.sha256 == loaded.sha256  # resolved once, then a plain string


_HUGE_PAGES_PROBE = r"""
import sys
from renderer.worker import prefer_huge_pages
took = prefer_huge_pages()
import torch
x = torch.ones(64 << 18)  # 64 MB, touched
with open("/proc/self/smaps_rollup") as f:
    kb = next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
print(took, kb)
"""


def test_worker_backs_large_tensors_with_huge_pages():
    """The worker asks torch for huge pages before importing it: large activations are not faulted in 4 KB at a time."""
    import os
    import subprocess
    import sys

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.exists() or "[never]" in mode.read_text() or not Path("/proc/self/smaps_rollup").exists():
        pytest.skip("no transparent huge pages on this kernel")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", _HUGE_PAGES_PROBE], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) >= 32 << 10, f"only {out[1]} kB of the 64 MB tensor on huge pages"
