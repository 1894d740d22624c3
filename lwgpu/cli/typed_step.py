"""The image / text market step of ``lwgpu-bench``: a real :class:`~lwgpu.market.Market` of one spec type
with ground truth, searched by its users (``configs/experiment/image_market.yaml``, ``text_market.yaml``).

``cfg.market.generator`` (``_partial_``) is :func:`lwgpu.data.image_markets.make_image_market` or
:func:`lwgpu.data.text_markets.make_text_market`; the step calls it with ``n_tasks`` and ``n_users``, stores
every task as a learnware (its model, semantic spec and ImageRKME / TextRKME; one ``add_many`` batch, with
the predict checks when ``cfg.market.check``), then searches the market with each user's spec and
records, per market size:

- ``spec_fit_time`` (s) and ``ingest_rate`` (learnwares/s);
- ``top1_accuracy`` / ``topk_accuracy``: the user's own task is the first / among the ``search.k`` results;
- ``latency_p50_ms`` ... (one ``Market.search`` at a time, mixture off: single-learnware search).
"""
from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..eval.search import topk_accuracy
from ..eval.timing import latency_stats
from ..tracking import Results

logger = logging.getLogger(__name__)


def measure_typed_market(cfg: DictConfig, results: Results, tags: dict[str, Any]) -> None:
    """Build the image or text market of ``cfg.market`` and measure its search (see the module docstring)."""
    from ..market import Market

    kind = str(cfg.market.kind)
    make = instantiate(cfg.market.generator)
    n_tasks, n_users = int(cfg.market.n_tasks), int(cfg.market.users.n)
    t0 = time.perf_counter()
    data = make(n_tasks=n_tasks, n_users=n_users)
    results.add("spec_fit_time", time.perf_counter() - t0, "s", method=kind, **tags)
    k = max(1, min(int(cfg.search.k), n_tasks))
    with tempfile.TemporaryDirectory(prefix=f"lwgpu-{kind}-market-") as root:
        with Market(root, device=cfg.device) as market:
            t0 = time.perf_counter()
            ids = market.add_many([t.model for t in data.tasks], [t.semantic_spec for t in data.tasks],
                                  [t.spec for t in data.tasks], check=bool(cfg.market.check), progress=False)
            bad = [x for x in ids if not isinstance(x, int)]
            if bad:
                raise RuntimeError(f"the {kind} market refused {len(bad)} learnwares, e.g. {bad[0]}")
            results.add("ingest_rate", len(ids) / max(time.perf_counter() - t0, 1e-9), "learnwares/s",
                        method=kind, **tags)
            found, times = [], []
            for user in data.users:
                t1 = time.perf_counter()
                res = market.search(user.spec, k=k, mixture=False)
                times.append(time.perf_counter() - t1)
                got = [s.id for s in res.single][:k]
                found.append(got + [-1] * (k - len(got)))
    pred = np.asarray(found, dtype=np.int64)
    truth = np.asarray([ids[u.task] for u in data.users], dtype=np.int64)
    results.add("top1_accuracy", topk_accuracy(pred, truth, 1), "", method=kind, **tags)
    results.add("topk_accuracy", topk_accuracy(pred, truth, k), "", method=kind, k=k, **tags)
    for metric, value in latency_stats(times).items():
        results.add(metric, value, "ms" if metric.endswith("_ms") else "queries/s", method=kind, **tags)
    logger.info("%s market of %d: top-1 %.2f, p50 %.1f ms", kind, n_tasks, topk_accuracy(pred, truth, 1),
                float(np.percentile(np.asarray(times) * 1e3, 50)))
