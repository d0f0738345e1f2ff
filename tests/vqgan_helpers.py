"""Tiny random VQGANs saved as official-style Lightning checkpoints, and tiny render contexts."""
from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import torch

from renderer.base import RenderContext, RenderRequest
from renderer.vqgan_clip.vqgan import VQGAN, config_to_yaml, save_lightning_checkpoint, tiny_config


def _lightning_callback_key():
    """A class living at Lightning's real import path, as official checkpoints key callback states by it."""
    modname = "pytorch_lightning.callbacks.model_checkpoint"
    mod = sys.modules.get(modname)
    if mod is not None and hasattr(mod, "ModelCheckpoint"):
        return mod.ModelCheckpoint, None
    fake = types.ModuleType(modname)

    class ModelCheckpoint:  # stands in for Lightning's class while pickling
        pass

    ModelCheckpoint.__module__ = modname
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    return ModelCheckpoint, fake


def write_tiny_vqgan(folder: Path, name: str = "tiny_vq", gumbel: bool = False, seed: int = 0) -> tuple[Path, VQGAN]:
    """Save a random tiny VQGAN as ``<name>.ckpt`` (Lightning layout) with ``<name>.yaml`` beside it."""
    torch.manual_seed(seed)
    cfg = tiny_config(gumbel=gumbel)
    model = VQGAN(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(config_to_yaml(cfg))
    cls, fake = _lightning_callback_key()
    extra = {
        "callbacks": {cls: {"best_model_score": torch.tensor(0.25), "best_model_path": "logs/last.ckpt"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
        "lr_schedulers": [],
        "native_amp_scaling_state": None,
    }
    if fake is not None:
        sys.modules[fake.__name__] = fake
    try:
        path = save_lightning_checkpoint(model, folder / f"{name}.ckpt", extra)
    finally:
        if fake is not None:
            del sys.modules[fake.__name__]
    return path, model


def tiny_ctx(tmp: Path, dtype: torch.dtype = torch.float32, **kw) -> RenderContext:
    return RenderContext(device=torch.device("cpu"), dtype=dtype, weights_dir=tmp / "weights",
                         work_dir=tmp / "work", **kw)


TINY_SETTINGS = {"vqgan": "tiny", "clip_models": ["tiny"], "steps": 6, "cutouts": 8, "progress_every": 1,
                 "checkpoint_every": 0, "lr": 0.1}


def request(prompts=(("a door to heaven", 1.0), ("a door to hell", 1.0)), seed: int = 7, width: int = 48,
            height: int = 32, **params) -> RenderRequest:
    return RenderRequest(job_id=1, exhibit="doorways", generator="vqgan_clip", prompts=tuple(prompts), seed=seed,
                         width=width, height=height, params=params)


# --------------------------------------------------------------------------- pickles naming foreign globals

class GlobalRef:
    """A global named ``module.name`` in a pickle, written as a ``GLOBAL`` opcode without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):
        """``GlobalRef(...)(*args)``: an object pickled as ``REDUCE`` of this global with ``args``."""
        return _Reduce(self, args)


class _Reduce:
    def __init__(self, func: GlobalRef, args: tuple):
        self.func, self.args = func, args


class NewObj:
    """``cls.__new__(cls, *args)`` then ``SETITEMS``/``BUILD``: how protocol 2 writes a dict subclass instance."""

    def __init__(self, cls: GlobalRef, args: tuple = (), items: dict | None = None, state=None):
        self.cls, self.args, self.items, self.state = cls, args, items or {}, state


class _ForeignPickler(pickle._Pickler):
    """Python's own pickler, taught to write :class:`GlobalRef`, :class:`_Reduce` and :class:`NewObj`."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_ref(self, obj: GlobalRef) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
        self.memoize(obj)

    def _save_reduce_marker(self, obj: _Reduce) -> None:
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def _save_newobj(self, obj: NewObj) -> None:
        self.save(obj.cls)
        self.save(obj.args)
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        if obj.items:
            self._batch_setitems(iter(obj.items.items()))
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[GlobalRef] = _save_global_ref
    dispatch[_Reduce] = _save_reduce_marker
    dispatch[NewObj] = _save_newobj


def foreign_pickle_module() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.save`` that writes the markers above verbatim."""
    mod = types.ModuleType("foreign_pickle")
    mod.Pickler = _ForeignPickler
    mod.dump = lambda obj, f, protocol=2: _ForeignPickler(f, protocol=protocol).dump(obj)
    return mod


def lightning_1_0_checkpoint(model: VQGAN) -> dict:
    """What a 2021 Lightning (1.0.x-1.4) ``.ckpt`` holds, every foreign object named by its real global.

    The callback states are keyed by the ModelCheckpoint class; the scores are numpy scalars (numpy 1.x
    spells them ``numpy.core.multiarray.scalar(dtype, _codecs.encode(...))``); ``hyper_parameters`` is an
    ``AttributeDict`` (a dict subclass) holding an omegaconf ``DictConfig`` whose metadata names
    ``typing.Any``, ``dict``, ``int`` and a ``defaultdict``; a ``TorchVersion`` string rides along.
    """
    ndtype = GlobalRef("numpy", "dtype")("f8", False, True)
    half = GlobalRef("_codecs", "encode")("\x00" * 6 + "\xe0?", "latin1")  # float64 0.5, little-endian
    f8 = GlobalRef("numpy.core.multiarray", "scalar")(ndtype, half)
    ndarray = GlobalRef("numpy.core.multiarray", "_reconstruct")(GlobalRef("numpy", "ndarray"), (0,), b"b")
    meta = NewObj(GlobalRef("omegaconf.base", "ContainerMetadata"), state={
        "ref_type": GlobalRef("typing", "Any"), "object_type": GlobalRef("__builtin__", "dict"),
        "key_type": GlobalRef("typing", "Any"), "element_type": GlobalRef("typing", "Any"),
        "flags": GlobalRef("collections", "defaultdict")(GlobalRef("__builtin__", "dict")),
        "resolver_cache": GlobalRef("collections", "defaultdict")(GlobalRef("__builtin__", "dict"))})
    dictconfig = NewObj(GlobalRef("omegaconf.dictconfig", "DictConfig"), state={
        "_metadata": meta, "_parent": None, "_content": {
            "embed_dim": NewObj(GlobalRef("omegaconf.nodes", "AnyNode"), state={"_val": model.cfg.embed_dim})}})
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["loss.discriminator.main.1.num_batches_tracked"] = torch.tensor(7)
    sd["loss.perceptual_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    return {
        "epoch": 12, "global_step": 345678, "pytorch-lightning_version": "1.0.8",
        "callbacks": {GlobalRef("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): {
            "monitor": "val/rec_loss", "best_model_score": f8, "current_score": torch.tensor(0.5),
            "best_model_path": "logs/checkpoints/last.ckpt", "dirpath": "logs/checkpoints", "scores": ndarray,
            "seen": GlobalRef("__builtin__", "set")([1, 2])}},
        "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.zeros(2)}},
                              "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
        "lr_schedulers": [],
        "state_dict": GlobalRef("collections", "OrderedDict")(list(sd.items())),
        "hparams_name": "kwargs",
        "hyper_parameters": NewObj(GlobalRef("pytorch_lightning.utilities.parsing", "AttributeDict"),
                                   items={"cfg": dictconfig, "gumbel": model.cfg.gumbel}),
        "hparams_type": GlobalRef("omegaconf.dictconfig", "DictConfig"),
        "torch_version": NewObj(GlobalRef("torch.torch_version", "TorchVersion"), args=("1.7.0",)),
    }
