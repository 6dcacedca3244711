"""GPU speed levers, applied in one place: reduced precision, channels_last, torch.compile and
``batch_size: auto`` (config keys under ``sampling:``; docs/method.md's guidance maths never moves).

* :class:`Levers` -- the levers a config's ``sampling`` section asks for (all off by default: the
  CPU runs exactly as before, no wrapper at all).
* :func:`apply_levers` -- a network with its levers: autocast to bf16 (the output cast back to
  fp32, so Eq. 4 and 5, Σ and the guided mean stay fp32 at the seam), channels_last weights and
  inputs, and a lazily compiled forward. The same wrapper serves the denoiser and the classifier:
  a classifier's input gradient flows back to its fp32 leaf, so it is returned in fp32.
* :func:`auto_batch_size` -- ``batch_size: auto``: the largest batch that fits in free device
  memory with a margin, from a short probe (:func:`probe_sampler`) once per job.

Which backend supports which lever is declared in :mod:`offshelf.backends.capabilities`
(:data:`~offshelf.backends.capabilities.LEVERS`), never found out by calling.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping

import torch
from torch import nn

DENOISER_PRECISIONS = ("fp32", "fp16", "bf16")
CLASSIFIER_PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
#: ``batch_size: auto`` on a CPU: no memory probe (host memory is not the limit there). Throughput
#: per image on a CPU stops improving after a few samples per batch; 32 keeps that and still
#: reports progress every 32 samples. The ImageNet configs run 50 per GPU batch by default.
CPU_AUTO_BATCH = 32
#: the share of free device memory ``auto`` leaves unused (allocator fragmentation, cuDNN workspaces)
AUTO_MEMORY_MARGIN = 0.2
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Levers:
    """The network levers of ``sampling:`` (``batch_size: auto`` is the sampling stage's:
    :func:`auto_batch_size`). ``denoiser_precision`` None: the family's own default (ADM's
    ``imagenet.fp16``, EDM's checkpoint ``use_fp16``: fp16 on CUDA only; fp32 elsewhere).
    Which backend supports which: :data:`offshelf.backends.capabilities.LEVERS`."""

    denoiser_precision: str | None = None
    classifier_precision: str = "fp32"
    channels_last: bool = False
    compile_mode: str | None = None

    @classmethod
    def from_sampling(cls, sampling: Mapping[str, Any] | None) -> Levers:
        sampling = sampling or {}
        precision = sampling.get("precision") or {}
        compile_ = sampling.get("compile") or None
        levers = cls(denoiser_precision=precision.get("denoiser"),
                     classifier_precision=precision.get("classifier", "fp32"),
                     channels_last=bool(sampling.get("channels_last", False)),
                     compile_mode=None if not compile_ else compile_.get("mode", "default"))
        levers.check()
        return levers

    def check(self) -> None:
        """One line naming the key whose value is not a lever's (the schema says the same earlier)."""
        if self.denoiser_precision not in (None, *DENOISER_PRECISIONS):
            raise ValueError(f"config key 'sampling.precision.denoiser' = {self.denoiser_precision!r}: expected one "
                             f"of {', '.join(DENOISER_PRECISIONS)}")
        if self.classifier_precision not in CLASSIFIER_PRECISIONS:
            raise ValueError(f"config key 'sampling.precision.classifier' = {self.classifier_precision!r}: expected "
                             f"one of {', '.join(CLASSIFIER_PRECISIONS)}")
        if self.compile_mode not in (None, *COMPILE_MODES):
            raise ValueError(f"config key 'sampling.compile.mode' = {self.compile_mode!r}: expected one of "
                             f"{', '.join(COMPILE_MODES)}")

    def description(self) -> str:
        """What a shard records of its levers (compact, stable)."""
        return (f"denoiser={self.denoiser_precision or 'family default'} classifier={self.classifier_precision} "
                f"channels_last={self.channels_last} compile={self.compile_mode or 'off'}")

    def denoiser(self, net: nn.Module, clock: CompileClock | None = None) -> nn.Module:
        """``net`` with the denoiser's levers (fp16 is the family's own conversion, done by its loader)."""
        autocast = self.denoiser_precision if self.denoiser_precision in AUTOCAST_DTYPES else None
        return apply_levers(net, precision=autocast or "fp32", channels_last=self.channels_last,
                            compile=self.compile_mode, clock=clock)

    def decoder(self, vae: nn.Module) -> nn.Module:
        """A latent decoder (DiT's VAE) with channels_last: it runs inside the guidance gradient
        in fp32 (``decode`` casts to the decoder's own dtype), uncompiled."""
        return vae.to(memory_format=torch.channels_last) if self.channels_last else vae

    def classifier(self, net: nn.Module | None, clock: CompileClock | None = None) -> nn.Module | None:
        """A guiding classifier with the classifier's levers (None stays None)."""
        if net is None:
            return None
        return apply_levers(net, precision=self.classifier_precision, channels_last=self.channels_last,
                            compile=self.compile_mode, clock=clock)


