"""Faster layers swapped into a loaded network in place: same parameters, same names, so checkpoints load
as they are and the swap can be undone (the benchmarks' baselines and the tests' references)."""
from __future__ import annotations

from typing import Callable, Mapping

from torch import nn


def swap_classes(module: nn.Module, table: Mapping[type, type],
                 when: Callable[[nn.Module], bool] | None = None) -> int:
    """Give every submodule of ``module`` whose exact class is a key of ``table`` (and, with ``when``, for
    which ``when(m)`` holds) the class it maps to.  Returns how many were swapped."""
    swapped = 0
    for m in module.modules():
        if type(m) in table and (when is None or when(m)):
            m.__class__ = table[type(m)]
            swapped += 1
    return swapped
