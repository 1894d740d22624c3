"""Inputs for a learnware's ``model_predict`` check, drawn from what its spec holds (any spec type).

Used by the in-process checks (:mod:`lwgpu.market.checks`, :mod:`lwgpu.market.ingest`) and by the
isolated checks (:mod:`lwgpu.market.worker`); imports nothing else of :mod:`lwgpu.market`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..device import single_torch_thread

__all__ = ["PROBE_TEXTS", "sample_inputs"]


#: Inputs of the ``model_predict`` check of a text learnware: its spec holds embeddings, not the developer's
#: texts, so the model is asked about these short sentences (cycled to ``n_samples``).
PROBE_TEXTS = (
    "The weather is pleasant today.",
    "Please send me the report by Friday.",
    "This product stopped working after a week.",
    "A function returns a value to its caller.",
    "The team won the match in the last minute.",
    "Prices rose sharply during the last quarter.",
    "The patient was given a new treatment.",
    "I really enjoyed this film and its music.",
    "The train to the city leaves at noon.",
    "Water boils at one hundred degrees Celsius.",
)


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def sample_inputs(spec: Any, n: int, seed: int = 0, herd: bool = True) -> np.ndarray:
    """Inputs (n, ...) for a learnware's model, drawn from what its spec holds.

    Table RKME: ``n`` rows herded from it (``herd=False``: its points, cycled), float32 (n, d).
    Image spec: its points as images, largest weight first and cycled, float32 (n, C, H, W).
    Text spec: :data:`PROBE_TEXTS`, cycled, a str array (n,).
    """
    from ..spec.io import IMAGE_TYPE, TEXT_TYPE, spec_type

    n = max(1, int(n))
    kind = spec_type(spec)
    if kind == TEXT_TYPE:
        return np.array([PROBE_TEXTS[i % len(PROBE_TEXTS)] for i in range(n)])
    if kind == IMAGE_TYPE:
        z = _as_numpy(spec.z).astype(np.float32)
        order = np.argsort(-_as_numpy(spec.beta).reshape(-1), kind="stable")
        return z[order[np.arange(n) % len(order)]]
    if not herd:
        z = _as_numpy(spec.z).astype(np.float32)
        return z[np.arange(n) % len(z)]
    with single_torch_thread():
        return spec.herd(n, seed=seed).astype(np.float32)
