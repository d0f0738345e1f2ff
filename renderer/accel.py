"""The GPU paths in one place: ``torch.compile`` modes, CUDA-graph replay, and float16 loss scaling.

Each is written for CUDA and runs the same code on the CPU, where the tests check shapes, dtypes and
buffer reuse:

``compile`` modes
    :func:`parse_compile_mode` turns a setting into one of :data:`COMPILE_MODES` (``true`` is
    ``"default"``, ``false`` is ``"off"``).  :class:`Compiled` wraps a function or module with
    ``torch.compile(mode=...)``; compilation happens at the first call, and if it fails there (no C++
    compiler, no Triton, an operation the compiler does not support) it logs one warning and runs the
    function eagerly from then on -- a render never fails because the compiler did.  ``"reduce-overhead"``
    is inductor with CUDA graphs (on the CPU the same as ``"default"``); ``"max-autotune"`` also times
    kernel choices and compiles much longer.

CUDA graphs (:class:`GraphRunner`)
    For fixed-shape inference such as StyleGAN synthesis (``ws [N, num_ws, w_dim] -> image``): the input
    is copied into a static buffer, the graph is replayed, and the result sits in a static output buffer
    that the next call overwrites -- :meth:`GraphRunner.run` returns that buffer, calling the runner
    returns a copy.  A graph is captured per input shape and dtype (after warm-up runs on a side
    stream) and kept, a few at a time.  With ``capture=False`` (always on the CPU) the same static
    buffers are used but the function runs eagerly each call, so the buffer rules are the same
    everywhere.  A graph replays exactly the kernels it recorded, so anything drawn on the host at
    capture time is frozen into it: StyleGAN's ``noise_mode="random"`` (noise drawn from a seeded CPU
    generator per image) cannot be captured (:func:`check_graph_noise_mode`); ``"const"`` and ``"none"``
    can.  Weights must not be replaced after capture (in-place updates are seen); :meth:`GraphRunner.reset`
    drops every graph.

float16 loss scaling (:class:`LossScaling`)
    float16 autocast (CUDA without bfloat16) underflows small gradients, so the loss is multiplied by a
    ``torch.amp.GradScaler`` scale before backward, the gradients are unscaled before the optimiser
    step, and a step whose gradients overflowed is skipped while the scale backs off.  bfloat16 and
    float32 have float32's range and keep no scaler.  The scaler's state belongs in a checkpoint.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping

import torch

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
COMPILE_ALLOWED = "true, false, " + ", ".join(f"'{m}'" for m in COMPILE_MODES)
GRAPH_NOISE_MODES = ("const", "none")


# --------------------------------------------------------------------------- torch.compile


def parse_compile_mode(value: Any) -> str:
    """A ``compile`` setting as one of :data:`COMPILE_MODES`; ValueError naming the allowed values."""
    if value is True:
        return "default"
    if value is False or value is None:
        return "off"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"compile mode {value!r}; allowed: {COMPILE_ALLOWED}")


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when it cannot compile (dynamo, inductor and backend failures)."""
    import torch._dynamo.exc

    return (torch._dynamo.exc.TorchDynamoException,)


class Compiled:
    """``fn`` compiled with ``torch.compile(mode=mode)`` at its first call, eager if that fails.

    ``backend`` other than ``"inductor"`` (e.g. ``"eager"``, ``"aot_eager"`` in tests) takes no mode:
    torch.compile refuses both at once, so the mode is only logged.  Exceptions from ``fn`` itself pass
    through unchanged; only the compiler's own failures (``torch._dynamo.exc.TorchDynamoException``,
    which covers inductor's) switch to eager.  ``failure`` holds the first such error's text.
    """

    def __init__(self, fn: Callable[..., Any], mode: str, *, name: str = "", backend: str = "inductor",
                 dynamic: bool | None = None) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r} for {name or fn!r}; allowed: {', '.join(COMPILE_MODES)}")
        self.eager = fn
        self.mode = mode
        self.backend = backend
        self.name = name or getattr(fn, "__qualname__", type(fn).__name__)
        self.failure: str | None = None
        self._compiled: Callable[..., Any] | None = None
        if mode != "off":
            if backend == "inductor":
                self._compiled = torch.compile(fn, mode=mode, dynamic=dynamic)
            else:
                self._compiled = torch.compile(fn, backend=backend, dynamic=dynamic)
            log.info("torch.compile %s: mode %s, backend %s (compiled at the first call)", self.name, mode, backend)

    @property
    def active(self) -> bool:
        """True while calls go through the compiled function (not off, not fallen back)."""
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except _compile_errors() as exc:
            self._compiled = None
            self.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("torch.compile of %s (mode %s, backend %s) failed, running it eagerly from now on: %s",
                        self.name, self.mode, self.backend, self.failure)
            return self.eager(*args, **kwargs)


def compiled(fn: Callable[..., Any], mode: str, *, name: str = "", backend: str = "inductor") -> Callable[..., Any]:
    """``fn`` itself when ``mode`` is ``"off"``, else a :class:`Compiled` wrapper with the eager fallback."""
    if mode == "off":
        return fn
    return Compiled(fn, mode, name=name, backend=backend)


# --------------------------------------------------------------------------- CUDA graphs


def check_graph_noise_mode(noise_mode: str) -> None:
    """ValueError unless ``noise_mode`` can be replayed from a captured graph."""
    if noise_mode not in GRAPH_NOISE_MODES:
        raise ValueError(
            f"CUDA graphs: noise_mode {noise_mode!r} cannot be captured -- a graph replays the noise drawn when it "
            f"was captured, and 'random' draws new noise per image on the host; use noise_mode "
            f"{' or '.join(repr(m) for m in GRAPH_NOISE_MODES)}, or turn CUDA graphs off")


