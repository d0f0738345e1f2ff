"""Device choice, autocast dtype and seeding (renderer/device.py)."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from renderer.device import (
    DeviceUnavailable,
    autocast,
    autocast_dtype,
    choose_device,
    describe,
    seed_everything,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


def test_auto_picks_cuda_only_when_available():
    dev = choose_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device() == dev


def test_cpu_is_always_available():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(" CPU ") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("pref", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_error(pref):
    with pytest.raises(DeviceUnavailable, match=r"CUDA is not available.*\"cpu\""):
        choose_device(pref)


@pytest.mark.parametrize("pref", ["tpu", "gpu", "cuda:x", "", "mps"])
def test_unknown_device_names_the_allowed_values(pref):
    with pytest.raises(ValueError, match=r"allowed values: auto, cpu, cuda, cuda:N"):
        choose_device(pref)


def test_non_string_device_is_rejected():
    with pytest.raises(ValueError, match="device must be a string"):
        choose_device(0)  # type: ignore[arg-type]


def test_cpu_autocast_dtype_is_bfloat16():
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype("cpu") == torch.bfloat16


def test_cpu_autocast_runs_matmul_in_bfloat16_and_stays_finite():
    dev = torch.device("cpu")
    a = torch.randn(32, 48)
    b = torch.randn(48, 16)
    with autocast(dev, autocast_dtype(dev)):
        c = a @ b
    assert c.dtype == torch.bfloat16
    assert torch.isfinite(c.float()).all()
    assert torch.allclose(c.float(), a @ b, rtol=0.05, atol=0.3)


def test_autocast_disabled_or_float32_is_full_precision():
    dev = torch.device("cpu")
    a = torch.randn(8, 8)
    with autocast(dev, torch.bfloat16, enabled=False):
        assert (a @ a).dtype == torch.float32
    with autocast(dev, torch.float32):
        assert (a @ a).dtype == torch.float32


def test_autocast_rejects_integer_dtype():
    with pytest.raises(ValueError, match="autocast dtype"):
        autocast(torch.device("cpu"), torch.int8)


def test_describe_cpu_counts_threads():
    text = describe(torch.device("cpu"))
    assert re.fullmatch(r"cpu \(\d+ threads\)", text)
    assert str(torch.get_num_threads()) in text


def test_seed_everything_makes_every_generator_repeat():
    g1 = seed_everything(1234)
    first = (torch.randn(4, generator=g1), torch.randn(4), np.random.rand(3), random.random())
    g2 = seed_everything(1234)
    second = (torch.randn(4, generator=g2), torch.randn(4), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    assert np.array_equal(first[2], second[2])
    assert first[3] == second[3]
    g3 = seed_everything(1235)
    assert not torch.equal(torch.randn(4, generator=g3), first[0])


def test_seed_everything_returns_a_cpu_generator_and_accepts_large_seeds():
    gen = seed_everything(2**40 + 7)
    assert gen.device == torch.device("cpu")
    assert gen.initial_seed() == 2**40 + 7


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "7", True, None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed must be"):
        seed_everything(bad)  # type: ignore[arg-type]


@needs_cuda
def test_cuda_choice_description_and_autocast():
    dev = choose_device("cuda")
    assert dev.type == "cuda"
    assert "GiB" in describe(dev)
    dtype = autocast_dtype(dev)
    assert dtype in (torch.bfloat16, torch.float16)
    a = torch.randn(16, 16, device=dev)
    with autocast(dev, dtype):
        assert (a @ a).dtype == dtype


@needs_cuda
def test_cuda_index_out_of_range_is_a_clear_error():
    with pytest.raises(DeviceUnavailable, match="CUDA device"):
        choose_device(f"cuda:{torch.cuda.device_count()}")


def test_render_dtype_takes_explicit_precisions_and_names_bad_ones():
    from renderer.device import render_dtype

    assert render_dtype("cpu", "float32") == torch.float32
    assert render_dtype("cpu", "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, float16; got 'half'"):
        render_dtype("cpu", "half")


def test_auto_precision_on_the_cpu_follows_the_measured_speed():
    # The measurement is real: bfloat16 only where it pays on this machine, float32 elsewhere.
    from renderer.device import cpu_bfloat16_speedup, render_dtype

    speedup = cpu_bfloat16_speedup(torch.get_num_threads())
    assert 0.05 < speedup < 20
    assert render_dtype("cpu") == (torch.bfloat16 if speedup >= 1.15 else torch.float32)


def test_show_config_precision_is_checked(tmp_path):
    from exhibits.show import ConfigError, load_show

    good = tmp_path / "good.toml"
    good.write_text('[show]\nprecision = "float32"\n')
    assert load_show(good).precision == "float32"
    bad = tmp_path / "bad.toml"
    bad.write_text('[show]\nprecision = "fp8"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*show\.precision.*auto, float32, bfloat16 or float16.*'fp8'"):
        load_show(bad)
