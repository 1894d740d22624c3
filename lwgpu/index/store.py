"""Saving and opening a SpecIndex beside its bank: FAISS's file, the embedder's parameters, a JSON meta.

The meta records the layout, the search settings and the indexed ids' count and order-free checksum
(:func:`lwgpu.index.ids.id_checksum`), so an owner opening a market knows in one pass over the bank's
ids whether the saved index matches it; a mismatch is repaired with ``SpecIndex.sync`` (logged).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..kernels.backend import get_backend
from ..spec.validation import same_gamma
from .embed import SpecEmbedder
from .ids import faiss_module, id_checksum
from .layout import Layout, layout_for

logger = logging.getLogger(__name__)

FORMAT = "lwgpu.SpecIndex/2"
#: formats :func:`load_index` reads (version 1 wrapped every layout in IDMap2; still searchable)
READS = ("lwgpu.SpecIndex/1", FORMAT)
FILES = ("index.faiss", "index_embedder.npz", "index_meta.json")


def resolve_backend(backend: Any, device: torch.device, bank: Any) -> Any:
    """The re-ranking backend, resolved once: float64 banks are re-ranked in float64, others in float32."""
    dtype = torch.float64 if getattr(bank, "dtype", None) == torch.float64 else torch.float32
    return get_backend(backend, device, dtype)


def save_index(index: Any, directory: str | Path) -> None:
    """Write a built SpecIndex into ``directory`` (the three :data:`FILES`)."""
    if index._cpu is None:
        raise ValueError("the index is empty (nothing was built yet); add specs before saving")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    faiss_module().write_index(index._cpu, str(root / "index.faiss"))
    index.embedder.save(root / "index_embedder.npz")
    lay = index.layout
    meta = {
        "format": FORMAT, "factory": index.factory, "built_factory": lay.factory, "nlist": lay.nlist,
        "nprobe": lay.nprobe, "ef_search": lay.ef_search, "D": index.D, "candidates": index.candidates,
        "probe": index.probe, "seed": index.seed, "embedder": index.embedder.kind, "gamma": index.bank.gamma,
        "d": index.bank.d, "N": index.ntotal, "checksum": str(index.checksum()), "built_n": index.built_n,
        "version": index.version, "bank_version": getattr(index.bank, "version", None),
        "tombstones": sorted(index._tomb),
    }
    (root / "index_meta.json").write_text(json.dumps(meta, indent=1))


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The saved meta of an index in ``directory`` (ValueError when there is none, or of another format)."""
    path = Path(directory) / "index_meta.json"
    if not path.exists():
        raise ValueError(f"{Path(directory)} holds no saved SpecIndex (index_meta.json missing)")
    meta = json.loads(path.read_text())
    if meta.get("format") not in READS:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def matches_saved(meta: dict[str, Any], bank: Any) -> bool:
    """Whether a saved index's ids (count and checksum in ``meta``) are exactly ``bank``'s."""
    return int(meta["N"]) == len(bank) and "checksum" in meta and int(meta["checksum"]) == id_checksum(bank.ids)


def load_index(cls: type, directory: str | Path, bank: Any, device: str | torch.device | None = "auto",
               backend: Any = "auto", repair: bool = True) -> Any:
    """Open the index saved in ``directory`` over ``bank`` (see ``SpecIndex.load``)."""
    root = Path(directory)
    meta = read_meta(root)
    if meta["d"] != bank.d or not same_gamma(meta["gamma"], bank.gamma):
        raise ValueError(f"index was built for d={meta['d']}, gamma={meta['gamma']}; the bank has d={bank.d}, "
                         f"gamma={bank.gamma}")
    obj = cls.__new__(cls)
    obj.bank, obj.factory = bank, meta["factory"]
    obj.candidates, obj.probe, obj.seed = int(meta["candidates"]), meta["probe"], int(meta["seed"])
    obj.device = resolve_device(device)
    obj.backend = resolve_backend(backend, obj.device, bank)
    obj.embedder = SpecEmbedder.load(root / "index_embedder.npz")
    obj._kind, obj._D = obj.embedder.kind, obj.embedder.D
    obj._cpu = faiss_module().read_index(str(root / "index.faiss"))
    obj._gpu = obj._gpu_res = None
    obj._tomb = set(int(i) for i in meta["tombstones"])
    obj.built_n, obj.version = int(meta.get("built_n", meta["N"])), int(meta.get("version", 0))
    obj.bank_version = getattr(bank, "version", None)  # checked below by count and checksum
    lay = layout_for(meta["built_factory"], obj.built_n, obj.D, quiet=True)
    obj.layout = Layout(meta["built_factory"], meta.get("nlist", lay.nlist), meta.get("nprobe", lay.nprobe),
                        meta.get("ef_search", lay.ef_search))
    if not (obj.ntotal == len(bank) and matches_saved(meta, bank)):
        if not repair:
            raise ValueError(f"the saved index's {meta['N']} ids differ from the bank's {len(bank)}")
        logger.warning("SpecIndex.load: the bank's ids differ from the saved index's; syncing")
        obj.sync()
    return obj
