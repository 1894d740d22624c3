"""Small units of the bench pipeline: index factory sizing, sweep resolution, seeding."""
import random

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from lwgpu.cli.bench import CONFIG_DIR, seed_everything
from lwgpu.cli.steps import build_index
from lwgpu.cli.study import sweep_values


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_build_index_hands_auto_to_specindex():
    """index.factory=auto reaches SpecIndex, which picks the layout by size (one rule, lwgpu.index.layout)."""
    from lwgpu import SpecBank
    from lwgpu.index import auto_layout
    from lwgpu.tracking import Results

    rng = np.random.default_rng(0)
    bank = SpecBank.from_arrays(rng.normal(size=(300, 4, 3)), np.full((300, 4), 0.25), 0.1)
    cfg = _compose("index=ivf", "device=cpu")
    results = Results()
    index = build_index(cfg, bank, results, {})
    assert index.built_factory == auto_layout(300).factory == "Flat"
    assert results.rows[-1]["factory"] == "Flat"


def test_sweep_values_normal_debug_and_errors():
    assert sweep_values(_compose()) is None
    key, values = sweep_values(_compose("experiment=accuracy_vs_K"))
    assert key == "spec.K" and values == [1, 2, 4, 8, 16, 32]
    assert sweep_values(_compose("experiment=accuracy_vs_K", "debug=default"))[1] == [2, 4]
    with pytest.raises(ValueError, match="names no key"):
        sweep_values(_compose("experiment=accuracy_vs_K", "experiment.sweep.param=spec.nope"))
    with pytest.raises(ValueError, match="empty"):
        sweep_values(_compose("experiment=accuracy_vs_K", "experiment.sweep.values=[]"))


def test_seed_everything_seeds_all_generators():
    seed_everything(5)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(5)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
