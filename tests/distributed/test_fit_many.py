"""lwgpu.distributed.fit_many on two worker processes: the specs RKME.fit_many gives in this process.

Every dataset differs and gets its own seed, so a dataset fitted with the wrong seed, or a result put
back in the wrong place, fails the comparison. The fits use the torch engine (``ENGINE``): a fresh worker
process loads it at once, where the numba engine first loads its compiled kernels (seconds per worker);
the engine is passed through to ``RKME.fit_many`` unchanged (benchmarks/bench_distributed.py checks the
numba engine's results the same way).
"""
from __future__ import annotations

import numpy as np
import pytest

from lwgpu.distributed import fit_many
from lwgpu.spec.rkme import RKME

K, GAMMA, STEPS = 8, 0.2, 2
ENGINE = "torch"


def _datasets(n: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(loc=i, size=(40 + 5 * i, 3)) for i in range(n)]


def _same_specs(got: list[RKME], want: list[RKME]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.device.type == "cpu" and a.num_points == b.num_points
        np.testing.assert_allclose(a.z.numpy(), b.z.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.beta.numpy(), b.beta.numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def data():
    xs = _datasets()
    seeds = [100 + 7 * i for i in range(len(xs))]
    return xs, seeds, RKME.fit_many(xs, K=K, gamma=GAMMA, steps=STEPS, seed=seeds, device="cpu", engine=ENGINE,
                                        progress=False)


def test_list_of_arrays_in_chunks(client, data, capsys):
    xs, seeds, want = data
    got = fit_many(client, xs, K=K, gamma=GAMMA, steps=STEPS, seed=seeds, device="cpu", engine=ENGINE, chunk_size=2,
                   progress=True)
    _same_specs(got, want)
    assert "7/7" in capsys.readouterr().err  # the progress bar counted every dataset
    # one seed for all: each dataset with that seed, as RKME.fit gives it
    one = fit_many(client, xs[:3], K=K, gamma=GAMMA, steps=STEPS, seed=5, device="cpu", engine=ENGINE, progress=False)
    _same_specs(one, [RKME.fit(x, K=K, gamma=GAMMA, steps=STEPS, seed=5, device="cpu", engine=ENGINE) for x in xs[:3]])


def test_bag_delayed_and_futures(client, data):
    import dask
    import dask.bag as db

    xs, seeds, want = data
    bag = db.from_sequence(xs, npartitions=3)
    _same_specs(fit_many(client, bag, K=K, gamma=GAMMA, steps=STEPS, seed=seeds, device="cpu", engine=ENGINE,
                         progress=False), want)
    # a mix: delayed objects (computed on the workers), futures (already there) and plain arrays
    mixed = [dask.delayed(np.asarray)(x) if i % 3 == 0 else client.scatter(x) if i % 3 == 1 else x
             for i, x in enumerate(xs)]
    got = fit_many(client, mixed, K=K, gamma=GAMMA, steps=STEPS, seed=seeds, device="cpu", engine=ENGINE,
                   chunk_size=3, progress=False)
    _same_specs(got, want)


def test_errors(client, data):
    xs, _, _ = data
    with pytest.raises(ValueError, match="one int per dataset"):
        fit_many(client, xs, seed=[1, 2], progress=False)
    with pytest.raises(ValueError, match="no datasets"):
        fit_many(client, [], progress=False)
    with pytest.raises(ValueError, match="unknown fit options"):  # raised on the worker, re-raised here
        fit_many(client, xs[:2], K=K, device="cpu", engine=ENGINE, colour="red", progress=False)
