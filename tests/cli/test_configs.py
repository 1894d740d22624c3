"""Every config group option composes (Hydra compose API) and every ``_target_`` in it instantiates."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lwgpu.cli.bench import CONFIG_DIR

GROUPS = ["market", "spec", "kernel", "index", "search", "reuse", "logger", "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]
LAUNCHERS = sorted(p.stem for p in (Path(CONFIG_DIR) / "hydra" / "launcher").glob("*.yaml"))


def _targets(node, path=""):
    """(path, node) of every mapping with a ``_target_`` inside ``node``."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for k in node:
            yield from _targets(node[k], f"{path}.{k}" if path else str(k))
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert {"joblib", "submitit_local", "submitit_slurm"} <= set(LAUNCHERS)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes_and_instantiates(group, option):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        extra = [] if group == "debug" else ["debug=default"]  # tiny sizes: instantiating builds markets
        cfg = compose(config_name="config", overrides=[f"{group}={option}"] + extra)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg[group] is not None if group != "debug" else cfg.debug_mode
    found = 0
    for path, node in _targets(cfg):
        obj = instantiate(node)
        assert obj is not None, path
        found += 1
    assert found >= 3  # market generator, spec fit, exact search at least


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_configs_compose_and_instantiate(launcher):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}", "debug=default"],
                      return_hydra_config=True)
    node = cfg.hydra.launcher
    assert node._target_.startswith("hydra_plugins.")
    params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    obj = instantiate(OmegaConf.create({"_target_": node._target_, **params}))
    assert type(obj).__name__.endswith("Launcher")


def test_spec_engine_is_a_config_choice():
    """``spec.engine`` reaches RKME.fit_many: both engines fit the same spec from the same config."""
    import numpy as np

    data = [np.random.default_rng(i).normal(size=(120, 3)) for i in range(2)]
    fitted = {}
    for engine in ("numba", "torch"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=["debug=default", f"spec.engine={engine}", "device=cpu"])
        assert cfg.spec.fit.engine == engine
        fitted[engine] = instantiate(cfg.spec.fit)(data)
    for a, b in zip(fitted["numba"], fitted["torch"]):
        np.testing.assert_allclose(a.z.numpy(), b.z.numpy(), atol=1e-3)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["debug=default", "spec.engine=jax", "device=cpu"])
    with pytest.raises(ValueError, match="unknown fit engine"):
        instantiate(cfg.spec.fit)(data)


def test_index_config_mirrors_the_settings_it_documents():
    """configs/index/ivf.yaml lists each INDEX_*/PLANNER_* value next to its name: they must agree."""
    from lwgpu import settings

    cfg = OmegaConf.load(Path(CONFIG_DIR) / "index" / "ivf.yaml")
    assert cfg.build.D == settings.INDEX_D and cfg.build.candidates == settings.INDEX_CANDIDATES
    assert cfg.build.embedder == settings.INDEX_EMBEDDER
    names = {"flat_max": "INDEX_FLAT_MAX", "pq_dims_per_code": "INDEX_PQ_DIMS_PER_CODE",
             "fine_codes_max_n": "INDEX_FINE_CODES_MAX_N", "pq_dims_per_code_large": "INDEX_PQ_DIMS_PER_CODE_LARGE",
             "lists_per_sqrt_n": "INDEX_LISTS_PER_SQRT_N", "probe_base": "INDEX_PROBE_BASE",
             "probe_per": "INDEX_PROBE_PER", "filter_probe_power": "INDEX_FILTER_PROBE_POWER",
             "filter_candidate_power": "INDEX_FILTER_CANDIDATE_POWER", "certify_z": "INDEX_CERTIFY_Z",
             "max_candidates": "INDEX_MAX_CANDIDATES", "rebuild_growth": "INDEX_REBUILD_GROWTH"}
    assert set(cfg.rules) == set(names)
    for key, name in names.items():
        assert cfg.rules[key] == getattr(settings, name), (key, name)
    planner = {"exact_max_rows": "PLANNER_EXACT_MAX_ROWS", "index_min_fraction": "PLANNER_INDEX_MIN_FRACTION",
               "fallback_max_rows": "PLANNER_FALLBACK_MAX_ROWS", "prune_min_rows": "PLANNER_PRUNE_MIN_ROWS"}
    for key, name in planner.items():
        assert cfg.planner[key] == getattr(settings, name), (key, name)
