"""Every checkpoint loader refuses a bad file with the project's CheckpointError naming the file (empty, truncated,
refused by the safe loader, random bytes), and in the worker one bad file turns off only its own exhibit."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from renderer.base import CheckpointError
from tests.stylegan_helpers import stylegan_exhibit_toml, tiny_sg2, write_nvlabs_pkl, write_rosinality_pt


class Refused:  # a global that no safe loader may import
    def __reduce__(self):
        return (os.getcwd, ())


def _variants(good: Path, tmp: Path, suffix: str) -> dict[str, Path]:
    data = good.read_bytes()
    out = {}
    for name, content in (("empty", b""), ("truncated", data[: len(data) // 2]), ("header-only", data[:40]),
                          ("random", bytes([0x80]) + random.Random(3).randbytes(5000))):
        p = tmp / f"{name}{suffix}"
        p.write_bytes(content)
        out[name] = p
    return out


def _refused_torch_file(path: Path, payload: dict) -> Path:
    torch.save({**payload, "extra": Refused()}, path)
    return path


def test_stylegan_loader_refuses_bad_files_of_every_format(tmp_path):
    from renderer.stylegan.loaders import load_synthesis

    net = tiny_sg2()
    bad: dict[str, Path] = {}
    ros = write_rosinality_pt(net, tmp_path / "good.pt")
    bad |= {f"pt-{k}": v for k, v in _variants(ros, tmp_path, ".pt").items()}
    bad["pt-refused"] = _refused_torch_file(tmp_path / "refused.pt", torch.load(ros, weights_only=False))
    legacy = tmp_path / "legacy.pt"
    torch.save({"g_ema": {}, "x": Refused()}, legacy, _use_new_zipfile_serialization=False)
    bad["pt-legacy-refused"] = legacy
    pkl = write_nvlabs_pkl(net, tmp_path / "good.pkl")
    bad |= {f"pkl-{k}": v for k, v in _variants(pkl, tmp_path, ".pkl").items()}
    st = tmp_path / "x.safetensors"
    st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    bad["safetensors-damaged"] = st
    for what, path in bad.items():
        with pytest.raises(CheckpointError) as err:
            load_synthesis(path)
        assert str(path) in str(err.value), (what, err.value)


def test_vqgan_loader_refuses_bad_files(tmp_path):
    from renderer.vqgan_clip.vqgan import VQGAN, read_lightning_state_dict, save_lightning_checkpoint, tiny_config

    # (not tests.vqgan_helpers.write_tiny_vqgan: its stand-in Lightning module would leak into a later real import)
    good = save_lightning_checkpoint(VQGAN(tiny_config()).eval(), tmp_path / "good.ckpt", {})
    for what, path in _variants(good, tmp_path, ".ckpt").items():
        with pytest.raises(CheckpointError) as err:
            read_lightning_state_dict(path)
        assert str(path) in str(err.value), what


def test_clip_loader_refuses_bad_files(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    from renderer.vqgan_clip.clip_guidance import TINY_NAME, load_clip, register_tiny_config

    register_tiny_config()
    sd = {k: v.contiguous() for k, v in open_clip.create_model(TINY_NAME, pretrained=None).state_dict().items()}
    good_pt = tmp_path / "good.pt"
    torch.save(sd, good_pt)
    good_st = tmp_path / "good.safetensors"
    save_file(sd, str(good_st))
    for d in ("p", "s"):
        (tmp_path / d).mkdir()
    cases = {f"pt-{k}": v for k, v in _variants(good_pt, tmp_path / "p", ".pt").items()}
    cases |= {f"st-{k}": v for k, v in _variants(good_st, tmp_path / "s", ".safetensors").items()}
    (tmp_path / "r").mkdir()
    cases["pt-refused"] = _refused_torch_file(tmp_path / "r" / "x.pt", sd)
    cases["pt-wrong-shapes"] = tmp_path / "w" / "x.pt"
    (tmp_path / "w").mkdir()
    torch.save({k: torch.zeros(1) for k in sd}, cases["pt-wrong-shapes"])
    for what, src in cases.items():
        d = tmp_path / f"weights-{what}"
        d.mkdir()
        dest = d / f"open_clip_{TINY_NAME}-mine{src.suffix}"
        dest.write_bytes(src.read_bytes())
        with pytest.raises(CheckpointError) as err:
            load_clip(f"{TINY_NAME}:mine", d, torch.device("cpu"))
        assert str(dest) in str(err.value), (what, err.value)


BAD_CLIP_DOORWAYS = """title = "Doorways with a bad CLIP file"
[canvas]
width = 32
height = 32
[generator]
name = "vqgan_clip"
vqgan = "tiny"
clip_models = ["{clip}"]
steps = 2
cutouts = 2
"""


def test_one_bad_checkpoint_turns_off_only_its_exhibit(tmp_path, monkeypatch):
    from exhibits.show import ShowConfig
    from exhibits.store import Store
    from renderer.vqgan_clip.clip_guidance import TINY_NAME, register_tiny_config
    from renderer.worker import Worker

    register_tiny_config()
    weights, exdir = tmp_path / "weights", tmp_path / "ex"
    weights.mkdir()
    exdir.mkdir()
    net = tiny_sg2()
    ros = write_rosinality_pt(net, tmp_path / "good.pt")
    bad_pt = weights / "bad-rosinality.pt"
    _refused_torch_file(bad_pt, torch.load(ros, weights_only=False))
    empty_pkl = weights / "empty.pkl"
    empty_pkl.write_bytes(b"")
    (weights / f"open_clip_{TINY_NAME}-broken.pt").write_bytes(b"PK\x03\x04 truncated")
    (exdir / "bad-ros.toml").write_text(stylegan_exhibit_toml(bad_pt, 16, (0.5, 1.0), title="bad ros", series="x"))
    (exdir / "empty-pkl.toml").write_text(stylegan_exhibit_toml(empty_pkl, 16, (0.5, 1.0), title="empty", series="x"))
    (exdir / "bad-clip.toml").write_text(BAD_CLIP_DOORWAYS.format(clip=f"{TINY_NAME}:broken"))
    cfg = ShowConfig(data_dir=tmp_path / "d", weights_dir=weights, exhibit_dirs=(exdir,), device="cpu",
                     exhibits=("bad-ros", "empty-pkl", "bad-clip", "demo"))
    store = Store(cfg.data_dir)
    w = Worker(cfg, store, top_up=False, poll=0.01)
    w.setup()
    assert w.runnable() == ["demo"]
    assert str(bad_pt) in w._unavailable["bad-ros"] and str(empty_pkl) in w._unavailable["empty-pkl"]
    assert f"open_clip_{TINY_NAME}-broken.pt" in w._unavailable["bad-clip"]
    job = store.submit("demo", source="visitor", prompt_text="still made")
    w.run(max_jobs=1)
    assert store.get_job(job.id).status == "done"
    available = store.get_setting("exhibits_available")
    assert available["demo"] == "ok" and "bad-rosinality.pt" in available["bad-ros"]
