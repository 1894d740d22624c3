"""``torchvision.transforms.Resize`` for float tensors (N, C, H, W): bilinear, antialiased."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class Resize:
    """Resize the last two dimensions of a tensor to ``size`` (bilinear, ``antialias`` as given)."""

    def __init__(self, size: int | Sequence[int], antialias: bool = True) -> None:
        self.size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        self.antialias = bool(antialias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.dim() == 3
        xb = x.unsqueeze(0) if squeeze else x
        out = F.interpolate(xb, size=self.size, mode="bilinear", align_corners=False, antialias=self.antialias)
        return out[0] if squeeze else out
