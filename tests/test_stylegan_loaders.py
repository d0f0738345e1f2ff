"""Every checkpoint format round-trips through our loaders; bad and malicious files are refused."""
from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch

from renderer.stylegan.loaders import load_synthesis
from renderer.stylegan.unpickle import CheckpointError, load_legacy_storage, load_nvlabs_pickle
from tests.stylegan_helpers import (
    tiny_sg1, tiny_sg2, tiny_sg3, write_nvlabs_pkl, write_rosinality_pt, write_tf_pkl, ws_for,
)

CASES = {
    "sg2-ada": (lambda: tiny_sg2(num_fp16_res=2), write_nvlabs_pkl, "stylegan2", "nvlabs", ".pkl"),
    "sg3-t": (lambda: tiny_sg3(), write_nvlabs_pkl, "stylegan3", "nvlabs", ".pkl"),
    "sg3-r": (lambda: tiny_sg3(radial=True), write_nvlabs_pkl, "stylegan3", "nvlabs", ".pkl"),
    "sg1-tf": (lambda: tiny_sg1(res=32, fused_scale=True), write_tf_pkl, "stylegan1", "tf", ".pkl"),
    "sg2-tf": (lambda: tiny_sg2(res=32), write_tf_pkl, "stylegan2", "tf", ".pkl"),
    "sg2-rosinality": (lambda: tiny_sg2(), write_rosinality_pt, "stylegan2", "rosinality", ".pt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_format_round_trip_gives_identical_images(case: str, tmp_path: Path) -> None:
    make, write, family, fmt, suffix = CASES[case]
    net = make()
    path = write(net, tmp_path / f"model{suffix}")
    loaded = load_synthesis(path)
    assert (loaded.family, loaded.source_format) == (family, fmt)
    assert (loaded.net.num_ws, loaded.net.w_dim, loaded.net.img_resolution) == (net.num_ws, net.w_dim, net.img_resolution)
    ws = ws_for(net, n=2)
    assert torch.equal(loaded.net(ws), net(ws))
    assert torch.equal(loaded.net.w_avg, net.w_avg)
    assert len(loaded.sha256) == 64
    assert not path.with_suffix(".executed").exists()  # the pickled module_src never ran


def test_tf_variables_with_scoped_names_load(tmp_path: Path) -> None:
    net = tiny_sg1()
    loaded = load_synthesis(write_tf_pkl(net, tmp_path / "scoped.pkl", scoped_names=True))
    ws = ws_for(net)
    assert torch.equal(loaded.net(ws), net(ws))


def test_nvlabs_pickle_names_the_real_globals(tmp_path: Path) -> None:
    path = write_nvlabs_pkl(tiny_sg2(), tmp_path / "g.pkl")
    text = io.StringIO()
    pickletools.dis(path.read_bytes(), out=text)
    dis = text.getvalue()
    for name in ("torch_utils.persistence _reconstruct_persistent_obj", "torch._utils _rebuild_tensor_v2",
                 "torch.storage _load_from_bytes", "collections OrderedDict"):
        assert name in dis


def test_cache_is_written_and_later_starts_read_no_pickle(tmp_path: Path) -> None:
    net = tiny_sg3()
    path = write_nvlabs_pkl(net, tmp_path / "sg3.pkl")
    cache = tmp_path / "cache"
    first = load_synthesis(path, cache_dir=cache)
    written = sorted(p.suffix for p in cache.iterdir())
    assert written == [".json", ".safetensors"]
    # Replace the pickle with garbage of the same size and mtime: only the cache can still load.
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = load_synthesis(path, cache_dir=cache)
    ws = ws_for(net)
    assert torch.equal(second.net(ws), net(ws))
    assert second.sha256 == first.sha256 and second.family == "stylegan3"
    # A changed file (new mtime) is not served from the stale cache.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(CheckpointError):
        load_synthesis(path, cache_dir=cache)


def test_safetensors_pair_loads_directly(tmp_path: Path) -> None:
    net = tiny_sg1()
    path = write_tf_pkl(net, tmp_path / "sg1.pkl")
    load_synthesis(path, cache_dir=tmp_path / "c")
    st = next((tmp_path / "c").glob("*.safetensors"))
    loaded = load_synthesis(st)
    assert loaded.source_format == "cache"
    ws = ws_for(net)
    assert torch.equal(loaded.net(ws), net(ws))
    st.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="config"):
        load_synthesis(st)


# --------------------------------------------------------------------------- refusals


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import builtins
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("payload", [_System, _Exec], ids=["os.system", "builtins.exec"])
def test_malicious_pickle_is_refused_and_nothing_runs(payload, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(CheckpointError) as err:
        load_synthesis(path)
    assert str(path) in str(err.value)
    assert ("posix.system" in str(err.value) or "os.system" in str(err.value)
            or "builtins.exec" in str(err.value))
    assert isinstance(err.value, ValueError)
    assert not marker.exists()


def test_malicious_object_hidden_inside_a_valid_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = write_nvlabs_pkl(tiny_sg2(), tmp_path / "ok.pkl")
    data = {"G_ema": None, "training_set_kwargs": {"hook": _System(marker)}}
    path.write_bytes(pickle.dumps(data, protocol=3))
    with pytest.raises(CheckpointError, match="system"):
        load_synthesis(path)
    assert not marker.exists()


def test_malicious_embedded_storage_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = pickle.dumps(_System(marker), protocol=2)
    with pytest.raises(CheckpointError):
        load_legacy_storage(evil, "x.pkl")
    # a real torch.save legacy stream with a malicious payload after the header
    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    pickle.dump(_Exec(marker), buf, protocol=2)
    with pytest.raises(CheckpointError, match="exec"):
        load_legacy_storage(buf.getvalue(), "x.pkl")
    assert not marker.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path: Path) -> None:
    path = write_nvlabs_pkl(tiny_sg2(), tmp_path / "cut.pkl")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pkl"):
        load_synthesis(path)


def test_truncated_rosinality_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = write_rosinality_pt(tiny_sg2(), tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_synthesis(path)


def test_files_that_are_not_checkpoints_are_refused(tmp_path: Path) -> None:
    png = tmp_path / "image.pkl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="not a StyleGAN checkpoint"):
        load_synthesis(png)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="G_ema"):
        load_synthesis(other)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(CheckpointError, match="g_ema"):
        load_synthesis(plain)
    with pytest.raises(CheckpointError, match="not found"):
        load_synthesis(tmp_path / "missing.pkl")


def test_mismatched_parameters_are_named(tmp_path: Path) -> None:
    net = tiny_sg2()
    path = write_rosinality_pt(net, tmp_path / "bad.pt")
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, weights_only=True)
    ckpt["g_ema"]["convs.1.conv.weight"] = torch.zeros(1, 16, 9, 3, 3)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"b8\.conv1\.weight has shape"):
        load_synthesis(path)


