"""Randomly initialised checkpoints under the real file names, for tests only.

No pretrained weights can be downloaded here (nor in CI): the production loaders read these
files exactly as they would the real ones, and the reference implementations are built from the
same tensors. The numbers such networks give are meaningless; their equality with the
references, and the code paths, are what the tests check.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
import torchvision
from pytorch_fid import inception as pfi


def random_fid_state() -> dict[str, torch.Tensor]:
    """Every tensor of `fid_inception_v3`'s architecture, drawn from a seeded generator.

    torchvision skips its own initialisation for pytorch-fid (init_weights=False), so we set
    every tensor: He-normal convolutions keep activations alive through 94 layers (features
    neither vanish nor blow up), and batch-norm statistics away from 0 / 1 prove they are used.
    """
    with (
        mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(
            torchvision.models.inception.Inception3, "load_state_dict", lambda *a, **k: None
        ),
    ):
        arch = pfi.fid_inception_v3()
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, t in arch.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(t)
        elif t.ndim >= 2:
            state[name] = torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(t.shape, generator=g)
        elif name.endswith(("running_mean", "bias")):
            state[name] = 0.1 * torch.randn(t.shape, generator=g)
        else:
            state[name] = 1 + 0.1 * torch.randn(t.shape, generator=g)
    return state


def random_vgg16_features(seed: int = 0) -> torch.nn.Sequential:
    """VGG16's `features` (13 convolutions, as torchvision builds them) with He-normal weights;
    the 120M-parameter classifier a whole `vgg16()` would allocate is never made."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(seed)
    features = make_layers(cfgs["D"], batch_norm=False)
    for m in features.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.normal_(m.bias, 0, 0.01)
    return features


def save_vgg16(folder: Path, features: torch.nn.Sequential) -> Path:
    """`features` saved as torchvision's checkpoint saves them ('features.N.weight', ...)."""
    from optimizer.metrics.dists_metric import vgg16_weights_file

    path = Path(folder) / vgg16_weights_file()[0]
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def save_fid_inception(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    from optimizer.metrics.set_metrics import FID_WEIGHTS_FILE

    path = Path(folder) / FID_WEIGHTS_FILE
    torch.save(state, path)
    return path
