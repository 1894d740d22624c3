"""Semantic specs for large synthetic markets, with known filter selectivities.

Learnware ``i`` gets ``n_tags_each`` tags drawn from a vocabulary of ``n_tags`` (so a one-tag filter
admits about ``n_tags_each / n_tags`` of the market), a name ``"<adjective> <domain> model <i>"`` and a
description of three domain words, so a text filter on one domain word admits about
``3 / len(DOMAINS)`` of the market. Everything is drawn from one seeded generator.
"""
from __future__ import annotations

from typing import Any

import numpy as np

ADJECTIVES = ("fast", "robust", "small", "deep", "sparse", "linear", "boosted", "calibrated")
DOMAINS = (
    "finance", "retail", "energy", "health", "sensor", "traffic", "weather", "churn", "fraud", "credit",
    "housing", "insurance", "logistics", "marketing", "telecom", "manufacturing", "agriculture", "sports",
    "education", "gaming", "security", "astronomy", "genomics", "chemistry", "materials", "aviation",
    "shipping", "mining", "tourism", "media",
)


def synthetic_semantic_specs(
    n: int, input_dim: int, output_dim: int = 2, n_tags: int = 100, n_tags_each: int = 2, seed: int = 0,
    task_type: str = "classification", start: int = 0,
) -> list[dict[str, Any]]:
    """``n`` full semantic specs (table data) for learnwares ``start .. start + n - 1``.

    Returns
    -------
    list of dicts accepted by :func:`lwgpu.spec.semantic.validate_semantic_spec`.
    """
    if n < 0 or n_tags < 1 or not 1 <= n_tags_each <= n_tags:
        raise ValueError(f"need n >= 0 and 1 <= n_tags_each <= n_tags; got n={n}, n_tags={n_tags}, "
                         f"n_tags_each={n_tags_each}")
    rng = np.random.default_rng([seed, start])
    # distinct tags per learnware: a random first tag, then random nonzero offsets without repeats
    offsets = np.cumsum(rng.integers(1, max(2, n_tags // n_tags_each), size=(n, n_tags_each)), axis=1) - 1
    tags = (rng.integers(0, n_tags, size=(n, 1)) + offsets) % n_tags
    words = rng.integers(0, len(DOMAINS), size=(n, 3))
    adj = rng.integers(0, len(ADJECTIVES), size=n)
    out = []
    for i in range(n):
        w = [DOMAINS[j] for j in words[i]]
        out.append({
            "data_type": "table", "task_type": task_type, "input_dim": int(input_dim), "output_dim": int(output_dim),
            "name": f"{ADJECTIVES[adj[i]]} {w[0]} model {start + i}",
            "description": f"a model for {w[0]}, {w[1]} and {w[2]} data",
            "tags": [f"tag{t:03d}" for t in tags[i]], "library": "scikit-learn", "license": "MIT",
        })
    return out
