"""Reuse error against the user's own model trained on the same few labels."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np


def reuse_vs_own(rows: Iterable[Mapping[str, Any]], own: str = "own") -> list[dict[str, Any]]:
    """Mean error per (method, n_labels) and its gap to the user's own model at the same label count.

    Parameters
    ----------
    rows : dicts with ``method``, ``n_labels``, ``error`` (and ``metric``), e.g. the rows of
        :func:`lwgpu.reuse.evaluation.reuse_curve` for one or many users.
    own : the method name of the user's own model.

    Returns
    -------
    list of dict
        ``method``, ``n_labels``, ``metric``, ``error`` (mean over rows), ``own_error`` and
        ``gap = error - own_error`` (negative: reuse beats the user's own model), sorted by method
        then label count. ``own_error``/``gap`` are NaN where no own-model row exists.
    """
    groups: dict[tuple[str, int], list[float]] = {}
    metric: dict[tuple[str, int], str] = {}
    for r in rows:
        key = (str(r["method"]), int(r["n_labels"]))
        groups.setdefault(key, []).append(float(r["error"]))
        metric[key] = str(r.get("metric", "error"))
    own_err = {k: float(np.mean(v)) for (m, k), v in groups.items() if m == own}
    out = []
    for (m, k), v in sorted(groups.items()):
        err = float(np.mean(v))
        base = own_err.get(k, float("nan"))
        out.append({"method": m, "n_labels": k, "metric": metric[(m, k)], "error": err, "own_error": base,
                    "gap": err - base})
    return out