class CompileClock:
    """Seconds spent compiling, shared by every network of a job (a deep copy, such as Softplus
    surgery's, keeps adding to the same clock)."""

    def __init__(self):
        self.seconds = 0.0

    def __deepcopy__(self, memo):
        return self


class LeveredNet(nn.Module):
    """``net`` run under its levers; attributes the samplers read (``img_channels``, ``null_label``,
    ``round_sigma``...) are the wrapped network's.

    Compile time: torch.compile is lazy, so the wall time of the first call with each new input
    signature (shapes, dtypes, grad mode) is counted as compile time (it includes that one call's
    own forward, a small share). Each new batch shape compiles again, as torch does."""

    def __init__(self, net: nn.Module, autocast_dtype: torch.dtype | None, channels_last: bool,
                 compile_mode: str | None, clock: CompileClock):
        super().__init__()
        self.net = net
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.compile_mode = compile_mode
        self.clock = clock
        self._compiled = None  # created at the first call: a deep copy (Softplus surgery) compiles its own
        self._signatures: set = set()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)

    def __deepcopy__(self, memo):
        import copy

        clone = LeveredNet(copy.deepcopy(self.net, memo), self.autocast_dtype, self.channels_last, self.compile_mode,
                           self.clock)
        return clone.train(self.training)

    def _input(self, value):
        if self.channels_last and isinstance(value, torch.Tensor) and value.ndim == 4 and value.is_floating_point():
            return value.contiguous(memory_format=torch.channels_last)
        return value

    def forward(self, *args, **kwargs):
        args = tuple(self._input(a) for a in args)
        run = self.net
        signature = None
        if self.compile_mode is not None:
            if self._compiled is None:
                self._compiled = torch.compile(self.net, mode=self.compile_mode)
            run = self._compiled
            signature = (tuple((tuple(a.shape), a.dtype, a.requires_grad) if isinstance(a, torch.Tensor)
                               else type(a).__name__ for a in args), torch.is_grad_enabled())
        first = signature is not None and signature not in self._signatures
        start = time.perf_counter()
        if self.autocast_dtype is not None:
            device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
            with torch.autocast(device_type, dtype=self.autocast_dtype):
                out = run(*args, **kwargs)
            out = _to_fp32(out)  # the seam: everything after the network is fp32
        else:
            out = run(*args, **kwargs)
        if first:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.clock.seconds += time.perf_counter() - start
            self._signatures.add(signature)
        return out


