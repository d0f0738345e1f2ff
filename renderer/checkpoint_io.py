"""Reading checkpoint files safely: state dicts with ``weights_only``, pickled modules through an allowlist.

Every failure is a :class:`CheckpointError` (the project's checkpoint error, shared
with the StyleGAN loaders) whose message names the file: missing, empty,
truncated or damaged, not the expected kind of file, or a pickle that asks for a
global outside the allowlist.  Nothing in a refused file is executed.
"""
from __future__ import annotations

import pickle
import struct
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from renderer.stylegan.unpickle import CheckpointError

__all__ = ["CheckpointError", "UnsafePickle", "load_state_dict", "restricted_torch_load"]

# What a damaged file makes torch.load / pickle raise (besides our own CheckpointError).
_DAMAGED = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, struct.error, UnicodeDecodeError, zipfile.BadZipFile, OSError, MemoryError)


class UnsafePickle(CheckpointError):
    """The pickle asks for a global outside the allowlist; nothing from it was executed."""


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: {what} is empty (0 bytes): an interrupted download? delete it and fetch again")


def load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict (zip or legacy format) read with ``weights_only=True``; tensors only."""
    path = Path(path)
    _check_file(path, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise UnsafePickle(f"{path}: refusing to load {what}: the file asks for code outside plain tensors "
                               f"and containers (nothing was executed): {str(exc).splitlines()[0][:300]}") from exc
        raise CheckpointError(f"{path}: {what} is damaged or truncated: {exc}") from exc
    except _DAMAGED as exc:
        raise CheckpointError(f"{path}: {what} is damaged or truncated ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else 'no detail'})") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a {what}: expected a state dict of named tensors, "
                              f"got {type(obj).__name__}")
    return dict(obj)


def restricted_torch_load(path: str | Path, allowed: Mapping[tuple[str, str], Any], what: str) -> Any:
    """``torch.load`` of a pickled object whose globals may only come from ``allowed``.

    ``torch.load`` resolves its own storage types and persistent ids; every other global the
    pickle names goes through ``find_class`` and is answered from ``allowed`` or refused with
    :class:`UnsafePickle` naming the file and the global.
    """
    path = Path(path)
    _check_file(path, what)
    source = str(path)

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return allowed[(module, name)]
            except KeyError:
                raise UnsafePickle(f"{source}: refusing to load {what}: the pickle asks for the global "
                                   f"{module}.{name}, which is not on the allowlist (nothing was executed)") from None

    mod = types.ModuleType("restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__dict__["UnpicklingError"] = pickle.UnpicklingError
    try:
        with warnings.catch_warnings():
            # torch compares a legacy file's saved module source with the class it resolved (our placeholder)
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            return torch.load(path, map_location="cpu", pickle_module=mod, weights_only=False)
    except CheckpointError:
        raise
    except _DAMAGED as exc:
        raise CheckpointError(f"{path}: {what} is damaged or truncated ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else 'no detail'})") from exc


def strict_copy(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str, what: str,
                rename: Callable[[str], str] = lambda k: k) -> None:
    """Copy ``tensors`` into ``module`` by name; every name must match both ways, with equal shapes."""
    own = module.state_dict()
    given = {rename(k): v for k, v in tensors.items()}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: not a {what} of this configuration: missing {missing[:6]}"
                              f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                              f"{'...' if len(unexpected) > 6 else ''}")
    for k, v in given.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: {k} has shape {list(v.shape)}, the config needs {list(own[k].shape)}")
        if not (v.is_floating_point() or v.dtype == own[k].dtype):
            raise CheckpointError(f"{source}: {k} has dtype {v.dtype}, expected floating point")
    with torch.no_grad():
        for k, v in given.items():
            own[k].copy_(v.to(own[k].dtype))
