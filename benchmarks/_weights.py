"""Benchmark-only: a folder holding a *randomly initialised* AlexNet checkpoint under torchvision's
real file name, for timing and memory runs on machines without pretrained weights (the numbers
such a network gives are meaningless; its cost is the real one). Never used by the product."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A temporary folder removed when the benchmark's process ends (random checkpoints are
    hundreds of MB: left behind, each run would add its own to the disk)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, d, True)
    return d


def random_alexnet_dir(seed: int = 0) -> Path:
    import torch
    import torchvision.models as tvm

    from optimizer.metrics.lpips_metric import backbone_weights_file

    d = scratch_dir("imgtune-random-alexnet-")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(tvm.alexnet().state_dict(), d / backbone_weights_file("alex")[0])
    return d
