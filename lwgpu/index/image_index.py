"""FAISS over image specs: random-ConvNet features propose candidates, the exact NNGP MMD ranks them.

An image spec ``A = sum_i a_i k(z_i, .)`` is embedded as ``psi(A) = sum_i a_i phi(z_i)``, with ``phi`` the
features of random finite ConvNets of the NNGP's architecture (:class:`~lwgpu.index.image_embed.ImageFeatureMap`),
so that ``||psi(A) - psi(B)||^2`` estimates the squared MMD. :class:`ImageIndex` keeps those vectors in a
FAISS ``IDMap2,Flat`` index (exact inner products over the features; image markets hold thousands of specs,
not millions), follows its bank (:meth:`add` / :meth:`remove`), and answers
:meth:`candidates`: the ``m`` ids nearest in feature space, among admitted ids if given (an id selector).
The market re-ranks those candidates by the exact squared MMD (``ImageBank.mmd2(query, rows=...)``), so every
returned distance is exact; only which specs are looked at comes from the features.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..idsets import sorted_unique
from .ids import Selector, faiss_module
from .image_embed import ImageFeatureMap, image_features

logger = logging.getLogger(__name__)

__all__ = ["ImageIndex"]


class ImageIndex:
    """Feature-space candidates for a bank of image specs (see the module docstring).

    Parameters
    ----------
    channels : int
        Channel count C of the bank's images.
    width, n_nets, seed : int
        The random feature map (D = n_nets * width * 16 features at depth 3).
    """

    def __init__(self, channels: int, width: int = 16, n_nets: int = 4, seed: int = 0) -> None:
        self.feature_map = ImageFeatureMap(int(channels), width, n_nets, seed=seed)
        faiss = faiss_module()
        self._index = faiss.index_factory(self.feature_map.dim, "IDMap2,Flat")

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def embed(self, z: Any, beta: Any) -> np.ndarray:
        """Features (N, D) float32 of specs ``z`` (N, K, C, 32, 32), ``beta`` (N, K)."""
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        beta = torch.as_tensor(np.asarray(beta), dtype=torch.float64)
        return np.ascontiguousarray(image_features((z, beta), feature_map=self.feature_map))

    def add(self, z: Any, beta: Any, ids: Any) -> None:
        """Index specs ``z`` (N, K, C, 32, 32), ``beta`` (N, K) under ``ids`` (N,)."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if ids.size:
            self._index.add_with_ids(self.embed(z, beta), ids)

    def remove(self, ids: Any) -> None:
        """Drop ``ids`` from the index."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if ids.size:
            self._index.remove_ids(faiss_module().IDSelectorArray(ids.size, faiss_module().swig_ptr(ids)))

    def candidates(self, query: Any, m: int, allowed: Any = None) -> np.ndarray:
        """The ``m`` indexed ids (int64, nearest first) closest to the image spec ``query`` in feature space,
        only among ``allowed`` ids when given."""
        if len(self) == 0 or m < 1:
            return np.empty(0, np.int64)
        q = self.embed(query.z.detach().cpu().numpy()[None], query.beta.detach().cpu().numpy()[None])
        params = None
        if allowed is not None:
            allowed = sorted_unique(allowed)
            if allowed.size == 0:
                return np.empty(0, np.int64)
            sel = Selector(allowed, len(self))
            params = faiss_module().SearchParameters(sel=sel.sel)
        _, ids = self._index.search(q, int(min(m, len(self))), params=params)
        return ids[0][ids[0] >= 0]
