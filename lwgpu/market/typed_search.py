"""Search by spec type: which bank a user spec goes to, and the exact search of image banks.

:meth:`lwgpu.market.Market.search` looks at the user spec's type (:func:`lwgpu.spec.io.spec_type`):

- a table RKME searches the table bank of its dimension (``d<d>``);
- a text spec (:class:`~lwgpu.spec.text.TextRKME`) searches the bank of its encoder and dimension; a
  market that holds text specs only of other encoders refuses it (:func:`check_text_encoder`), since
  embeddings of two encoders are never compared;
- an image spec searches the image bank of its shape exactly with the NNGP kernel
  (:func:`search_image`: single learnwares; no mixture, whose Gram matrix would need the NNGP kernel
  between market specs).

Table and text banks share the Gaussian-kernel search path (planner, index, mixture).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .. import settings
from ..search.results import SearchResult, SingleItem
from ..search.scores import dist_to_score
from ..spec.io import TEXT_TYPE, spec_type
from ..spec.text import EncoderMismatchError
from .banks import bank_key

logger = logging.getLogger(__name__)

__all__ = ["check_text_encoder", "search_image", "image_index_of", "EncoderMismatchError"]


def check_text_encoder(spec: Any, encoders: dict[str, str]) -> None:
    """Refuse a text spec whose encoder no stored text spec shares, when the market holds text specs of other
    encoders (``encoders``: ``{bank key: encoder}`` of the stored text specs; see ``Store.encoders``)."""
    if spec_type(spec) != TEXT_TYPE or not encoders or bank_key(spec) in encoders:
        return
    raise EncoderMismatchError(
        f"the user's text spec was made by encoder {spec.encoder!r} (d={spec.d}); this market's text specs come "
        f"from {sorted(set(encoders.values()))}: fit the spec with one of those (TextRKME.fit(texts, encoder=...))")


def image_index_of(bank: Any) -> Any:
    """The :class:`~lwgpu.index.image_index.ImageIndex` of an image bank, (re)built when the bank changed."""
    from ..index.image_index import ImageIndex

    idx = getattr(bank, "_image_index", None)
    if idx is None or getattr(bank, "_image_index_version", None) != bank.version:
        idx = ImageIndex(int(bank.z.shape[2]))
        idx.add(bank.z, bank.beta, bank.ids)
        bank._image_index, bank._image_index_version = idx, bank.version
        logger.info("image index built over %d specs", len(idx))
    return idx


def search_image(bank: Any, spec: Any, admitted: np.ndarray | None, k: int,
                 index_threshold: int | None = None) -> SearchResult:
    """The ``k`` image specs of ``bank`` (an :class:`~lwgpu.market.image_bank.ImageBank`) nearest to ``spec`` by
    exact squared MMD under the NNGP kernel, among the ``admitted`` ids (None: all).

    Below ``index_threshold`` (``settings.IMAGE_INDEX_THRESHOLD``) specs every admitted spec is scanned
    (method ``"exact-image"``); from it on, only the ``settings.IMAGE_INDEX_CANDIDATES`` (at least 4k) nearest
    in feature space (``"index-image"``), and scores are over those candidates. Distances are exact either way.
    """
    t0 = time.perf_counter()
    if bank is None or not len(bank):
        return SearchResult(method="exact-image")
    threshold = settings.IMAGE_INDEX_THRESHOLD if index_threshold is None else int(index_threshold)
    method = "exact-image"
    if len(bank) >= threshold:
        m = max(settings.IMAGE_INDEX_CANDIDATES, 4 * int(k))
        admitted = image_index_of(bank).candidates(spec, m, admitted)
        method = "index-image"
    rows = None if admitted is None else np.sort(bank.positions(admitted))
    dists = bank.mmd2(spec, rows=rows)
    ids = bank.ids if rows is None else bank.ids[rows]
    if not ids.size:
        return SearchResult(n_candidates=0, method=method)
    scores = dist_to_score(dists)
    order = np.lexsort((ids, dists))[: max(0, int(k))]  # ties: smaller id first
    single = [SingleItem(int(ids[i]), float(scores[i]), float(dists[i])) for i in order]
    total = time.perf_counter() - t0
    return SearchResult(single=single, mixture=None, n_candidates=int(ids.size), method=method,
                        timings={"scan": total, "total": total})
