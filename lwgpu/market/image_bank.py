"""The market's bank of image specs: packed ``z`` (N, K, C, H, W) and ``beta`` (N, K) arrays, searched exactly.

Image specs (``ImageRKME``, :mod:`lwgpu.spec.image`) use the NNGP kernel of an infinitely wide ConvNet,
not the Gaussian, so they cannot share a :class:`~lwgpu.bank.SpecBank` (whose kernels are Gaussian).
An :class:`ImageBank` keeps them in plain arrays (ragged K padded with zero-weight points, which add
nothing to any kernel sum) with each spec's self term ``<B, B>`` computed once, at insertion
(``lwgpu.spec.image.image_self_terms``), and answers a query with one call of
``lwgpu.spec.image.image_mmd2_to_bank`` over the live (or the admitted) rows. One bank holds specs of
one image shape and one NNGP kernel (``model_config``; the bank key names its depth).

Persistence is a folder of ``.npy`` files (``ids``, ``z``, ``beta``, ``self``) and ``meta.json``, written whole
by :meth:`flush` into a temp folder that is swapped in (never a half-written bank). Image banks are
small next to table banks (every spec carries K images), so the O(N) rewrite on flush is fine; the
market flushes every ``autosave_every`` changes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..fsutil import make_temp_dir

logger = logging.getLogger(__name__)

FORMAT = "lwgpu.ImageBank/1"


def image_arrays(spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(z (K, C, H, W) float32, beta (K,) float64)`` of an image spec (numpy or torch attributes)."""
    z, beta = spec.z, spec.beta
    z = z.detach().cpu().numpy() if hasattr(z, "detach") else np.asarray(z)
    beta = beta.detach().cpu().numpy() if hasattr(beta, "detach") else np.asarray(beta)
    if z.ndim != 4:
        raise ValueError(f"an image spec has z of shape (K, C, H, W), got {z.shape}")
    return z.astype(np.float32), beta.astype(np.float64).reshape(-1)


