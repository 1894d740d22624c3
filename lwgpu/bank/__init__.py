"""SpecBank: many RKMEs packed as arrays (ids, z, beta, self terms), in memory, on a device, or memory-mapped.

Layout (N specs, at most K points each, dimension d):

- ``ids``        np.int64 (N,)       unique spec ids, aligned with every other array
- ``z``          torch (N, K, d)     float32 points; specs with fewer than K points are padded with zeros
- ``beta``       torch (N, K)        weights; padding points carry weight 0 (so they change no sum)
- ``counts``     np.int32 (N,)       each spec's own number of points (padding starts there)
- ``self_inner`` torch float64 (N,)  ``<B, B>``, computed once at insertion, in float64, from the stored z

One bank holds one ``gamma`` and one ``d``; adding a spec with another is refused with a ValueError.
``save(dir)`` writes one ``.npy`` file per array plus ``meta.json``; ``SpecBank.load(dir, mmap=True)``
maps them without reading, so a bank larger than RAM is scanned tile by tile by the kernels.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .device import resolve_device, resolve_dtype
from .spec.validation import check_gamma, same_gamma

logger = logging.getLogger(__name__)

FORMAT = "lwgpu.SpecBank/1"
_ARRAYS = ("ids", "z", "beta", "counts", "self_inner")


def self_terms(
    z: torch.Tensor, beta: torch.Tensor, gamma: float, tile_elems: int = 1 << 22, backend: str = "auto"
) -> torch.Tensor:
    """``<B_n, B_n>`` for every spec, in float64, tiled over specs.

    z: (N, K, d), beta: (N, K) -> float64 (N,) on z's device, exact to float64 rounding for the stored
    (float32) points: the numba kernel on a CPU (explicit differences), else torch blocks of specs
    centred on their own mean (so the expansion |a|^2 + |b|^2 - 2ab loses nothing in float64).
    """
    n, k, d = z.shape
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if z.device.type == "cpu" and n * k > 0 and backend != "torch":
        from .device import numba_available

        if numba_available():  # float64 numba kernel: ~10x faster than the torch blocks on a CPU
            from .kernels.numba_mmd import self_terms as numba_self_terms

            return numba_self_terms(z, beta, gamma)
    out = torch.empty(n, dtype=torch.float64, device=z.device)
    step = max(1, tile_elems // max(1, k * max(k, d)))
    for s in range(0, n, step):
        zt = z[s : s + step].to(torch.float64)
        zt = zt - zt.mean(1, keepdim=True)  # MMD is shift invariant; centring keeps the expansion exact
        bt = beta[s : s + step].to(torch.float64)
        sq = (zt * zt).sum(-1)
        d2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], zt, zt.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
        out[s : s + step] = torch.einsum("ni,nij,nj->n", bt, d2.mul_(-gamma).exp_(), bt)
    return out


def _as_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"ids must be a 1-D sequence of {n} integers, got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if len(np.unique(arr)) != n:
        raise ValueError("ids must be unique; the given ids contain duplicates")
    return arr


class SpecBank:
    """An empty bank for specs of dimension ``d`` under kernel bandwidth ``gamma``.

    Use :meth:`from_specs` / :meth:`from_arrays` / :meth:`load` to build a filled one, then
    :meth:`add` / :meth:`remove`. All arrays stay aligned with ``ids``.
    """

    def __init__(self, gamma: float, d: int, K: int = 0, dtype: Any = None, device: Any = "cpu") -> None:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d!r}")
        self.gamma: float = check_gamma(gamma)
        self.d: int = int(d)
        dt, dev = resolve_dtype(dtype), resolve_device(device)
        self._set_arrays(
            np.empty(0, np.int64), torch.zeros(0, int(K), self.d, dtype=dt, device=dev),
            torch.zeros(0, int(K), dtype=dt, device=dev), np.empty(0, np.int32),
            torch.zeros(0, dtype=torch.float64, device=dev),
        )

    # ------------------------------------------------------------------ construction
    def _set_arrays(self, ids, z, beta, counts, self_inner) -> None:
        self.ids: np.ndarray = ids
        self.z: torch.Tensor = z
        self.beta: torch.Tensor = beta
        self.counts: np.ndarray = counts
        self.self_inner: torch.Tensor = self_inner
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_arrays(
        cls, z: Any, beta: Any, gamma: float, ids: Any = None, counts: Any = None, dtype: Any = None,
        device: Any = "cpu",
    ) -> "SpecBank":
        """Pack ``z`` (N, K, d) and ``beta`` (N, K) without making N Python objects.

        A float32 contiguous numpy/torch ``z`` on the target device is used without a copy.
        ``counts`` (N,) gives each spec's own number of points (default: K, i.e. up to the last
        nonzero weight is all real). ``ids`` default to 0..N-1.
        """
        dt, dev = resolve_dtype(dtype), resolve_device(device)
        z_t = torch.as_tensor(z).detach().to(device=dev, dtype=dt)
        b_t = torch.as_tensor(beta).detach().to(device=dev, dtype=dt)
        if z_t.dim() != 3:
            raise ValueError(f"z must have shape (N, K, d), got {tuple(z_t.shape)}")
        n, k, d = z_t.shape
        if tuple(b_t.shape) != (n, k):
            raise ValueError(f"beta must have shape (N, K) = {(n, k)} to match z, got {tuple(b_t.shape)}")
        if d < 1:
            raise ValueError("z has d=0 columns; specs need at least one dimension")
        if not (bool(torch.isfinite(z_t).all()) and bool(torch.isfinite(b_t).all())):
            raise ValueError("z or beta contains NaN/Inf; every value must be finite")
        bank = cls(gamma, d, k, dtype=dt, device=dev)
        ids_a = np.arange(n, dtype=np.int64) if ids is None else _as_ids(ids, n)
        cnt = np.full(n, k, np.int32) if counts is None else np.asarray(counts, np.int32).reshape(n)
        if n and (cnt.min() < 0 or cnt.max() > k):
            raise ValueError(f"counts must lie in [0, K={k}]")
        if counts is not None and k:  # padding must carry zero weight
            pad = torch.as_tensor(np.arange(k)[None, :] >= cnt[:, None], device=dev)
            b_t = b_t.masked_fill(pad, 0.0)
        bank._set_arrays(ids_a, z_t, b_t, cnt, self_terms(z_t, b_t, bank.gamma))
        return bank

    @classmethod
    def from_specs(cls, specs: Sequence[Any], ids: Any = None, gamma: float | None = None,
                   dtype: Any = None, device: Any = "cpu") -> "SpecBank":
        """Pack a list of RKMEs (ragged K allowed: shorter specs are padded with zero weights)."""
        specs = list(specs)
        if not specs:
            if gamma is None:
                raise ValueError("from_specs got no specs: pass gamma= (and use SpecBank(gamma, d)) for an empty bank")
            raise ValueError("from_specs got no specs; build an empty bank with SpecBank(gamma, d)")
        g, d = cls._check_specs(specs, gamma if gamma is not None else specs[0].gamma, None)
        z, beta, cnt = cls._pack(specs, d)
        return cls.from_arrays(z, beta, g, ids=ids, counts=cnt, dtype=dtype, device=device)

    @staticmethod
    def _check_specs(specs: Sequence[Any], gamma: float, d: int | None) -> tuple[float, int]:
        for i, s in enumerate(specs):
            if not all(hasattr(s, a) for a in ("z", "beta", "gamma")):
                raise ValueError(f"spec {i} is a {type(s).__name__}, not an RKME (needs z, beta, gamma)")
            if not same_gamma(s.gamma, gamma):
                raise ValueError(
                    f"spec {i} has gamma={s.gamma} but the bank uses gamma={gamma}; a bank holds one kernel, "
                    "refit the spec with the bank's gamma"
                )
            sd = int(s.z.shape[1])
            if d is None:
                d = sd
            elif sd != d:
                raise ValueError(f"spec {i} has dimension d={sd} but the bank holds d={d}")
        return float(gamma), int(d)

    @staticmethod
    def _pack(specs: Sequence[Any], d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cnt = np.array([int(s.z.shape[0]) for s in specs], np.int32)
        k = int(cnt.max())
        z = np.zeros((len(specs), k, d), np.float32)
        beta = np.zeros((len(specs), k), np.float32)
        for i, s in enumerate(specs):
            zi, bi = (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in (s.z, s.beta))
            z[i, : cnt[i]] = zi
            beta[i, : cnt[i]] = bi
        return z, beta, cnt

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def K(self) -> int:
        """Padded number of points per spec."""
        return int(self.z.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.z.dtype

    @property
    def device(self) -> torch.device:
        return self.z.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the bank's arrays (z, beta, self terms, ids, counts)."""
        t = sum(x.numel() * x.element_size() for x in (self.z, self.beta, self.self_inner))
        return int(t + self.ids.nbytes + self.counts.nbytes)

    def __repr__(self) -> str:
        return (f"SpecBank(N={len(self)}, K={self.K}, d={self.d}, gamma={self.gamma}, "
                f"dtype={str(self.dtype).replace('torch.', '')}, device={self.device})")

    def tiles(self, size: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` row ranges of at most ``size`` specs covering the bank."""
        size = max(1, int(size))
        for s in range(0, len(self), size):
            yield s, min(s + size, len(self))

    # ------------------------------------------------------------------ ids
    def positions(self, ids: Any) -> np.ndarray:
        """Row positions (int64) of the given ids; a ValueError names the ids not in the bank."""
        want = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if self._sorted is None:
            order = np.argsort(self.ids, kind="stable")
            self._sorted = (self.ids[order], order)
        sid, order = self._sorted
        at = np.searchsorted(sid, want).clip(0, max(len(sid) - 1, 0))
        ok = (sid[at] == want) if len(sid) else np.zeros(len(want), bool)
        if not ok.all():
            missing = want[~ok][:10].tolist()
            raise ValueError(f"ids {missing} are not in the bank")
        return order[at].astype(np.int64)

    def __contains__(self, spec_id: Any) -> bool:
        try:
            self.positions([spec_id])
            return True
        except ValueError:
            return False

    def get(self, spec_id: int) -> Any:
        """The RKME stored under ``spec_id`` (its own K points, padding dropped)."""
        from .spec.rkme import RKME

        p = int(self.positions([spec_id])[0])
        k = int(self.counts[p])
        return RKME(self.z[p, :k], self.beta[p, :k], self.gamma, dtype=self.dtype, device=self.device)

    def rows(self, start: int, stop: int) -> "SpecBank":
        """A view of rows [start, stop) sharing memory with this bank (no copy; do not mutate both)."""
        out = SpecBank(self.gamma, self.d, self.K, dtype=self.dtype, device=self.device)
        out._set_arrays(self.ids[start:stop], self.z[start:stop], self.beta[start:stop],
                        self.counts[start:stop], self.self_inner[start:stop])
        return out

    def subset(self, ids: Any) -> "SpecBank":
        """A new bank with the given ids, in the given order (copies the rows)."""
        pos = self.positions(ids)
        idx = torch.as_tensor(pos, device=self.device)
        out = SpecBank(self.gamma, self.d, self.K, dtype=self.dtype, device=self.device)
        out._set_arrays(self.ids[pos].copy(), self.z.index_select(0, idx), self.beta.index_select(0, idx),
                        self.counts[pos].copy(), self.self_inner.index_select(0, idx))
        return out

    # ------------------------------------------------------------------ mutation
    def add(self, specs: Any, ids: Any = None) -> np.ndarray:
        """Append specs (a list of RKMEs, one RKME, or a SpecBank); returns their ids (int64).

        Self terms are computed here, once. Default ids continue after the largest id in the bank.
        A spec with more points than the bank's K widens the bank (all specs re-padded).
        """
        if isinstance(specs, SpecBank):
            other = specs
            self._check_specs([_Shim(other.gamma, other.d)], self.gamma, self.d)
            z_new, b_new, c_new, s_new = other.z, other.beta, other.counts, other.self_inner
            if ids is None and len(other):
                ids = other.ids if not np.isin(other.ids, self.ids).any() else None
        else:
            specs = [specs] if hasattr(specs, "z") else list(specs)
            if not specs:
                return np.empty(0, np.int64)
            self._check_specs(specs, self.gamma, self.d)
            z_np, b_np, c_new = self._pack(specs, self.d)
            z_new = torch.from_numpy(z_np)
            b_new = torch.from_numpy(b_np)
            s_new = None
        m = int(z_new.shape[0])
        start = int(self.ids.max()) + 1 if len(self) else 0
        new_ids = np.arange(start, start + m, dtype=np.int64) if ids is None else _as_ids(ids, m)
        clash = np.intersect1d(new_ids, self.ids)
        if clash.size:
            raise ValueError(f"ids {clash[:10].tolist()} are already in the bank; remove them first or pass new ids")
        z_new = z_new.to(self.device, self.dtype)
        b_new = b_new.to(self.device, self.dtype)
        s_new = self_terms(z_new, b_new, self.gamma) if s_new is None else s_new.to(self.device)
        k = max(self.K, int(z_new.shape[1]))
        z_old, b_old = self._pad(self.z, self.beta, k)
        z_new, b_new = self._pad(z_new, b_new, k)
        self._set_arrays(
            np.concatenate([self.ids, new_ids]), torch.cat([z_old, z_new]), torch.cat([b_old, b_new]),
            np.concatenate([self.counts, np.asarray(c_new, np.int32)]), torch.cat([self.self_inner, s_new]),
        )
        return new_ids

    @staticmethod
    def _pad(z: torch.Tensor, beta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = k - int(z.shape[1])
        if extra <= 0:
            return z, beta
        return (torch.nn.functional.pad(z, (0, 0, 0, extra)), torch.nn.functional.pad(beta, (0, extra)))

    def remove(self, ids: Any) -> None:
        """Drop the given ids (ValueError if any is absent); the remaining rows stay aligned."""
        pos = self.positions(ids)
        keep = np.ones(len(self), bool)
        keep[pos] = False
        idx = torch.as_tensor(np.nonzero(keep)[0], device=self.device)
        self._set_arrays(self.ids[keep], self.z.index_select(0, idx), self.beta.index_select(0, idx),
                         self.counts[keep], self.self_inner.index_select(0, idx))

    def to(self, device: Any = None, dtype: Any = None) -> "SpecBank":
        """A copy on ``device`` in ``dtype`` (self terms stay float64)."""
        dev = self.device if device is None else resolve_device(device)
        dt = self.dtype if dtype is None else resolve_dtype(dtype)
        out = SpecBank(self.gamma, self.d, self.K, dtype=dt, device=dev)
        out._set_arrays(self.ids.copy(), self.z.to(dev, dt), self.beta.to(dev, dt), self.counts.copy(),
                        self.self_inner.to(dev))
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``ids/z/beta/counts/self_inner.npy`` + ``meta.json`` into ``directory`` (temp + rename)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        arrays = {"ids": self.ids, "counts": self.counts}
        for name in ("z", "beta", "self_inner"):
            arrays[name] = getattr(self, name).detach().cpu().numpy()
        for name, arr in arrays.items():
            tmp = root / f".{name}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, root / f"{name}.npy")
        meta = {"format": FORMAT, "gamma": self.gamma, "d": self.d, "K": self.K, "N": len(self),
                "dtype": str(self.dtype).replace("torch.", "")}
        tmp = root / ".meta.tmp.json"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, root / "meta.json")

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True, device: Any = "cpu") -> "SpecBank":
        """Open a saved bank; ``mmap=True`` maps the arrays (copy-on-write) instead of reading them."""
        root = Path(directory)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise ValueError(f"{root} holds no saved SpecBank (meta.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        arr = {n: np.load(root / f"{n}.npy", mmap_mode="c" if mmap else None) for n in _ARRAYS}
        n = int(meta["N"])
        if any(a.shape[0] != n for a in arr.values()):
            raise ValueError(f"{root}: array lengths disagree with meta N={n}; the bank files are inconsistent")
        dev = resolve_device(device)
        bank = cls(meta["gamma"], meta["d"], meta["K"], dtype=meta["dtype"], device=dev)
        bank._set_arrays(np.asarray(arr["ids"]), torch.from_numpy(arr["z"]).to(dev),
                         torch.from_numpy(arr["beta"]).to(dev), np.asarray(arr["counts"]),
                         torch.from_numpy(arr["self_inner"]).to(dev))
        return bank


class _Shim:
    """Minimal spec-like object so a SpecBank's gamma/d go through the same check as RKMEs."""

    def __init__(self, gamma: float, d: int) -> None:
        self.gamma, self.z, self.beta = gamma, torch.zeros(0, d), torch.zeros(0)


def as_bank(queries: Any, gamma: float | None = None) -> SpecBank:
    """Queries (RKME, list of RKMEs, or SpecBank) as a SpecBank (no copy for a bank)."""
    if isinstance(queries, SpecBank):
        return queries
    if hasattr(queries, "z") and hasattr(queries, "beta"):
        queries = [queries]
    if isinstance(queries, Iterable):
        queries = list(queries)
        if not queries:
            raise ValueError("no queries given: pass an RKME, a non-empty list of RKMEs, or a SpecBank")
        return SpecBank.from_specs(queries)
    raise ValueError(f"queries must be an RKME, a list of RKMEs or a SpecBank, got {type(queries).__name__}")
