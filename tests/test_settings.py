"""``configs/`` mirrors ``lwgpu.settings``: the composed Hydra configs set the same defaults as the library,
and the library's signatures default to the settings constants. Study choices that differ on purpose are
listed in STUDY_CHOICES (each with its reason), so a new disagreement fails here."""
import inspect

import pytest
from hydra import compose, initialize_config_dir

from lwgpu import settings
from lwgpu.cli.bench import CONFIG_DIR

#: config key -> (value, reason): where a study deliberately departs from a library default
STUDY_CHOICES = {
    "spec.K": (16, "the default study fits 1,000 tasks in seconds; spec=reference uses settings.K"),
    "search.mixture.max_mixture": (3, "the default study's mixture size"),
}


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check(cfg, expected):
    for key, want in expected.items():
        got = _get(cfg, key)
        if key in STUDY_CHOICES:
            assert got == STUDY_CHOICES[key][0], f"{key}: {got} is neither the recorded study choice nor the default"
        else:
            assert got == want, f"configs say {key}={got!r}, lwgpu.settings says {want!r}"


def test_spec_configs_mirror_settings():
    _check(_compose(), {"spec.K": settings.K, "spec.gamma": settings.GAMMA, "spec.engine": settings.FIT_ENGINE})
    cfg = _compose()
    assert cfg.spec.steps is None or cfg.spec.steps == settings.FIT_STEPS
    ref = _compose("spec=reference")
    assert (ref.spec.K, ref.spec.gamma, ref.spec.steps) == (settings.K, settings.GAMMA, settings.FIT_STEPS)


@pytest.mark.parametrize("option", ["auto", "numba", "torch", "cuda"])
def test_kernel_configs_mirror_settings(option):
    cfg = _compose(f"kernel={option}")
    assert cfg.kernel.backend == (settings.BACKEND if option == "auto" else option)
    assert cfg.kernel.chunk == settings.EXACT_CHUNK
    assert cfg.kernel.search._target_ == "lwgpu.search.search_exact"


def test_search_configs_mirror_settings():
    _check(_compose(), {
        "search.k": settings.EXACT_K,
        "search.mixture.max_mixture": settings.MIXTURE_MAX,
        "search.mixture.method": settings.MIXTURE_METHOD,
        "search.mixture.decay_rate": settings.MIXTURE_DECAY_RATE,
        "search.mixture.weight_cutoff": settings.MIXTURE_WEIGHT_CUTOFF,
    })


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_library_signatures_default_to_settings():
    from lwgpu.kernels import get_backend, mmd2, mmd2_pairwise
    from lwgpu.kernels.numba_mmd import NumbaBackend
    from lwgpu.kernels.torch_mmd import TorchBackend
    from lwgpu.search import Pivots, mixture_auto, mixture_greedy, search_exact
    from lwgpu.spec.fit import DEFAULT_MAX_POINTS, DEFAULT_STEPS, fit_arrays
    from lwgpu.spec.rkme import RKME

    assert (_default(RKME.fit_many, "K"), _default(RKME.fit_many, "gamma")) == (settings.K, settings.GAMMA)
    assert (_default(RKME.fit, "K"), _default(RKME, "gamma"), _default(fit_arrays, "K")) == (
        settings.K, settings.GAMMA, settings.K)
    assert (DEFAULT_STEPS, DEFAULT_MAX_POINTS) == (settings.FIT_STEPS, settings.FIT_MAX_POINTS)
    assert _default(search_exact, "k") == settings.EXACT_K and _default(search_exact, "chunk") == settings.EXACT_CHUNK
    assert _default(search_exact, "backend") == _default(get_backend, "backend") == _default(mmd2, "backend") \
        == settings.BACKEND
    assert _default(Pivots, "m") == settings.PIVOTS_M and _default(Pivots, "rel_tol") == settings.PIVOTS_REL_TOL
    assert _default(mmd2_pairwise, "tile") == settings.PAIRWISE_TILE
    assert (TorchBackend.tile, NumbaBackend.tile) == (settings.TILE_TORCH, settings.TILE_NUMBA)
    assert _default(mixture_greedy, "decay_rate") == settings.MIXTURE_DECAY_RATE
    assert _default(mixture_auto, "weight_cutoff") == settings.MIXTURE_WEIGHT_CUTOFF
    assert _default(mixture_greedy, "max_mixture") == _default(mixture_auto, "max_mixture") == settings.MIXTURE_MAX