class _Entry:
    __slots__ = ("static_in", "static_out", "graph")

    def __init__(self, static_in: torch.Tensor, static_out: torch.Tensor, graph: Any) -> None:
        self.static_in = static_in
        self.static_out = static_out
        self.graph = graph


class GraphRunner:
    """``fn(x) -> tensor`` for fixed shapes, through static buffers, replayed from CUDA graphs.

    ``capture``: None captures when the input is on CUDA; False runs ``fn`` eagerly through the same
    static buffers (the CPU, or CUDA without capture); True requires CUDA inputs.  ``key`` adds to the
    shape/dtype/device key whatever else a graph bakes in (e.g. whether a network's fp16 blocks are on).
    Inference only: ``fn`` runs under ``torch.no_grad``.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, capture: bool | None = None,
                 warmup: int = 2, max_graphs: int = 4, name: str = "",
                 key: Callable[[], Hashable] | None = None) -> None:
        if max_graphs < 1:
            raise ValueError(f"GraphRunner {name}: max_graphs must be >= 1, got {max_graphs}")
        self.fn = fn
        self.capture = capture
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.name = name or getattr(fn, "__qualname__", "fn")
        self.extra_key = key
        self.captures = 0  # graphs captured (or static buffers set up when not capturing) so far
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    def _captures(self, x: torch.Tensor) -> bool:
        if self.capture is None:
            return x.device.type == "cuda"
        if self.capture and x.device.type != "cuda":
            raise ValueError(f"GraphRunner {self.name}: capture=True needs a CUDA input, got one on {x.device}")
        return self.capture

    def key_for(self, x: torch.Tensor) -> Hashable:
        return (tuple(x.shape), x.dtype, x.device, self.extra_key() if self.extra_key else None)

    def reset(self) -> None:
        """Drop every captured graph and buffer (after replacing weights, say)."""
        self._entries.clear()

    def _setup(self, x: torch.Tensor, key: Hashable) -> _Entry:
        static_in = torch.empty_like(x, memory_format=torch.contiguous_format)
        static_in.copy_(x)
        if not self._captures(x):
            out = self.fn(static_in)
            entry = _Entry(static_in, out.clone(memory_format=torch.contiguous_format), None)
            log.debug("GraphRunner %s: static buffers for %s (eager, no capture)", self.name, key)
        else:
            stream = torch.cuda.Stream(device=x.device)
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.fn(static_in)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    static_out = self.fn(static_in)
            except RuntimeError as exc:  # e.g. a host synchronisation inside fn, which capture forbids
                log.warning("GraphRunner %s: CUDA graph capture failed for %s, running eagerly through static "
                            "buffers from now on: %s", self.name, key, str(exc).splitlines()[0] if str(exc) else exc)
                self.capture = False
                return self._setup(x, key)
            graph.replay()  # capture records without running: compute the first result
            entry = _Entry(static_in, static_out, graph)
            log.info("GraphRunner %s: captured a CUDA graph for %s", self.name, key)
        self.captures += 1
        return entry

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The result in the static output buffer: valid until the next call with the same shape and dtype."""
        key = self.key_for(x)
        entry = self._entries.get(key)
        if entry is None:
            while len(self._entries) >= self.max_graphs:
                old, _ = self._entries.popitem(last=False)
                log.debug("GraphRunner %s: dropped the graph for %s", self.name, old)
            entry = self._entries[key] = self._setup(x, key)
            return entry.static_out
        self._entries.move_to_end(key)
        entry.static_in.copy_(x)
        if entry.graph is not None:
            entry.graph.replay()
        else:
            out = self.fn(entry.static_in)
            if out.shape != entry.static_out.shape or out.dtype != entry.static_out.dtype:
                raise RuntimeError(
                    f"GraphRunner {self.name}: output changed from {list(entry.static_out.shape)} "
                    f"{entry.static_out.dtype} to {list(out.shape)} {out.dtype} for the same input; a captured "
                    "graph would replay the old one -- give the runner a key for what changed, or reset() it")
            entry.static_out.copy_(out)
        return entry.static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of the result, safe to keep across calls."""
        return self.run(x).clone()


def synthesis_runner(net: torch.nn.Module, noise_mode: str, *, capture: bool | None = None,
                     max_graphs: int = 4) -> GraphRunner:
    """A :class:`GraphRunner` for a StyleGAN synthesis network: ``ws [N, num_ws, w_dim] -> images``."""
    check_graph_noise_mode(noise_mode)

    def synth(ws: torch.Tensor) -> torch.Tensor:
        return net(ws, noise_mode=noise_mode)

    return GraphRunner(synth, capture=capture, max_graphs=max_graphs, name=f"{type(net).__name__} synthesis",
                       key=lambda: bool(getattr(net, "fp16_enabled", False)))


# --------------------------------------------------------------------------- float16 loss scaling


class LossScaling:
    """Backward and optimiser step for one autocast dtype; a GradScaler for float16 only.

    :meth:`step` returns True when the optimiser stepped, False when the scaler skipped the step
    because the gradients were not finite (the scale then backs off).
    """

    def __init__(self, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        device = torch.device(device)
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    @property
    def enabled(self) -> bool:
        return self.scaler is not None

    @property
    def scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> bool:
        if self.scaler is None:
            loss.backward()
            opt.step()
            return True
        self.scaler.scale(loss).backward()
        before = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))