class ImageBank:
    """Image specs of one image shape ``(C, H, W)`` and one NNGP kernel, under int64 ids.

    Parameters
    ----------
    path : the bank's folder (None: in memory only).
    gamma : the market's gamma (recorded; the NNGP kernel of image specs has no bandwidth of its own).
    shape : ``(C, H, W)`` of the spec points.
    model_config : the specs' ``model_config`` (the reference's; ``net_depth`` sets the kernel).
    device : where the kernel runs (``"auto"``: the GPU when there is one).
    """

    def __init__(self, path: str | os.PathLike | None, gamma: float, shape: Sequence[int],
                 model_config: dict[str, Any] | None = None, device: Any = "auto") -> None:
        self.path = None if path is None else Path(path)
        self.gamma = float(gamma)
        self.shape = tuple(int(s) for s in shape)
        self.model_config = None if model_config is None else dict(model_config)
        self.device = device
        self._ids = np.zeros(0, np.int64)
        self._z = np.zeros((0, 1, *self.shape), np.float32)
        self._beta = np.zeros((0, 1), np.float64)
        self._self = np.zeros(0, np.float64)
        self._dirty = False
        self.version = 0

    # ------------------------------------------------------------------ reads
    @property
    def ids(self) -> np.ndarray:
        v = self._ids.view()
        v.flags.writeable = False
        return v

    @property
    def z(self) -> np.ndarray:
        """(N, K, C, H, W) float32."""
        return self._z

    @property
    def beta(self) -> np.ndarray:
        """(N, K) float64 (zero for padding points)."""
        return self._beta

    @property
    def K(self) -> int:
        return int(self._z.shape[1])

    def __len__(self) -> int:
        return int(self._ids.size)

    def __repr__(self) -> str:
        return f"ImageBank(N={len(self)}, K={self.K}, shape={self.shape}, path={self.path})"

    def positions(self, ids: Any) -> np.ndarray:
        """Row positions (int64) of ``ids``; ValueError naming the ids not in the bank."""
        want = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        order = np.argsort(self._ids, kind="stable")
        ok = np.zeros(want.shape, bool)
        at = np.zeros(want.shape, np.int64)
        if len(order):
            srt = self._ids[order]
            at = np.minimum(np.searchsorted(srt, want), len(order) - 1)
            ok = srt[at] == want
        if not np.all(ok):
            raise ValueError(f"ids {want[~ok][:10].tolist()} are not in the image bank")
        return order[at]

    # ------------------------------------------------------------------ writes
    def add(self, specs: Sequence[Any], ids: Any) -> np.ndarray:
        """Append image specs under ``ids`` (one concatenation); returns the ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        specs = list(specs)
        if len(specs) != ids.size:
            raise ValueError(f"got {len(specs)} image specs for {ids.size} ids")
        if np.intersect1d(ids, self._ids).size or np.unique(ids).size != ids.size:
            raise ValueError("an id to add is already in the image bank (or repeated)")
        if not specs:
            return ids
        arrays = [image_arrays(s) for s in specs]
        for z, _ in arrays:
            if tuple(z.shape[1:]) != self.shape:
                raise ValueError(f"image spec points have shape {tuple(z.shape[1:])}; this bank holds {self.shape}")
        configs = {json.dumps(getattr(s, "model_config", None), sort_keys=True) for s in specs}
        if self.model_config is None and len(configs) == 1:
            self.model_config = getattr(specs[0], "model_config", None)
        if configs != {json.dumps(self.model_config, sort_keys=True)}:
            raise ValueError(f"image specs of model_config {sorted(configs)} cannot join a bank of "
                             f"{self.model_config} (another NNGP kernel)")
        K = max(self.K if len(self) else 1, max(z.shape[0] for z, _ in arrays))
        z_new = np.zeros((len(arrays), K, *self.shape), np.float32)
        b_new = np.zeros((len(arrays), K), np.float64)
        for i, (z, b) in enumerate(arrays):
            z_new[i, : z.shape[0]] = z
            b_new[i, : b.shape[0]] = b
        import torch

        from ..spec.image import image_self_terms

        self_new = image_self_terms(torch.from_numpy(z_new), torch.from_numpy(b_new), device=self.device,
                                    model_config=self.model_config).numpy()
        z_old, b_old = self._widen(K)
        self._z = np.concatenate([z_old, z_new])
        self._beta = np.concatenate([b_old, b_new])
        self._self = np.concatenate([self._self, self_new])
        self._ids = np.concatenate([self._ids, ids])
        self._changed()
        return ids

    def _widen(self, K: int) -> tuple[np.ndarray, np.ndarray]:
        if K == self.K:
            return self._z, self._beta
        z = np.zeros((len(self), K, *self.shape), np.float32)
        b = np.zeros((len(self), K), np.float64)
        z[:, : self.K], b[:, : self.K] = self._z, self._beta
        return z, b

    def remove(self, ids: Any) -> None:
        """Drop ``ids`` (ValueError if any is absent)."""
        pos = self.positions(np.unique(np.asarray(ids, dtype=np.int64)))
        keep = np.ones(len(self), bool)
        keep[pos] = False
        self._ids, self._z, self._beta, self._self = self._ids[keep], self._z[keep], self._beta[keep], self._self[keep]
        self._changed()

    def reconcile(self, want_ids: Any, load_specs: Callable[[np.ndarray], Sequence[Any]],
                  batch: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
        """Hold exactly ``want_ids`` (missing specs read by ``load_specs(ids)``); returns ``(removed, added)``."""
        want = np.unique(np.asarray(want_ids, dtype=np.int64).reshape(-1))
        extra, missing = np.setdiff1d(self._ids, want), np.setdiff1d(want, self._ids)
        if extra.size:
            self.remove(extra)
        for s in range(0, missing.size, int(batch)):
            part = missing[s : s + int(batch)]
            self.add(list(load_specs(part)), part)
        return extra, missing

    def _changed(self) -> None:
        self._dirty = True
        self.version += 1

    # ------------------------------------------------------------------ search
    def mmd2(self, query: Any, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact squared MMD (N,) (or (len(rows),)) of the image spec ``query`` to the bank's specs."""
        import torch

        from ..spec.image import image_mmd2_to_bank

        sel = slice(None) if rows is None else rows
        z, beta, own = self._z[sel], self._beta[sel], self._self[sel]
        if not len(z):
            return np.zeros(0, np.float64)
        if json.dumps(getattr(query, "model_config", None), sort_keys=True) != json.dumps(self.model_config,
                                                                                          sort_keys=True):
            raise ValueError(f"the query's NNGP kernel {getattr(query, 'model_config', None)} is not this bank's "
                             f"{self.model_config}")
        out = image_mmd2_to_bank(query, torch.from_numpy(np.ascontiguousarray(z)), torch.from_numpy(beta),
                                 device=self.device, bank_self=torch.from_numpy(own))
        return np.asarray(out, dtype=np.float64).reshape(-1)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the bank into the folder ``path`` (created)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "ids.npy", self._ids)
        np.save(path / "z.npy", self._z)
        np.save(path / "beta.npy", self._beta)
        np.save(path / "self.npy", self._self)
        (path / "meta.json").write_text(json.dumps({"format": FORMAT, "gamma": self.gamma, "shape": list(self.shape),
                                                    "N": len(self), "K": self.K, "model_config": self.model_config}))

    @classmethod
    def load(cls, path: str | os.PathLike, device: Any = "auto") -> "ImageBank":
        """Read a bank written by :meth:`save` / :meth:`flush` (ValueError if it is not one)."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} holds no image bank ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT}")
        bank = cls(path, meta["gamma"], meta["shape"], meta.get("model_config"), device=device)
        bank._ids = np.load(path / "ids.npy")
        bank._z = np.load(path / "z.npy")
        bank._beta = np.load(path / "beta.npy")
        bank._self = np.load(path / "self.npy")
        if not (len(bank._ids) == len(bank._z) == len(bank._beta) == len(bank._self) == meta["N"]):
            raise ValueError(f"{path}: the image bank's files disagree on N")
        return bank

    def flush(self) -> None:
        """Write the bank to its folder if it changed (a temp folder swapped in: never half-written)."""
        if self.path is None or not self._dirty:
            return
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(parent, prefix=f".{self.path.name}.")
        self.save(tmp)
        old = parent / f".old.{self.path.name}"
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
        self._dirty = False

    def close(self) -> None:
        self.flush()
