"""Load StyleGAN checkpoints of every supported format into our own synthesis modules, by name.

Formats:

* ``nvlabs``: stylegan2-ada-pytorch and stylegan3 ``.pkl`` (restricted unpickler, see
  :mod:`renderer.stylegan.unpickle`);
* ``tf``: TensorFlow StyleGAN (v1) and StyleGAN2 ``.pkl`` (``dnnlib.tflib.Network`` state,
  read without TensorFlow);
* ``rosinality``: ``.pt`` files of rosinality/stylegan2-pytorch (``g_ema``, ``latent_avg``),
  read with ``torch.load(weights_only=True)``;
* ``cache``: our own ``.safetensors`` + ``.json`` pair, written after the first load of any
  of the above so later starts read no pickle at all.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from exhibits.files import sha256_file
from renderer.stylegan.common import Synthesis, weights_from_checkpoint
from renderer.stylegan.sg1 import SG1Synthesis
from renderer.stylegan.sg2 import SG2Synthesis
from renderer.stylegan.sg3 import SG3Synthesis
from renderer.stylegan.unpickle import CheckpointError, PersistentObject, TFNetwork, load_nvlabs_pickle

log = logging.getLogger(__name__)

FAMILIES: dict[str, type[Synthesis]] = {"stylegan1": SG1Synthesis, "stylegan2": SG2Synthesis, "stylegan3": SG3Synthesis}
CACHE_VERSION = 1
_IGNORED_SUFFIXES = ("resample_filter",)  # fixed [1,3,3,1] filters, rebuilt by our modules


@dataclass
class LoadedSynthesis:
    net: Synthesis
    family: str
    source_format: str  # nvlabs | tf | rosinality | cache
    digest: str | concurrent.futures.Future  # sha256 of the original checkpoint file (or its hashing, under way)
    path: Path

    @property
    def sha256(self) -> str:
        """The checkpoint's sha256; waits for the background hashing on first use."""
        if isinstance(self.digest, concurrent.futures.Future):
            try:
                self.digest = self.digest.result()
            except OSError as exc:
                raise CheckpointError(f"{self.path}: could not hash the checkpoint: {exc}") from exc
        return self.digest


_hasher: concurrent.futures.ThreadPoolExecutor | None = None


def _hash_in_background(path: Path) -> concurrent.futures.Future:
    """sha256 of ``path`` on a worker thread (hashlib and file reads release the GIL), so a first image can be
    rendered while a multi-gigabyte checkpoint is still being hashed."""
    global _hasher
    if _hasher is None:
        _hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-sha256")
    return _hasher.submit(sha256_file, path)


# --------------------------------------------------------------------------- helpers


def build(family: str, config: Mapping[str, Any]) -> Synthesis:
    """A fresh (randomly initialised) synthesis network of ``family`` from its config dict."""
    try:
        cls = FAMILIES[family]
    except KeyError:
        raise CheckpointError(f"unknown StyleGAN family {family!r}; known: {', '.join(FAMILIES)}") from None
    return cls(**dict(config))


def _as_tensor(value: Any, source: str, key: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.array(value, order="C"))
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{source}: {key} is a {type(value).__name__}, expected a tensor")
    return value.detach().to(torch.float32) if value.is_floating_point() else value.detach()


