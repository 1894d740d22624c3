"""Sublinear spec search: random-feature embeddings of RKMEs, FAISS candidates, exact re-ranking.

``SpecIndex(bank, factory="IVF1024,Flat")`` embeds every spec of a SpecBank as one vector whose L2
distances approximate the squared MMD, asks FAISS for candidates and re-ranks them exactly.
"""
from .embed import NystroemFeatures, RandomFourierFeatures, SpecEmbedder, make_embedder, pad_specs
from .faiss_index import SpecIndex
from .tuning import (
    DEFAULTS,
    effective_factory,
    IndexReport,
    default_nprobe,
    default_params,
    evaluate_index,
    recall_at_k,
    tune,
)
from ..data.clustered import synthetic_spec_arrays  # the market the defaults are tuned on

__all__ = [
    "DEFAULTS",
    "IndexReport",
    "NystroemFeatures",
    "RandomFourierFeatures",
    "SpecEmbedder",
    "SpecIndex",
    "default_nprobe",
    "default_params",
    "effective_factory",
    "evaluate_index",
    "make_embedder",
    "pad_specs",
    "recall_at_k",
    "synthetic_spec_arrays",
    "tune",
]
