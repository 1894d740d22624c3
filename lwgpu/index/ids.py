"""FAISS helpers of SpecIndex: order-free id checksums, id selectors, search parameters, listing ids, GPU clones."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .. import settings
from .layout import filtered_probe

logger = logging.getLogger(__name__)


def faiss_module() -> Any:
    """The ``faiss`` module (ImportError naming the extra to install)."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is an install requirement of the cpu/gpu extras
        raise ImportError("SpecIndex needs FAISS: pip install 'lwgpu[cpu]' (faiss-cpu) or 'lwgpu[gpu]'") from exc
    return faiss


def id_checksum(ids: Any) -> int:
    """Order-free 64-bit checksum of a set of int64 ids: the sum (mod 2**64) of splitmix64(id).

    Two id sets with equal counts and checksums are the same set with overwhelming probability.
    """
    x = np.asarray(ids, dtype=np.int64).reshape(-1).view(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        return int(x.sum(dtype=np.uint64))


class Selector:
    """A FAISS IDSelector over ``allowed`` (sorted unique int64 ids), keeping its buffer alive.

    A bitmap (``IDSelectorBitmap``: one bit per id up to the largest; built with numpy in a few ms
    at 10**6 ids) while the largest id is below ``INDEX_BITMAP_IDS_PER_SPEC * n_index + 2**20``;
    otherwise a hash set (``IDSelectorBatch``).
    """

    def __init__(self, allowed: np.ndarray, n_index: int) -> None:
        faiss = faiss_module()
        self.allowed = allowed
        top = int(allowed[-1]) if allowed.size else -1
        if allowed.size and allowed[0] >= 0 and top < settings.INDEX_BITMAP_IDS_PER_SPEC * n_index + (1 << 20):
            mask = np.zeros(top + 1, dtype=bool)
            mask[allowed] = True
            self._buf = np.packbits(mask, bitorder="little")
            self.sel = faiss.IDSelectorBitmap(len(self._buf), faiss.swig_ptr(self._buf))  # n in bytes
            self.kind = "bitmap"
        else:
            self._buf = np.ascontiguousarray(allowed, dtype=np.int64)
            self.sel = faiss.IDSelectorBatch(len(self._buf), faiss.swig_ptr(self._buf))
            self.kind = "batch"


def indexed_ids(index: Any) -> np.ndarray:
    """Every id stored in a FAISS index (unsorted int64): an IDMap's id map, or an IVF's lists."""
    faiss = faiss_module()
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ValueError(f"cannot list the ids of a {type(index).__name__}: build it with IDMap or IVF")
    inv = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = inv.list_size(lst)
        if size:
            ptr = inv.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            inv.release_ids(lst, ptr)
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def faiss_search(index: Any, x: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` with search parameters; an IVF answering one query probes its lists on every thread."""
    ivf = faiss_module().try_extract_index_ivf(index) if len(x) == 1 else None
    if ivf is not None:
        ivf.parallel_mode = 1  # parallel over the probed lists, not over the (single) query
    try:
        return index.search(x, k, params=params)
    finally:
        if ivf is not None:
            ivf.parallel_mode = 0


def search_params(layout: Any, probe: int | None, n_search: int, sel: Selector | None, fraction: float,
                  ntotal: int) -> Any:
    """FAISS search parameters of a ``layout``: probe count ``probe`` (nprobe / efSearch, raised for a selector
    admitting ``fraction`` of the ``ntotal`` entries by :func:`~lwgpu.index.layout.filtered_probe`) and selector."""
    faiss = faiss_module()
    kw: dict[str, Any] = {} if sel is None else {"sel": sel.sel}
    if layout.kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=filtered_probe(int(probe), fraction, int(layout.nlist)), **kw)
    if layout.kind == "hnsw":
        ef = filtered_probe(max(int(probe), n_search), fraction, max(ntotal, n_search))
        return faiss.SearchParametersHNSW(efSearch=ef, **kw)
    return faiss.SearchParameters(**kw)


def gpu_clone(index: Any, device: Any, res: Any = None) -> tuple[Any, Any]:
    """(GPU copy of a CPU FAISS index on ``device``, its StandardGpuResources); the CPU index itself when
    the layout has no GPU version (logged)."""
    faiss = faiss_module()
    try:
        res = faiss.StandardGpuResources() if res is None else res
        return faiss.index_cpu_to_gpu(res, device.index or 0, index), res
    except Exception as exc:  # noqa: BLE001 - e.g. HNSW has no GPU version
        logger.warning("SpecIndex: %s stays on CPU (%s)", type(index).__name__, exc)
        return index, res


def remove_ids(index: Any, ids: np.ndarray) -> int | None:
    """Remove ``ids`` from a FAISS index in place; the number removed, or None where the layout cannot
    delete (fast-scan PQ lists, ``BlockInvertedLists``)."""
    faiss = faiss_module()
    buf = np.ascontiguousarray(ids, dtype=np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    direct = ivf is not None and ivf.direct_map.type == faiss.DirectMap.Hashtable  # IDSelectorArray only
    sel = (faiss.IDSelectorArray(len(buf), faiss.swig_ptr(buf)) if direct
           else faiss.IDSelectorBatch(len(buf), faiss.swig_ptr(buf)))
    try:
        return int(index.remove_ids(sel))
    except RuntimeError as exc:
        logger.debug("FAISS cannot remove ids from this layout (%s)", exc)
        return None
