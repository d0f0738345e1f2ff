"""StyleGAN's mapping network from NVlabs, TensorFlow and rosinality files, against the official code's outputs.

``stylegan_mapping_reference.json`` holds what NVlabs' stylegan2-ada-pytorch
``MappingNetwork`` computed (CPU, float32) from the seeded tensors of
``tests.stylegan_mapping_helpers.mapping_tensors``: w for three z, and truncation.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from renderer.stylegan.loaders import load_synthesis
from renderer.stylegan.mapping import load_mapping
from renderer.stylegan.unpickle import CheckpointError
from tests.stylegan_helpers import tiny_sg1, tiny_sg2, tiny_sg3
from tests.stylegan_mapping_helpers import (mapping_tensors, reference, write_nvlabs_with_mapping,
                                            write_rosinality_with_mapping, write_tf_with_mapping)

CASES = {
    "nvlabs-sg2": lambda p: (write_nvlabs_with_mapping(tiny_sg2(), mapping_tensors(), p / "g.pkl"), "stylegan2"),
    "nvlabs-sg3": lambda p: (write_nvlabs_with_mapping(tiny_sg3(), mapping_tensors(), p / "g.pkl"), "stylegan3"),
    "tf-sg2": lambda p: (write_tf_with_mapping(tiny_sg2(), mapping_tensors(), p / "g.pkl"), "stylegan2"),
    "rosinality": lambda p: (write_rosinality_with_mapping(tiny_sg2(), mapping_tensors(), p / "g.pt"), "stylegan2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mapping_matches_the_official_code(case, tmp_path):
    path, family = CASES[case](tmp_path)
    ref = reference()
    syn = load_synthesis(path)  # the synthesis loader still reads the same file
    assert syn.family == family
    m = load_mapping(path, num_ws=syn.net.num_ws, family=family)
    z = torch.tensor(ref["z"])
    assert torch.allclose(m.map(z), torch.tensor(ref["w"]), rtol=1e-5, atol=1e-5)
    assert torch.equal(m.w_avg, mapping_tensors()["w_avg"])
    ws = m(z, truncation_psi=0.7)
    assert ws.shape == (3, syn.net.num_ws, 16)
    assert torch.allclose(ws[:, 0], torch.tensor(ref["w_trunc_psi0.7"]), rtol=1e-5, atol=1e-5)
    m8 = load_mapping(path, num_ws=8, family=family)  # the reference network broadcast to 8 layers
    assert torch.allclose(m8(z, 0.5, 4), torch.tensor(ref["w_trunc_psi0.5_cutoff4"]), rtol=1e-5, atol=1e-5)
    # and the ws it gives drive the synthesis network
    img = syn.net(m(z[:1], truncation_psi=0.7))
    assert img.shape[0] == 1 and torch.isfinite(img).all()


def test_tf_stylegan1_mapping_keeps_the_gain_in_the_weight(tmp_path):
    """StyleGAN (v1) TF G_mapping: dense with He scale sqrt(2)/sqrt(fan_in) * lrmul, bias * lrmul, then lrelu."""
    t = mapping_tensors()
    path = write_tf_with_mapping(tiny_sg1(), t, tmp_path / "g1.pkl")
    m = load_mapping(path, num_ws=load_synthesis(path).net.num_ws, family="stylegan1")
    z = np.asarray(reference()["z"], np.float64)
    x = z / np.sqrt((z ** 2).mean(axis=1, keepdims=True) + 1e-8)
    for i in range(3):
        w_tf = t[f"fc{i}.weight"].double().numpy().T  # [in, out], as stored in the TF pickle
        y = x @ (w_tf * math.sqrt(2) / math.sqrt(w_tf.shape[0]) * 0.01) + t[f"fc{i}.bias"].double().numpy() * 0.01
        x = np.where(y >= 0, y, 0.2 * y)
    assert np.allclose(m.map(torch.tensor(z, dtype=torch.float32)).double().numpy(), x, rtol=1e-4, atol=1e-5)
    assert not np.allclose(x, reference()["w"], atol=1e-2)  # really a different arithmetic from StyleGAN2's


def test_mapping_cache_is_used_and_invalidated(tmp_path):
    path, _ = CASES["nvlabs-sg2"](tmp_path)
    cache = tmp_path / "cache"
    first = load_mapping(path, num_ws=6, family="stylegan2", cache_dir=cache)
    files = list(cache.glob("*.mapping.safetensors"))
    assert len(files) == 1
    again = load_mapping(path, num_ws=6, family="stylegan2", cache_dir=cache)
    z = torch.tensor(reference()["z"])
    assert torch.equal(first(z), again(z))
    # a different checkpoint written to the same path is read afresh, not served from the stale cache
    t = mapping_tensors(seed=8)
    write_nvlabs_with_mapping(tiny_sg2(), t, path)
    os.utime(path, ns=(1, 1))
    fresh = load_mapping(path, num_ws=6, family="stylegan2", cache_dir=cache)
    assert torch.equal(fresh.w_avg, t["w_avg"])


def test_conditional_mapping_is_refused_clearly(tmp_path):
    path = write_nvlabs_with_mapping(tiny_sg2(), mapping_tensors(), tmp_path / "cond.pkl", c_dim=10)
    with pytest.raises(CheckpointError, match="conditional"):
        load_mapping(path, num_ws=6, family="stylegan2")
