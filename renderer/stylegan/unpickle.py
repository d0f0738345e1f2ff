"""Restricted unpicklers for NVlabs StyleGAN checkpoints: nothing in the file is ever executed.

Two kinds of pickle arrive here:

* stylegan2-ada-pytorch / stylegan3 ``.pkl``: a dict (``G``, ``D``, ``G_ema``, ...) whose
  networks were pickled by ``torch_utils.persistence``: each module reduces to
  ``_reconstruct_persistent_obj(meta)`` with ``meta = {type: 'class', version, module_src,
  class_name, state}``.  We map that call to :class:`PersistentObject`, which records the
  class name and state (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``...) and
  never looks at ``module_src``.  Tensors arrive as ``torch._utils._rebuild_tensor_v2`` over
  storages pickled by ``torch.storage._load_from_bytes`` (a legacy ``torch.save`` stream),
  which :func:`load_legacy_storage` parses itself.
* TensorFlow StyleGAN / StyleGAN2 ``.pkl``: ``dnnlib.tflib.network.Network`` objects whose
  state is a dict (``version``, ``name``, ``static_kwargs``, ``components``, ``variables`` as
  a list of ``(name, numpy array)``), mapped to :class:`TFNetwork`.

Any other global raises :class:`CheckpointError` naming the file and the global.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Any, Callable

import numpy as np
import torch

from renderer.base import CheckpointError  # noqa: F401 - raised here, imported from here by the loaders




class PersistentObject:
    """Placeholder for a ``torch_utils.persistence`` object: its class name and pickled state only."""

    def __init__(self, class_name: str, state: dict) -> None:
        self.class_name = class_name
        self.state = state

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name!r})"

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def submodules(self) -> dict[str, "PersistentObject"]:
        return dict(self.state.get("_modules") or {})

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every parameter and buffer under this module, by dotted name (None buffers skipped).

        Tensor data is decoded here, on first use: a training pickle also carries the discriminator and
        the non-averaged generator, which inference never reads.
        """
        out: dict[str, torch.Tensor] = {}
        for key in ("_parameters", "_buffers"):
            for name, value in (self.state.get(key) or {}).items():
                if value is not None:
                    out[prefix + name] = value.materialize() if isinstance(value, LazyTensor) else value
        for name, sub in self.submodules.items():
            if isinstance(sub, PersistentObject):
                out.update(sub.tensors(f"{prefix}{name}."))
        return out


class TFNetwork:
    """Placeholder for ``dnnlib.tflib.network.Network``: keeps the pickled state dict, builds nothing."""

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"TF network state must be a dict, got {type(state).__name__}")
        self.state = state

    @property
    def name(self) -> str:
        return str(self.state.get("name", ""))

    @property
    def static_kwargs(self) -> dict:
        return dict(self.state.get("static_kwargs") or {})

    @property
    def components(self) -> dict[str, "TFNetwork"]:
        return dict(self.state.get("components") or {})

    @property
    def variables(self) -> list[tuple[str, np.ndarray]]:
        return list(self.state.get("variables") or [])


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
        raise CheckpointError("persistent object without the expected {type: 'class', class_name, state} meta")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise CheckpointError(f"persistent object {meta['class_name']!r} has a non-dict state")
    return PersistentObject(str(meta["class_name"]), state)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"_codecs.encode is only allowed for latin1 byte strings, got {encoding!r}")
    return text.encode("latin1")


class LazyStorage:
    """An embedded ``torch.save`` storage stream, decoded the first time a tensor over it is used."""

    def __init__(self, data: bytes, source: str) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise CheckpointError(f"{source}: embedded storage is not bytes")
        self.data: bytes | bytearray | None = data
        self.source = source
        self._tensor: torch.Tensor | None = None

    def tensor(self) -> torch.Tensor:
        if self._tensor is None:
            assert self.data is not None
            self._tensor = load_legacy_storage(self.data, self.source)
            self.data = None
        return self._tensor


class LazyTensor:
    """A tensor of a NVlabs pickle whose storage has not been decoded yet (see :meth:`materialize`)."""

    def __init__(self, storage: LazyStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.size)

    def materialize(self) -> torch.Tensor:
        try:
            return _rebuild_tensor_v2(self.storage.tensor(), self.offset, self.size, self.stride)
        except RuntimeError as exc:  # a view outside its storage
            raise CheckpointError(f"{self.storage.source}: malformed tensor view ({exc})") from None


def _rebuild_tensor_v2(storage: Any, offset: int, size: tuple, stride: tuple,
                       requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> Any:
    if isinstance(storage, LazyStorage):
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
            raise CheckpointError(f"{storage.source}: tensor with malformed size {size!r} / stride {stride!r}")
        return LazyTensor(storage, offset, size, stride)
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError(f"tensor rebuilt over a {type(storage).__name__}, expected a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    return data


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise CheckpointError(f"numpy array subtype {subtype!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError("numpy object scalars are not allowed")
    return np.frombuffer(data or b"", dtype=dtype, count=1)[0]


def _np_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec, align)
    if dtype.hasobject:
        raise CheckpointError("numpy object arrays are not allowed")
    return dtype


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C", axis_order: Any = None) -> np.ndarray:
    # numpy's reducer for pickle protocol 5 (Python 3.14's default): raw bytes + dtype + shape.
    if not isinstance(buf, (bytes, bytearray)):
        raise CheckpointError(f"numpy buffer must be in-band bytes, got {type(buf).__name__}")
    dtype = _np_dtype(dtype)
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)) or order not in "CFK":
        raise CheckpointError(f"numpy array with malformed shape {shape!r} or order {order!r}")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(buf):
        raise CheckpointError(f"numpy array of shape {shape} {dtype} does not match its {len(buf)} bytes")
    array = np.frombuffer(bytes(buf), dtype=dtype)
    if order == "K" and axis_order is not None:
        if sorted(axis_order) != list(range(len(shape))):
            raise CheckpointError(f"numpy array with malformed axis order {axis_order!r}")
        return array.reshape(shape, order="C").transpose(axis_order).copy(order="K")
    return array.reshape(shape, order="C" if order == "K" else order).copy(order="K")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor (pickle protocols 0 and 1): only for our own placeholders.
    if cls not in (TFNetwork, EasyDict) or base not in (object, dict):
        raise CheckpointError(f"copyreg._reconstructor for {cls!r} is not allowed")
    return base.__new__(cls) if base is object else cls(state or {})