def _to_fp32(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float64 else out
    if isinstance(out, tuple):
        return tuple(_to_fp32(o) for o in out)
    return out


def apply_levers(net: nn.Module, *, precision: str = "fp32", channels_last: bool = False, compile: str | None = None,
                 clock: CompileClock | None = None) -> nn.Module:
    """``net`` with its levers: ``precision`` ``fp32`` or ``bf16`` (autocast, output cast to fp32),
    ``channels_last`` (weights converted in place, 4-D inputs converted per call), ``compile`` a
    torch.compile mode or None. All off: ``net`` itself, unwrapped. The compile seconds accumulate
    in ``clock`` (``net.clock``) as the compiled network first meets each input signature."""
    if precision not in ("fp32", *AUTOCAST_DTYPES):
        raise ValueError(f"apply_levers: precision {precision!r}; expected fp32 or {', '.join(AUTOCAST_DTYPES)} "
                         f"(fp16 is a family's own conversion, done by its loader)")
    if compile is not None and compile not in COMPILE_MODES:
        raise ValueError(f"apply_levers: compile mode {compile!r}; expected one of {', '.join(COMPILE_MODES)}")
    if precision == "fp32" and not channels_last and compile is None:
        return net
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return LeveredNet(net, AUTOCAST_DTYPES.get(precision), channels_last, compile, clock or CompileClock())


def compile_seconds(*nets) -> float:
    """Total compile seconds of the levered networks among ``nets`` (one clock counted once)."""
    clocks = {id(n.clock): n.clock for n in nets if isinstance(n, LeveredNet)}
    return sum(c.seconds for c in clocks.values())


# ---------------------------------------------------------------------- batch_size: auto

class _ProbeDone(Exception):
    """Raised by the probe's denoiser once the probe has seen enough of a trajectory."""


class _StopAfterCalls:
    """The denoiser, stopping the sampler (:class:`_ProbeDone`) at its ``calls + 1``-th call."""

    def __init__(self, net, calls: int):
        self.net, self.calls = net, calls

    def __call__(self, *args, **kwargs):
        if self.calls == 0:
            raise _ProbeDone
        self.calls -= 1
        return self.net(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.net, name)


#: denoiser calls a probe lets through: two cover a whole step of every sampler (Algorithm 1: the
#: denoiser then the classifier gradient; Heun: both evaluations with the gradient between them;
#: DiT: the CFG pair in one call, then the decoder gradient)
PROBE_DENOISER_CALLS = 2


def probe_sampler(sample: Callable[[Any, list[int]], Any], models: Any) -> Callable[[int], None]:
    """A probe of one job's sampling: ``probe(b)`` runs ``sample(models, seeds)`` for a batch of ``b``
    until the denoiser's :data:`PROBE_DENOISER_CALLS` + 1-th call (``models`` a dataclass with a
    ``denoiser`` field, as every built-in backend's)."""
    def probe(batch: int) -> None:
        stopped = dataclasses.replace(models, denoiser=_StopAfterCalls(models.denoiser, PROBE_DENOISER_CALLS))
        try:
            sample(stopped, list(range(batch)))
        except _ProbeDone:
            pass
    return probe


def auto_batch_size(device: torch.device | str, probe: Callable[[int], None], limit: int,
                    margin: float = AUTO_MEMORY_MARGIN) -> int:
    """``batch_size: auto``: at most ``limit`` (a shard's size). On a CPU :data:`CPU_AUTO_BATCH`.
    On CUDA: peak memory of ``probe`` at batches 1 and 2 gives a fixed and a per-sample part; the
    batch is what fills ``(1 − margin)`` of the free memory, halved until ``probe`` runs at it."""
    device = torch.device(device)
    limit = max(1, int(limit))
    if device.type != "cuda":
        return min(CPU_AUTO_BATCH, limit)

    def peak(batch: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        probe(batch)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    one, two = peak(1), peak(2)
    per_sample = max(two - one, 1)
    fixed = max(one - per_sample, 0)
    free, _ = torch.cuda.mem_get_info(device)
    batch = max(1, min(limit, math.floor((free * (1 - margin) - fixed) / per_sample)))
    while batch > 1:
        try:
            probe(batch)
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    return batch


def job_compile_seconds(models: Any) -> float:
    """Compile seconds of a job's networks: the levered networks among the fields of ``models``
    (a backend's models dataclass), their clocks counted once."""
    if not dataclasses.is_dataclass(models):
        return 0.0
    return compile_seconds(*(getattr(models, f.name) for f in dataclasses.fields(models)))


def levers_of(sampling: Mapping[str, Any] | None) -> tuple[Levers, CompileClock]:
    """The levers a job's ``sampling`` section asks for and the clock its networks share."""
    return Levers.from_sampling(sampling), CompileClock()


def denoiser_fp16(levers: Levers, family_default: bool, device: torch.device | str) -> bool:
    """Whether a family's own fp16 conversion (ADM's and EDM's ``use_fp16``) is on:
    ``sampling.precision.denoiser`` when set (fp16 on; fp32 or bf16 off), else the family's
    default. fp16 asked for explicitly off CUDA is refused: the conversion runs on CUDA only."""
    if levers.denoiser_precision is None:
        return bool(family_default)
    if levers.denoiser_precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("config key 'sampling.precision.denoiser' = 'fp16': the family's fp16 conversion runs "
                         f"on CUDA only, and the device is {torch.device(device).type}; use fp32 or bf16 here")
    return levers.denoiser_precision == "fp16"
