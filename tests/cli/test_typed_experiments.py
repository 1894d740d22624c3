"""The image_market and text_market experiments compose, run end to end on tiny markets, and report the
search accuracy that a brute-force search over the same (deterministic) data gives."""
from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lwgpu.cli.bench import CONFIG_DIR, run
from lwgpu.spec.text import register_encoder
from lwgpu.tracking import read_jsonl


def _hash_encoder(texts):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=64, alternate_sign=False).transform(texts).toarray()


register_encoder("test/hash-exp", _hash_encoder)


def _compose(name, overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}", "debug=default", *overrides])


@pytest.mark.parametrize("name,kind", [("text_market", "text"), ("image_market", "image")])
def test_experiment_configs(name, kind):
    cfg = _compose(name, [])
    assert cfg.market.kind == kind and cfg.experiment.sweep.param == "market.n_tasks"
    full = _compose(name, ["debug_mode=false"])
    assert list(full.experiment.sweep["values"]) != list(cfg.experiment.sweep.debug_values)
    gen = instantiate(cfg.market.generator)  # a partial: the step supplies n_tasks and n_users
    assert gen.func.__name__ == f"make_{kind}_market" and "n_tasks" not in gen.keywords


def _brute_top1(data):
    hits = [int(np.argmin([u.spec.dist(t.spec) for t in data.tasks])) == u.task for u in data.users]
    return float(np.mean(hits))


@pytest.mark.parametrize("name,overrides", [
    ("text_market", ["experiment.sweep.debug_values=[3]", "market.users.n=4", "market.generator.K=3",
                     "market.generator.encoder=test/hash-exp", "market.generator.train_per_topic=4",
                     "market.generator.user_per_topic=2"]),
    ("image_market", ["experiment.sweep.debug_values=[2]", "market.users.n=2", "market.generator.K=2",
                      "market.generator.train_per_class=3", "market.generator.user_per_class=2",
                      "market.generator.spec_options.steps=0"]),
])
def test_experiment_runs_and_reports_brute_force_accuracy(name, overrides, tmp_path):
    if name == "image_market":
        pytest.importorskip("lwgpu.spec.image")
    cfg = _compose(name, ["device=cpu", *overrides])
    out = run(cfg, tmp_path)
    rows = read_jsonl(out["jsonl"])
    sizes = list(cfg.experiment.sweep.debug_values)
    for n in sizes:
        got = {r["name"]: r["value"] for r in rows if r.get("market.n_tasks") == n}
        assert {"top1_accuracy", "topk_accuracy", "latency_p50_ms", "ingest_rate"} <= set(got)
        data = instantiate(cfg.market.generator)(n_tasks=n, n_users=int(cfg.market.users.n))
        assert got["top1_accuracy"] == pytest.approx(_brute_top1(data))
        assert got["topk_accuracy"] >= got["top1_accuracy"]
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