_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
}

_COMMON = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("_codecs", "encode"): _codecs_encode,
    **_NUMPY,
}

# name -> (dtype, element size) for the storage classes a legacy torch.save stream names
_STORAGE_TYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Restricted(pickle.Unpickler):
    """``find_class`` answers only from ``allowed``; everything else is refused with the file named."""

    def __init__(self, file: Any, source: str, allowed: dict[tuple[str, str], Any]) -> None:
        super().__init__(file)
        self.source = source
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.source}: refusing to load: the pickle asks for the global {module}.{name}, "
                "which is not on the allowlist of a StyleGAN checkpoint (nothing was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.source}: unexpected persistent id {str(pid)[:80]!r} in the pickle")


class _LegacyStorageUnpickler(_Restricted):
    """The inner pickle of a legacy ``torch.save`` stream: storages come back as flat, empty tensors."""

    def __init__(self, file: Any, source: str, max_bytes: int) -> None:
        allowed = {("torch", k): _StorageType(v) for k, v in _STORAGE_TYPES.items()}
        allowed.update({("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
                        ("collections", "OrderedDict"): collections.OrderedDict})
        super().__init__(file, source, allowed)
        self.storages: dict[str, torch.Tensor] = {}
        self.max_bytes = max_bytes

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.source}: malformed storage record in an embedded tensor")
        _, stype, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        key = str(key)
        itemsize = torch.empty(0, dtype=stype.dtype).element_size()
        if not isinstance(numel, int) or numel < 0 or numel * itemsize > self.max_bytes:
            raise CheckpointError(f"{self.source}: embedded tensor claims {numel} elements, more than its data holds")
        if key not in self.storages:
            self.storages[key] = torch.empty(int(numel), dtype=stype.dtype)
        root = self.storages[key]
        if view is not None:
            _view_key, view_offset, view_size = view
            return root[int(view_offset): int(view_offset) + int(view_size)]
        return root


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def load_legacy_storage(data: bytes, source: str = "<embedded tensor>") -> torch.Tensor:
    """Parse a legacy (non-zip) ``torch.save`` stream of one storage, as ``_load_from_bytes`` receives it."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"{source}: embedded storage is not bytes")
    f = io.BytesIO(data)

    def small() -> Any:
        return _Restricted(f, source, {}).load()

    try:
        if small() != _LEGACY_MAGIC:
            raise CheckpointError(f"{source}: embedded tensor data is not a torch.save stream (bad magic number)")
        if small() != 1001:
            raise CheckpointError(f"{source}: unsupported torch.save protocol in an embedded tensor")
        sys_info = small()
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise CheckpointError(f"{source}: big-endian tensor data is not supported")
        inner = _LegacyStorageUnpickler(f, source, len(data))
        obj = inner.load()
        keys = _Restricted(f, source, {}).load()
    except (pickle.UnpicklingError, EOFError, struct.error, TypeError) as exc:
        raise CheckpointError(f"{source}: damaged embedded tensor data ({exc})") from exc
    for key in keys:
        storage = inner.storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"{source}: embedded tensor data lists an unknown storage {key!r}")
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{source}: embedded tensor data is truncated")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * storage.element_size()
        if numel != storage.numel() or len(data) - f.tell() < nbytes:
            raise CheckpointError(f"{source}: embedded tensor data is truncated or inconsistent")
        if nbytes and f.readinto(storage.view(torch.uint8).numpy()) != nbytes:  # straight into the tensor
            raise CheckpointError(f"{source}: embedded tensor data is truncated or inconsistent")
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{source}: embedded tensor data does not hold a storage")
    return obj


def _safe_call(fn: Callable[..., Any], source: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return fn(*args, source=source)
    return call


def load_nvlabs_pickle(file: Any, source: str) -> Any:
    """Unpickle a stylegan2-ada-pytorch / stylegan3 / TF StyleGAN pickle into placeholders."""
    allowed = dict(_COMMON)
    allowed.update({
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _safe_call(LazyStorage, source),
        ("torch", "device"): torch.device,
        ("dnnlib.tflib.network", "Network"): TFNetwork,
    })
    try:
        return _Restricted(file, source, allowed).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, AttributeError, IndexError, TypeError,
            ValueError, KeyError, RuntimeError, UnicodeDecodeError, MemoryError) as exc:
        raise CheckpointError(f"{source}: not a readable StyleGAN pickle (truncated or damaged): "
                              f"{type(exc).__name__}: {exc}") from exc