def load_state_strict(net: Synthesis, tensors: Mapping[str, Any], source: str) -> None:
    """Copy ``tensors`` into ``net`` by name; every name must match in both directions, with equal shapes."""
    own = net.state_dict()
    given = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
    missing = sorted(k for k in own if k not in given and not k.endswith(_IGNORED_SUFFIXES) and k != "w_avg")
    unexpected = sorted(k for k in given if k not in own)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: parameters do not match a {net.family} synthesis network "
            f"(missing: {', '.join(missing[:8]) or 'none'}; unexpected: {', '.join(unexpected[:8]) or 'none'})"
        )
    state = {}
    for key, value in given.items():
        t = _as_tensor(value, source, key)
        if tuple(t.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{source}: {key} has shape {list(t.shape)}, expected {list(own[key].shape)}")
        state[key] = t.to(own[key].dtype).contiguous()
    # The decoded tensors become the parameters themselves (no second copy into freshly allocated memory).
    net.load_state_dict(state, strict=False, assign=True)


def _filter_kwargs(cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    kept = {k: v for k, v in kwargs.items() if k in params}
    dropped = sorted(set(kwargs) - set(kept))
    if dropped:
        log.debug("ignoring %s kwargs not used for inference: %s", cls.__name__, dropped)
    return kept


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers, for JSON configs."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- NVlabs (PyTorch) pickles


def _sg2_config_from_tensors(t: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    res = sorted(int(m.group(1)) for k in t if (m := re.fullmatch(r"b(\d+)\.conv1\.weight", k)))
    if not res:
        raise CheckpointError(f"{source}: no b<res>.conv1.weight parameters: not a StyleGAN2 synthesis network")
    channels = {r: int(t[f"b{r}.conv1.weight"].shape[0]) for r in res}
    return dict(w_dim=int(t["b4.conv1.affine.weight"].shape[1]), img_resolution=res[-1],
                img_channels=int(t[f"b{res[-1]}.torgb.weight"].shape[0]), channels=channels,
                use_noise="b4.conv1.noise_const" in t)


def _from_nvlabs(obj: Any, source: str) -> tuple[Synthesis, str]:
    if not isinstance(obj, dict) or not isinstance(obj.get("G_ema", obj.get("G")), PersistentObject):
        raise CheckpointError(f"{source}: pickle does not hold a 'G_ema' network (keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")
    g = obj.get("G_ema") if isinstance(obj.get("G_ema"), PersistentObject) else obj["G"]
    synth = g.submodules.get("synthesis")
    if not isinstance(synth, PersistentObject):
        raise CheckpointError(f"{source}: generator {g.class_name!r} has no synthesis network")
    tensors = synth.tensors()
    kwargs = {k: _plain(v) for k, v in synth.init_kwargs.items()}
    if "input" in synth.submodules:  # StyleGAN3: Fourier-feature input
        net = SG3Synthesis(**_filter_kwargs(SG3Synthesis, kwargs))
        names = synth.state.get("layer_names")
        if names is not None and list(names) != net.layer_names:
            raise CheckpointError(f"{source}: StyleGAN3 layers {list(names)} do not match the rebuilt {net.layer_names}")
        family = "stylegan3"
    else:
        arch = kwargs.get("architecture", "skip")
        if arch != "skip":
            raise CheckpointError(f"{source}: StyleGAN2 architecture {arch!r} is not supported (only 'skip')")
        cfg = _sg2_config_from_tensors(tensors, source)
        cfg.update(num_fp16_res=int(kwargs.get("num_fp16_res", 0)), conv_clamp=kwargs.get("conv_clamp"))
        net = SG2Synthesis(**cfg)
        family = "stylegan2"
    load_state_strict(net, tensors, source)
    mapping = g.submodules.get("mapping")
    if isinstance(mapping, PersistentObject) and "w_avg" in mapping.tensors():
        with torch.no_grad():
            net.w_avg.copy_(_as_tensor(mapping.tensors()["w_avg"], source, "mapping.w_avg"))
    return net, family


# --------------------------------------------------------------------------- TensorFlow pickles


def _tf_params(net: TFNetwork) -> dict[str, np.ndarray]:
    """Every variable of ``net`` and its components, by component-prefixed name (``synthesis/4x4/Conv/weight``)."""
    out: dict[str, np.ndarray] = {}

    def recurse(prefix: str, n: TFNetwork) -> None:
        scope = f"{n.name}/"
        for name, value in n.variables:
            name = str(name)
            out[prefix + (name[len(scope):] if n.name and name.startswith(scope) else name)] = value
        for name, comp in n.components.items():
            if isinstance(comp, TFNetwork):
                recurse(f"{prefix}{name}/", comp)

    recurse("", net)
    return out


def _tf_sg2(p: dict[str, np.ndarray], kw: Mapping[str, Any], source: str) -> SG2Synthesis:
    if kw.get("architecture", "skip") != "skip" or any(k.startswith("synthesis/ToRGB_lod") for k in p):
        raise CheckpointError(f"{source}: only the 'skip' StyleGAN2 architecture is supported")
    res = sorted(int(m.group(1)) for k in p if (m := re.fullmatch(r"synthesis/(\d+)x\d+/Conv1?/weight", k)))
    channels = {r: int(p[f"synthesis/{r}x{r}/{'Conv' if r == 4 else 'Conv1'}/weight"].shape[3]) for r in res}
    top = res[-1]
    net = SG2Synthesis(w_dim=int(p["synthesis/4x4/Conv/mod_weight"].shape[0]), img_resolution=top,
                       img_channels=int(p[f"synthesis/{top}x{top}/ToRGB/weight"].shape[3]), channels=channels,
                       use_noise=any(k.startswith("synthesis/noise") for k in p))
    t: dict[str, Any] = {"b4.const": p["synthesis/4x4/Const/const"][0]}

    def layer(dst: str, src: str, noise_idx: int | None, flip: bool = False) -> None:
        w = p[f"{src}/weight"]
        if flip:
            w = w[::-1, ::-1]
        t[f"{dst}.weight"] = w.transpose(3, 2, 0, 1)
        t[f"{dst}.bias"] = p[f"{src}/bias"]
        t[f"{dst}.affine.weight"] = p[f"{src}/mod_weight"].transpose()
        t[f"{dst}.affine.bias"] = p[f"{src}/mod_bias"] + 1
        if noise_idx is not None and net.use_noise:
            t[f"{dst}.noise_const"] = p[f"synthesis/noise{noise_idx}"][0, 0]
            t[f"{dst}.noise_strength"] = np.asarray(p[f"{src}/noise_strength"]).reshape([])

    for r in res:
        log2 = int(np.log2(r))
        if r == 4:
            layer("b4.conv1", "synthesis/4x4/Conv", 0)
        else:
            layer(f"b{r}.conv0", f"synthesis/{r}x{r}/Conv0_up", log2 * 2 - 5, flip=True)
            layer(f"b{r}.conv1", f"synthesis/{r}x{r}/Conv1", log2 * 2 - 4)
        layer(f"b{r}.torgb", f"synthesis/{r}x{r}/ToRGB", None)
    load_state_strict(net, {k: np.array(v, dtype=np.float32, order="C") for k, v in t.items()}, source)
    return net


def _tf_sg1(p: dict[str, np.ndarray], kw: Mapping[str, Any], source: str) -> SG1Synthesis:
    for key, default in (("use_noise", True), ("use_styles", True), ("use_instance_norm", True),
                         ("const_input_layer", True), ("use_pixel_norm", False), ("nonlinearity", "lrelu")):
        if kw.get(key, default) != default:
            raise CheckpointError(f"{source}: StyleGAN synthesis option {key}={kw[key]!r} is not supported")
    res = sorted(int(m.group(1)) for k in p if (m := re.fullmatch(r"synthesis/(\d+)x\d+/Conv1?/weight", k)))
    channels = {r: int(p[f"synthesis/{r}x{r}/{'Conv' if r == 4 else 'Conv1'}/weight"].shape[3]) for r in res}
    top = res[-1]
    log2 = int(np.log2(top))
    net = SG1Synthesis(w_dim=int(p["synthesis/4x4/Const/StyleMod/weight"].shape[0]), img_resolution=top,
                       img_channels=int(p["synthesis/ToRGB_lod0/weight"].shape[3]), channels=channels,
                       use_wscale=bool(kw.get("use_wscale", True)), fused_scale=kw.get("fused_scale", "auto"))
    t: dict[str, Any] = {"const": p["synthesis/4x4/Const/const"][0], "lod": np.asarray(p.get("synthesis/lod", 0.0), np.float32).reshape([])}

    def epilogue(i: int, scope: str) -> None:
        t[f"epilogues.{i}.noise_weight"] = p[f"synthesis/{scope}/Noise/weight"]
        t[f"epilogues.{i}.noise_const"] = p[f"synthesis/noise{i}"][0, 0]
        t[f"epilogues.{i}.bias"] = p[f"synthesis/{scope}/bias"]
        t[f"epilogues.{i}.style_weight"] = p[f"synthesis/{scope}/StyleMod/weight"].transpose()
        t[f"epilogues.{i}.style_bias"] = p[f"synthesis/{scope}/StyleMod/bias"]

    epilogue(0, "4x4/Const")
    epilogue(1, "4x4/Conv")
    t["convs.0"] = p["synthesis/4x4/Conv/weight"].transpose(3, 2, 0, 1)
    for r in range(3, log2 + 1):
        s = 2 ** r
        epilogue(2 * r - 4, f"{s}x{s}/Conv0_up")
        epilogue(2 * r - 3, f"{s}x{s}/Conv1")
        t[f"convs.{2 * r - 5}"] = p[f"synthesis/{s}x{s}/Conv0_up/weight"].transpose(3, 2, 0, 1)
        t[f"convs.{2 * r - 4}"] = p[f"synthesis/{s}x{s}/Conv1/weight"].transpose(3, 2, 0, 1)
    for r in range(2, log2 + 1):
        t[f"torgb_weight.{r - 2}"] = p[f"synthesis/ToRGB_lod{log2 - r}/weight"].transpose(3, 2, 0, 1)
        t[f"torgb_bias.{r - 2}"] = p[f"synthesis/ToRGB_lod{log2 - r}/bias"]
    t["blur_filter"] = net.blur_filter.numpy()
    load_state_strict(net, {k: np.array(v, dtype=np.float32, order="C") for k, v in t.items()}, source)
    return net


def _from_tf(obj: Any, source: str) -> tuple[Synthesis, str]:
    nets = [o for o in (obj if isinstance(obj, (tuple, list)) else (obj,)) if isinstance(o, TFNetwork)]
    if not nets:
        raise CheckpointError(f"{source}: pickle holds no dnnlib.tflib Network")
    gs = nets[-1]  # (G, D, Gs): the moving-average generator comes last
    synth = gs.components.get("synthesis")
    if not isinstance(synth, TFNetwork):
        raise CheckpointError(f"{source}: TF network {gs.name!r} has no 'synthesis' component")
    p = _tf_params(gs)
    try:
        if "synthesis/4x4/Conv/mod_weight" in p:
            net: Synthesis = _tf_sg2(p, synth.static_kwargs, source)
            family = "stylegan2"
        elif "synthesis/4x4/Const/StyleMod/weight" in p:
            net = _tf_sg1(p, synth.static_kwargs, source)
            family = "stylegan1"
        else:
            raise CheckpointError(f"{source}: TF synthesis variables are neither StyleGAN nor StyleGAN2")
    except KeyError as exc:
        raise CheckpointError(f"{source}: TF variable {exc.args[0]} is missing") from None
    if "dlatent_avg" in p:
        with torch.no_grad():
            net.w_avg.copy_(_as_tensor(np.asarray(p["dlatent_avg"]), source, "dlatent_avg"))
    return net, family


# --------------------------------------------------------------------------- rosinality .pt


def _from_rosinality(ckpt: Any, source: str) -> tuple[Synthesis, str]:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema"), Mapping):
        raise CheckpointError(f"{source}: not a rosinality checkpoint (no 'g_ema' state dict)")
    g = ckpt["g_ema"]
    try:
        n_up = sum(1 for k in g if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
        top = 4 * 2 ** n_up
        ch = {4: int(g["conv1.conv.weight"].shape[1])}
        for i in range(n_up):
            ch[8 * 2 ** i] = int(g[f"convs.{2 * i + 1}.conv.weight"].shape[1])
        net = SG2Synthesis(w_dim=int(g["conv1.conv.modulation.weight"].shape[1]), img_resolution=top,
                           img_channels=int(g["to_rgb1.conv.weight"].shape[1]), channels=ch)
        t: dict[str, Any] = {"b4.const": g["input.input"][0]}

        def conv(dst: str, src: str, noise: str) -> None:
            t[f"{dst}.weight"] = g[f"{src}.conv.weight"][0]
            t[f"{dst}.affine.weight"] = g[f"{src}.conv.modulation.weight"]
            t[f"{dst}.affine.bias"] = g[f"{src}.conv.modulation.bias"]
            t[f"{dst}.noise_strength"] = g[f"{src}.noise.weight"].reshape([])
            t[f"{dst}.bias"] = g[f"{src}.activate.bias"]
            t[f"{dst}.noise_const"] = g[f"noises.{noise}"][0, 0]

        def torgb(dst: str, src: str) -> None:
            t[f"{dst}.weight"] = g[f"{src}.conv.weight"][0]
            t[f"{dst}.affine.weight"] = g[f"{src}.conv.modulation.weight"]
            t[f"{dst}.affine.bias"] = g[f"{src}.conv.modulation.bias"]
            t[f"{dst}.bias"] = g[f"{src}.bias"].reshape(-1)

        conv("b4.conv1", "conv1", "noise_0")
        torgb("b4.torgb", "to_rgb1")
        for i in range(n_up):
            r = 8 * 2 ** i
            conv(f"b{r}.conv0", f"convs.{2 * i}", f"noise_{2 * i + 1}")
            conv(f"b{r}.conv1", f"convs.{2 * i + 1}", f"noise_{2 * i + 2}")
            torgb(f"b{r}.torgb", f"to_rgbs.{i}")
    except KeyError as exc:
        raise CheckpointError(f"{source}: rosinality g_ema lacks {exc.args[0]}") from None
    load_state_strict(net, t, source)
    if "latent_avg" in ckpt:
        with torch.no_grad():
            net.w_avg.copy_(_as_tensor(ckpt["latent_avg"], source, "latent_avg").reshape(-1))
    return net, "stylegan2"


# --------------------------------------------------------------------------- our cache


def save_cache(loaded: LoadedSynthesis, dest: Path) -> None:
    """Write ``dest`` (.safetensors) and ``dest.with_suffix('.json')`` atomically."""
    from safetensors.torch import save as st_save

    from exhibits.files import atomic_write_bytes, atomic_write_text

    src = loaded.path.stat()
    meta = dict(cache_version=CACHE_VERSION, family=loaded.family, config=loaded.net.config(),
                source_format=loaded.source_format, source_sha256=loaded.sha256, source_name=loaded.path.name,
                source_size=src.st_size, source_mtime_ns=src.st_mtime_ns)
    tensors = {k: v.detach().contiguous().cpu() for k, v in loaded.net.state_dict().items()}
    atomic_write_bytes(dest, st_save(tensors, metadata={"family": loaded.family}))
    atomic_write_text(dest.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True))


def load_cache(path: Path) -> tuple[Synthesis, dict]:
    """Load our own .safetensors + .json pair (no pickle involved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: a .safetensors synthesis needs its config {meta_path.name} beside it") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from None
    if meta.get("cache_version") != CACHE_VERSION or "family" not in meta or "config" not in meta:
        raise CheckpointError(f"{meta_path}: not a synthesis config (cache_version {CACHE_VERSION}, family, config)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    with weights_from_checkpoint():
        net = build(meta["family"], meta["config"])
    load_state_strict(net, tensors, str(path))
    if "w_avg" in tensors:
        with torch.no_grad():
            net.w_avg.copy_(tensors["w_avg"])
    return net, meta


def cache_path_for(path: Path, cache_dir: Path) -> Path:
    tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return cache_dir / f"{path.name}.{tag}.safetensors"


# --------------------------------------------------------------------------- entry point


def sniff_format(path: Path) -> str:
    """'cache', 'zip' (torch.save), 'pickle' or raise: from the file's first bytes, not its name."""
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        return "cache"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) >= 2:
        return "pickle"
    raise CheckpointError(f"{path}: not a StyleGAN checkpoint (neither a pickle, a torch zip file nor .safetensors)")


def _load_torch_zip(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for refused or damaged files
        raise CheckpointError(f"{path}: unreadable or refused torch checkpoint: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The part of a loader's error that says what was wrong (torch's refusals run to a page of advice)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    refused = [ln for ln in lines if "unsupported GLOBAL" in ln or "blocked" in ln]
    text = refused[0] if refused else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def load_uncached(path: Path) -> tuple[Synthesis, str, str]:
    """(net, family, source_format) from a checkpoint file of any supported format."""
    with weights_from_checkpoint():  # every weight is then checked to come from the file (load_state_strict)
        return _load_uncached(path)


def _load_uncached(path: Path) -> tuple[Synthesis, str, str]:
    kind = sniff_format(path)
    source = str(path)
    if kind == "cache":
        net, meta = load_cache(path)
        return net, meta["family"], "cache"
    if kind == "zip":
        net, family = _from_rosinality(_load_torch_zip(path), source)
        return net, family, "rosinality"
    with open(path, "rb") as f:
        obj = load_nvlabs_pickle(f, source)
    if isinstance(obj, int):  # a legacy (non-zip) torch.save stream starts with its magic number
        net, family = _from_rosinality(_load_torch_zip(path), source)
        return net, family, "rosinality"
    if isinstance(obj, dict) and "g_ema" in obj:
        net, family = _from_rosinality(obj, source)
        return net, family, "rosinality"
    if isinstance(obj, dict):
        net, family = _from_nvlabs(obj, source)
        return net, family, "nvlabs"
    net, family = _from_tf(obj, source)
    return net, family, "tf"


def load_synthesis(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> LoadedSynthesis:
    """Load ``path`` into our modules; with ``cache_dir``, reuse or write the safetensors cache."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    stat = path.stat()
    cache = cache_path_for(path, Path(cache_dir)) if cache_dir is not None else None
    if cache is not None and cache.is_file() and path.suffix != ".safetensors":
        try:
            meta = json.loads(cache.with_suffix(".json").read_text(encoding="utf-8"))
            if meta.get("source_size") == stat.st_size and meta.get("source_mtime_ns") == stat.st_mtime_ns:
                net, meta = load_cache(cache)
                net.eval().requires_grad_(False)
                log.info("loaded %s from cache %s", path.name, cache)
                return LoadedSynthesis(net, meta["family"], meta.get("source_format", "cache"),
                                       meta["source_sha256"], path)
        except (OSError, json.JSONDecodeError, CheckpointError, KeyError) as exc:
            log.warning("ignoring stale or damaged cache %s: %s", cache, exc)
    digest = _hash_in_background(path)  # the checkpoint's identity, while this thread parses it
    try:
        net, family, fmt = load_uncached(path)
    except CheckpointError:
        raise
    except Exception as exc:  # whatever else a damaged file provokes still names the file, and only that file
        raise CheckpointError(f"{path}: not a loadable StyleGAN checkpoint: {_first_line(exc)}") from exc
    loaded = LoadedSynthesis(net.eval().requires_grad_(False), family, fmt, digest, path)
    if cache is not None and fmt != "cache":
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_cache(loaded, cache)
        except OSError as exc:
            log.warning("could not write synthesis cache %s: %s", cache, exc)
    return loaded
