"""Model code written for the reference system imports learnware.model.BaseModel: the worker supplies it."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from lwgpu.market import Market, SubmissionError, pack_learnware
from lwgpu.market.worker import close_workers
from lwgpu.spec.rkme import RKME

REFERENCE_STYLE = textwrap.dedent('''
    import numpy as np
    import learnware
    from learnware.model import BaseModel
    from learnware.model.base import BaseModel as Base2


    class Model(BaseModel):
        def __init__(self):
            super().__init__(input_shape=(4,), output_shape=(3,))
            assert BaseModel is Base2
            self.stand_in = "stand-in" in (learnware.__doc__ or "")

        def predict(self, X):
            if not self.stand_in:  # the worker must not import the real reference package
                raise RuntimeError("the real learnware package was imported")
            return np.asarray(X)[:, :3] * self.input_shape[0]
''')


@pytest.fixture()
def package(tmp_path):
    src = tmp_path / "ref_model.py"
    src.write_text(REFERENCE_STYLE)
    rng = np.random.default_rng(0)
    spec = RKME(rng.normal(size=(8, 4)), np.full(8, 1 / 8), 0.1)
    sem = {"data_type": "table", "task_type": "regression", "input_dim": 4, "output_dim": 3, "name": "ref style",
           "description": "a model subclassing the reference's BaseModel", "tags": ["ref"], "library": "other",
           "license": "MIT"}
    yield pack_learnware({"module": str(src), "class": "Model"}, sem, spec, tmp_path / "pkg.zip")
    close_workers()


def test_reference_basemodel_subclass_is_accepted_and_predicts(package, tmp_path):
    with Market(tmp_path / "m", device="cpu") as m:
        i = m.submit(package)
        X = np.arange(8, dtype=np.float64).reshape(2, 4)
        np.testing.assert_allclose(m.get(i).predict(X), X[:, :3] * 4)


def test_in_process_use_does_not_get_the_stand_in(package, tmp_path):
    """The market's own process never installs the stand-in: trusted use needs the real package."""
    import sys

    with Market(tmp_path / "m", device="cpu") as m:
        i = m.submit(package)
        assert "stand-in" not in (getattr(sys.modules.get("learnware"), "__doc__", "") or "")
        lw = m.get(i, trust=True)
        try:
            out = lw.predict(np.zeros((2, 4)))
        except (ImportError, RuntimeError, SubmissionError) as exc:  # real package missing, or present
            assert "learnware" in str(exc)
        else:
            pytest.fail(f"trusted in-process predict used a stand-in: {out}")
