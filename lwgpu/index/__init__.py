"""Sublinear spec search: random-feature embeddings of RKMEs, FAISS candidates, exact re-ranking.

``SpecIndex(bank)`` embeds every spec of a SpecBank as one vector whose L2 distances approximate the
squared MMD, picks a FAISS layout and probe count from the bank's size (:func:`auto_layout`), asks
FAISS for candidates (among admitted ids, with ``allowed=``) and re-ranks them exactly. The owner
keeps it in step with the bank through ``index.add(ids)`` / ``index.remove(ids)``.
"""
from .embed import NystroemFeatures, RandomFourierFeatures, SpecEmbedder, make_embedder, pad_specs
from .faiss_index import SpecIndex
from .ids import id_checksum
from .layout import (
    Layout, auto_layout, clip_factory, default_nprobe, filtered_candidates, filtered_probe, layout_for,
)
from .tuning import IndexReport, evaluate_index, recall_at_k, tune

__all__ = [
    "IndexReport",
    "Layout",
    "NystroemFeatures",
    "RandomFourierFeatures",
    "SpecEmbedder",
    "SpecIndex",
    "auto_layout",
    "clip_factory",
    "default_nprobe",
    "evaluate_index",
    "filtered_candidates",
    "filtered_probe",
    "id_checksum",
    "layout_for",
    "make_embedder",
    "pad_specs",
    "recall_at_k",
    "tune",
]
