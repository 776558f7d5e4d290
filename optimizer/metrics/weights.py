"""Where the pretrained networks' checkpoints come from, for every metric that needs one.

LPIPS (AlexNet / SqueezeNet / VGG16 backbones), DISTS (VGG16) and the set metrics FID and KID
(pytorch-fid's Inception) all follow one rule: look in an explicit weights folder
(`--weights DIR` / `IMGTUNE_WEIGHTS`: offline machines, nothing is downloaded then), else in the
torch hub cache, else download the file once into that cache. When none works,
`WeightsMissingError` names the file, where to put it and what to use instead. We never score
with random or different weights: a file that does not load, or whose tensors do not fit the
architecture, is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..errors import ImgtuneError

__all__ = [
    "WEIGHT_FREE",
    "WeightsMissingError",
    "find_checkpoint",
    "frozen",
    "hub_checkpoints",
    "load_state",
    "match_state",
]

#: the per-image metrics that need no download
WEIGHT_FREE = "ssim,ms_ssim,psnr,ssimulacra2"


class WeightsMissingError(ImgtuneError, RuntimeError):
    """A network checkpoint is neither on disk nor downloadable, or is not the right file."""


def hub_checkpoints() -> Path:
    """The torch hub cache's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hash_prefix(name: str) -> str | None:
    # torchvision names checkpoints '<model>-<sha256 prefix>.pth'; torch.hub checks that prefix.
    m = re.search(r"-([a-f0-9]{6,})\.", name)
    return m.group(1) if m else None


def find_checkpoint(
    name: str,
    url: str,
    *,
    needs: str,
    instead: str,
    weights_dir: str | Path | None = None,
    allow_download: bool = True,
    check_hash: bool = True,
) -> Path:
    """Path of checkpoint `name`, downloading it once from `url` into the torch cache if allowed.

    `needs` says who needs it ("LPIPS (alex) needs torchvision's backbone weights") and
    `instead` what to do without it ("leave LPIPS out with --metrics ..."): both go into the
    error. With `weights_dir` only that folder is looked in (an offline machine's explicit
    choice). `check_hash`: the name's '-<hex>.' part is the file's sha256 prefix (torchvision's
    convention) and a download must match it.
    """
    if weights_dir is not None:
        path = Path(weights_dir) / name
        if path.is_file():
            return path
        raise WeightsMissingError(
            f"{needs} '{name}', which are not in {weights_dir}. Download {url} on a machine "
            f"with network access and put it there, or {instead}."
        )
    cached = hub_checkpoints() / name
    if cached.is_file():
        return cached
    problem = "downloads are disabled"
    if allow_download:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                url, str(cached), hash_prefix=_hash_prefix(name) if check_hash else None
            )
            return cached
        except Exception as exc:  # noqa: BLE001 - any failure means "not available", said below
            problem = f"the download failed: {type(exc).__name__}: {exc}"
    raise WeightsMissingError(
        f"{needs} '{name}': not in the torch cache ({cached.parent}) and {problem}. Put the file "
        f"from {url} in that folder or in a folder given with --weights DIR / IMGTUNE_WEIGHTS, "
        f"or {instead}."
    )


def load_state(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file; a file that does not load is named in the error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file is reported with its name
        raise WeightsMissingError(f"{what} {path} could not be read: {exc}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise WeightsMissingError(f"{what} {path} is not a state dict of tensors")
    return dict(state)


def match_state(
    own: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    source: str | Path,
    what: str,
    key: Callable[[str], str] = lambda k: k,
) -> dict[str, torch.Tensor]:
    """`own`'s keys filled from `given` (looked up as `key(name)`), every shape checked.

    A missing tensor or a wrong shape is a `WeightsMissingError` naming the file and the tensor.
    """
    mapped = {}
    for name, tensor in own.items():
        theirs = key(name)
        if theirs not in given:
            raise WeightsMissingError(f"{source} is not {what}: it lacks '{theirs}'")
        if given[theirs].shape != tensor.shape:
            raise WeightsMissingError(
                f"{source}: '{theirs}' has shape {tuple(given[theirs].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
        mapped[name] = given[theirs]
    return mapped


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """`module` in eval mode with no parameter needing a gradient: a metric's fixed network
    (candidates stay differentiable through it)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
