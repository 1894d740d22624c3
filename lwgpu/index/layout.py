"""FAISS layouts by bank size: the one place that turns N into a factory string and probe counts.

:func:`auto_layout` is what ``SpecIndex(bank)`` (``factory="auto"``) builds: exhaustive ``Flat`` for
small banks, then ``IVF{nlist},PQ{D/per}x4fs`` (4-bit product-quantised codes scanned with FAISS's SIMD
fast scan; the quantisation error is absorbed by the exact re-ranking; finer codes, ``per`` = 1, up to
``INDEX_FINE_CODES_MAX_N`` specs, where the scan is cheap), with ``nlist ~ sqrt(N)`` and an
``nprobe`` that grows with N. :func:`filtered_probe` raises the probe
count when an id selector admits only a fraction of the specs. Every constant lives in
:mod:`lwgpu.settings` (``INDEX_*``); the measurements behind them are in benchmarks/results/index.md.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from .. import settings

logger = logging.getLogger(__name__)

#: FAISS wants at least this many training points per IVF list.
MIN_POINTS_PER_LIST = 39


@dataclass(frozen=True)
class Layout:
    """A FAISS layout: ``factory`` (index_factory string), ``nlist`` (IVF lists or None), ``nprobe``
    (IVF lists probed by an unfiltered query, or None), ``ef_search`` (HNSW, or None)."""

    factory: str
    nlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None

    @property
    def kind(self) -> str:
        """``"ivf"``, ``"hnsw"`` or ``"flat"`` (anything else FAISS scans exhaustively)."""
        f = self.factory.upper()
        return "ivf" if "IVF" in f else "hnsw" if "HNSW" in f else "flat"


def _pow2(x: float) -> int:
    return 1 << max(0, int(round(math.log2(max(x, 1.0)))))


def auto_nlist(n: int) -> int:
    """IVF lists for ``n`` specs: the power of two nearest ``INDEX_LISTS_PER_SQRT_N * sqrt(n)``."""
    return min(_pow2(settings.INDEX_LISTS_PER_SQRT_N * math.sqrt(max(n, 1))), max(1, n // MIN_POINTS_PER_LIST))


def default_nprobe(n: int, nlist: int) -> int:
    """Unfiltered IVF nprobe: ``INDEX_PROBE_BASE`` per ``INDEX_PROBE_PER`` specs (at least once), at most nlist.

    Denser markets spread a query's true neighbours over more lists: on the clustered market with
    1,024 lists, nprobe 64 reaches recall@10 0.996 at N = 100,000 but N = 1,000,000 needs 512.
    """
    per = max(1, round(n / settings.INDEX_PROBE_PER))
    return int(min(max(1, nlist), settings.INDEX_PROBE_BASE * per))


def auto_codes(D: int, n: int = 0) -> str:
    """IVF codes for ``n`` specs embedded in ``D`` dimensions: ``PQ{D/per}x4fs`` (fast scan) with ``per`` =
    ``INDEX_PQ_DIMS_PER_CODE`` up to ``INDEX_FINE_CODES_MAX_N`` specs, else ``INDEX_PQ_DIMS_PER_CODE_LARGE``;
    ``SQ8`` when D does not split into whole sub-vectors."""
    per = settings.INDEX_PQ_DIMS_PER_CODE if n <= settings.INDEX_FINE_CODES_MAX_N else settings.INDEX_PQ_DIMS_PER_CODE_LARGE
    return f"PQ{D // per}x4fs" if D % per == 0 and D >= per else "SQ8"


def auto_layout(n: int, D: int | None = None) -> Layout:
    """The layout ``SpecIndex(bank)`` builds over ``n`` specs embedded in ``D`` dimensions (see the module
    docstring)."""
    n, D = int(n), int(D or settings.INDEX_D)
    if n < settings.INDEX_FLAT_MAX:
        return Layout("Flat")
    nlist = auto_nlist(n)
    return Layout(f"IVF{nlist},{auto_codes(D, n)}", nlist, default_nprobe(n, nlist))


def clip_factory(factory: str, n: int, quiet: bool = False) -> str:
    """``factory`` with IVF list counts clipped to ``max(1, n // 39)`` (FAISS wants >= 39 points per list)."""
    limit = max(1, n // MIN_POINTS_PER_LIST)

    def clip(m: re.Match) -> str:
        nlist = int(m.group(1))
        if nlist > limit:
            if not quiet:
                logger.info("SpecIndex: %d specs are too few for %d IVF lists; using %d", n, nlist, limit)
            return f"IVF{limit}"
        return m.group(0)

    return re.sub(r"IVF(\d+)", clip, factory)


def layout_for(factory: str, n: int, D: int | None = None, quiet: bool = False) -> Layout:
    """The layout for a requested ``factory`` (``"auto"`` or an index_factory string), ``n`` specs, dimension D."""
    if str(factory).lower() == "auto":
        return auto_layout(n, D)
    built = clip_factory(str(factory), n, quiet=quiet)
    m = re.search(r"IVF(\d+)", built)
    if m:
        nlist = int(m.group(1))
        return Layout(built, nlist, default_nprobe(n, nlist))
    if "HNSW" in built.upper():
        return Layout(built, ef_search=settings.INDEX_EF_SEARCH)
    return Layout(built)


def probe_for(layout: Layout, n: int) -> int | None:
    """Unfiltered probe count of a built ``layout`` holding ``n`` specs now (it may have grown since)."""
    if layout.kind == "ivf":
        return default_nprobe(n, int(layout.nlist or 1))
    if layout.kind == "hnsw":
        return int(layout.ef_search or settings.INDEX_EF_SEARCH)
    return None


def filtered_probe(probe: int, fraction: float, limit: int) -> int:
    """Probe count (nprobe or efSearch) when a selector admits ``fraction`` of the specs.

    ``probe / fraction ** INDEX_FILTER_PROBE_POWER``, capped at ``limit`` (every list / every
    entry): with power 1 the probed lists hold about as many admitted specs as an unfiltered query
    scans, and the selector skips the others before any distance is computed, so the cost stays
    close to an unfiltered search's while the admitted neighbours, which lie further out, are reached.
    """
    f = min(1.0, max(float(fraction), 1e-12))
    return int(min(max(1, limit), math.ceil(probe / f ** settings.INDEX_FILTER_PROBE_POWER)))


def filtered_candidates(candidates: int, fraction: float) -> int:
    """First pool re-ranked when a selector admits ``fraction`` of the specs: ``candidates /
    fraction ** INDEX_FILTER_CANDIDATE_POWER``, at most ``INDEX_MAX_CANDIDATES`` (certified re-ranking
    grows it where needed)."""
    f = min(1.0, max(float(fraction), 1e-12))
    want = math.ceil(candidates / f ** settings.INDEX_FILTER_CANDIDATE_POWER)
    return int(max(candidates, min(want, settings.INDEX_MAX_CANDIDATES)))


def needs_rebuild(factory: str, built: Layout, built_n: int, n: int, D: int | None = None) -> bool:
    """Whether an index built as ``built`` over ``built_n`` specs should be re-trained at ``n`` specs:
    the bank grew ``INDEX_REBUILD_GROWTH`` times and the layout for ``n`` differs."""
    if n < settings.INDEX_REBUILD_GROWTH * max(1, built_n):
        return False
    return layout_for(factory, n, D, quiet=True).factory != built.factory
