"""Submission errors and the model-output check, shared by :mod:`~lwgpu.market.checks` and
:mod:`~lwgpu.market.worker` (this module imports nothing from lwgpu, so neither depends on the other)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

CHECKS = ("package", "semantic", "rkme", "model_load", "model_predict", "duplicate")


class SubmissionError(ValueError):
    """A refused submission: ``check`` (one of :data:`CHECKS`) and a human-readable ``reason``."""

    def __init__(self, check: str, reason: str) -> None:
        self.check = check
        self.reason = reason
        super().__init__(f"submission refused by check {check!r}: {reason}")


def check_output(out: Any, n: int, semantic: Mapping[str, Any]) -> None:
    """The output half of the ``model_predict`` check: one output per row, of the declared shape.

    Classification: labels ``(n,)`` (integers in ``[0, output_dim)`` when numeric) or scores
    ``(n, output_dim)``; otherwise ``(n, output_dim)`` or, for ``output_dim == 1``, ``(n,)``.
    Raises :class:`SubmissionError`.
    """
    try:
        arr = np.asarray(out)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the model's fault
        raise SubmissionError("model_predict", f"predict returned something that is not an array: {exc}") from exc
    if arr.ndim == 0 or arr.shape[0] != n:
        raise SubmissionError("model_predict", f"predict returned shape {arr.shape} for {n} rows; "
                                               "need one output per input row")
    o = semantic["output_dim"]
    numeric = np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
    if numeric and not np.isfinite(arr.astype(np.float64)).all():
        raise SubmissionError("model_predict", "predict returned NaN/Inf")
    is_labels = arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)
    if semantic["task_type"] == "classification":
        if is_labels:
            if numeric:
                lab = arr.reshape(-1).astype(np.float64)
                if not (np.all(lab == np.round(lab)) and lab.min() >= 0 and lab.max() < o):
                    raise SubmissionError("model_predict", f"predicted labels must be integers in [0, {o}) "
                                                           f"(output_dim={o})")
            return
        if arr.ndim == 2 and arr.shape[1] == o:
            return
        raise SubmissionError("model_predict", f"predict returned shape {arr.shape}; a classifier with "
                                               f"output_dim={o} must return labels ({n},) or scores ({n}, {o})")
    ok = (is_labels and o == 1) or (arr.ndim == 2 and arr.shape[1] == o)
    if not ok:
        raise SubmissionError("model_predict", f"predict returned shape {arr.shape}; expected ({n}, {o})"
                                               + (f" or ({n},)" if o == 1 else ""))
