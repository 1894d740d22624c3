"""The small ``lwgpu`` command line: info, fit, search."""
import json

import numpy as np
import pytest

from lwgpu.bank import SpecBank
from lwgpu.cli.main import main
from lwgpu.spec.rkme import RKME


def test_info_prints_available(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "cuda", "faiss", "numba"} <= set(info)


def test_fit_writes_reference_json(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(60, 3))
    np.save(tmp_path / "x.npy", x)
    assert main(["fit", str(tmp_path / "x.npy"), str(tmp_path / "s.json"), "--K", "5", "--device", "cpu"]) == 0
    spec = RKME.load(tmp_path / "s.json")
    assert spec.K == 5 and spec.d == 3 and "residual" in capsys.readouterr().out


def test_search_ranks_bank(tmp_path, capsys):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 4, 2)).astype(np.float32) + 3 * np.arange(6)[:, None, None]
    beta = np.full((6, 4), 0.25, np.float32)
    SpecBank.from_arrays(z, beta, 0.1, ids=np.arange(10, 16)).save(tmp_path / "bank")
    RKME(z[2], beta[2], 0.1).save(tmp_path / "q.json")
    assert main(["search", str(tmp_path / "bank"), str(tmp_path / "q.json"), "--k", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "id=12" in lines[0]


def test_bad_input_exits_2(tmp_path, capsys):
    (tmp_path / "x.txt2").write_text("1")
    assert main(["fit", str(tmp_path / "x.txt2"), str(tmp_path / "o.json")]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_collect_without_runs_exits_2(tmp_path, capsys):
    assert main(["collect", str(tmp_path)]) == 2
    assert "results.jsonl" in capsys.readouterr().err