def test_numpy_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"G_ema": np.array([object()], dtype=object)}, protocol=2))
    with pytest.raises(CheckpointError):
        load_synthesis(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_nvlabs_pickle_loads_under_every_binary_protocol(protocol: int, tmp_path: Path) -> None:
    # Python 3.14 pickles with protocol 5 by default: numpy arrays then arrive through
    # numpy._core.numeric._frombuffer over in-band bytes.
    net = tiny_sg3()
    path = write_nvlabs_pkl(net, tmp_path / f"p{protocol}.pkl", protocol=protocol)
    text = io.StringIO()
    pickletools.dis(path.read_bytes(), out=text)
    assert ("_frombuffer" in text.getvalue()) == (protocol == 5)
    loaded = load_synthesis(path)
    ws = ws_for(net)
    assert torch.equal(loaded.net(ws), net(ws))


def test_protocol5_numpy_arrays_round_trip_and_bad_ones_are_refused() -> None:
    arrays = {"c": np.arange(6, dtype=np.float32).reshape(2, 3), "f": np.asfortranarray(np.ones((3, 2), np.int64)),
              "t": np.arange(24, dtype=np.float64).reshape(2, 3, 4).transpose(2, 0, 1)}
    back = load_nvlabs_pickle(io.BytesIO(pickle.dumps(arrays, protocol=5)), "arrays.pkl")
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value)
    with pytest.raises(CheckpointError):
        load_nvlabs_pickle(io.BytesIO(pickle.dumps(np.array([object()], dtype=object), protocol=5)), "bad.pkl")
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's own protocol-5 reconstructor

    class Short:
        def __reduce__(self) -> tuple:
            return frombuffer, (b"\0" * 12, np.dtype(np.float32), (2, 2), "C")  # 12 bytes for 16 needed

    buf = io.BytesIO(pickle.dumps({"a": Short()}, protocol=5))
    with pytest.raises(CheckpointError, match="does not match its 12 bytes"):
        load_nvlabs_pickle(buf, "short.pkl")
