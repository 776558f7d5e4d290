"""What every metric shares: input checks, the device choice, and the small Metric interface."""

from __future__ import annotations

import dataclasses
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .catalog import MetricOutput

__all__ = [
    "Metric",
    "MetricOutput",
    "check_images",
    "check_pair",
    "compiled",
    "percentile",
    "map_tensors",
    "pick_state",
    "resolve_device",
    "stack_states",
    "state_nbytes",
]


_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; else `cpu`, `cuda` or `cuda:N` with N one of
    this machine's devices. Anything else (`meta`, `mps`, `cuda:7` on a one-GPU machine) is a
    one-line ValueError now, not a traceback later."""
    text = str(device).strip().lower()
    m = _DEVICE.fullmatch(text)
    if not m or (m.group(1) != "cuda" and m.group(2) is not None):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {text!r} asked for, but no CUDA device is available here")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ValueError(
            f"device {text!r} asked for, but this machine has {count} CUDA device"
            f"{'s' if count != 1 else ''} (cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})"
        )
    return torch.device(text)


def map_tensors(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`state` (a metric's prepared reference: tensors in dataclasses, lists, tuples and dicts)
    with `fn` applied to every tensor; everything else as it is."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(
            state,
            **{f.name: map_tensors(getattr(state, f.name), fn) for f in dataclasses.fields(state)},
        )
    if isinstance(state, list | tuple):
        return type(state)(map_tensors(v, fn) for v in state)
    if isinstance(state, dict):
        return {k: map_tensors(v, fn) for k, v in state.items()}
    return state


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a prepared reference (each storage counted once)."""
    seen: dict[int, int] = {}

    def count(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    map_tensors(state, count)
    return sum(seen.values())


def stack_states(states: Sequence[Any]) -> Any:
    """Prepared references of several images (each tensor's batch dimension 1) as one whose
    tensors hold them in order along that dimension: what lets one batch score candidates of
    different images, candidate i against reference i. Everything that is not a tensor (sizes)
    must be equal; a difference is a ValueError (the images cannot share a batch)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        if any(s.shape[1:] != first.shape[1:] or s.shape[0] != 1 for s in states):
            raise ValueError("prepared tensors differ in shape: the images cannot be batched")
        return torch.cat(list(states), dim=0)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first,
            **{
                f.name: stack_states([getattr(s, f.name) for s in states])
                for f in dataclasses.fields(first)
            },
        )
    if isinstance(first, list | tuple):
        if any(len(s) != len(first) for s in states):
            raise ValueError("prepared states differ in length: the images cannot be batched")
        return type(first)(stack_states(parts) for parts in zip(*states, strict=True))
    if isinstance(first, dict):
        return {k: stack_states([s[k] for s in states]) for k in first}
    if any(s != first for s in states):
        raise ValueError(f"prepared states differ ({first!r}): the images cannot be batched")
    return first


def pick_state(state: Any, i: int) -> Any:
    """The i-th image's part of a state `stack_states` made (a state of one image is its own
    part, whatever i)."""
    return map_tensors(state, lambda t: t if t.shape[0] == 1 else t[i : i + 1])


def check_images(x: torch.Tensor, what: str = "images") -> None:
    """Raise (never assert) unless `x` is a float NCHW tensor with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{what} must be NCHW (4 dimensions), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be floating point in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        lo, hi = float(x.min()), float(x.max())
        raise ValueError(
            f"{what} must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; divide 8-bit pixels by 255"
        )


def check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    check_images(x, "candidates")
    check_images(y, "reference")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"candidate shape {tuple(x.shape[1:])} differs from reference shape "
            f"{tuple(y.shape[1:])} (C, H, W)"
        )
    if y.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"reference batch {y.shape[0]} must be 1 or match candidates {x.shape[0]}")


class Metric(ABC):
    """A full-reference metric: `prepare` the reference once, then `score` batches against it.

    Inputs are float tensors in [0, 1], NCHW, on `self.device`. `score` returns one (N,) tensor per
    entry of `outputs`. Implementations are differentiable in the candidates.
    """

    name: str
    outputs: tuple[MetricOutput, ...]
    #: smallest width/height the metric can score
    min_side: int = 1
    #: bumped when a change alters the numbers; part of every cache key
    version: str = "1"
    #: peak bytes per pixel this metric adds to a folder job's working set beyond the shared
    #: estimate (`batch.WORKING_SET_PER_PIXEL`): the large networks' feature maps (measured)
    working_set_per_pixel: int = 0
    #: sRGB backgrounds alpha is composited over before scoring (the lower score counts);
    #: None: the suite's default, black and white
    alpha_backgrounds: tuple[tuple[float, float, float], ...] | None = None

    def __init__(self, device: str | torch.device = "auto") -> None:
        self.device = resolve_device(device)

    @abstractmethod
    def prepare(self, reference: torch.Tensor) -> Any:
        """Everything about the (1, C, H, W) reference that does not depend on the candidate."""

    @abstractmethod
    def score(self, candidates: torch.Tensor, prepared: Any) -> dict[str, torch.Tensor]:
        """Score an (N, C, H, W) batch against a prepared reference."""

    def __call__(
        self, candidates: torch.Tensor, reference: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        check_pair(candidates, reference)
        return self.score(candidates, self.prepare(reference))


def percentile(values: torch.Tensor, q: float, *, method: str | None = None) -> torch.Tensor:
    """Row-wise percentile of (N, M) `values`, linear interpolation as numpy's default.

    Works on maps larger than `torch.quantile` accepts (2**24 values). `method`: ``select``
    (`kthvalue`: the CPU's default, no copy sorted) or ``sort`` (one sort per row, both order
    statistics read from it: CUDA's default, where `kthvalue` runs a row in one thread block);
    the two give the same values exactly.
    """
    m = values.shape[1]
    pos = q / 100.0 * (m - 1)
    lo = int(pos)
    hi = min(lo + 1, m - 1)
    if method is None:
        method = "sort" if values.device.type == "cuda" else "select"
    if method == "sort":
        ordered = values.sort(dim=1).values
        v_lo, v_hi = ordered[:, lo], ordered[:, hi]
    elif method == "select":
        v_lo = values.kthvalue(lo + 1, dim=1).values
        v_hi = v_lo if hi == lo else values.kthvalue(hi + 1, dim=1).values
    else:
        raise ValueError(f"percentile method must be 'select' or 'sort', not {method!r}")
    if hi == lo:
        return v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


def compiled(fn):
    """`fn` through `torch.compile` (fused kernels; shapes dynamic, so one compilation serves
    every image size). Compiling costs seconds once per process (less with the on-disk cache)
    and needs a C++ compiler on the CPU; if it fails, a warning is printed and `fn` runs as is.
    """
    state: dict[str, Any] = {"fn": None}

    def call(*args):
        if state["fn"] is None:
            state["fn"] = torch.compile(fn, dynamic=True)
        try:
            return state["fn"](*args)
        except (torch.OutOfMemoryError, MemoryError):
            raise  # out of memory is not a compiler failure: eager kernels would hit it again
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, never fail
            if state["fn"] is fn:
                raise
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {exc}); using eager kernels",
                RuntimeWarning,
                stacklevel=2,
            )
            state["fn"] = fn
            return fn(*args)

    return call
