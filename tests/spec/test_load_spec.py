"""lwgpu.load_spec returns the class the JSON's ``type`` names, with the content intact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lwgpu
from lwgpu.spec.io import IMAGE_TYPE, TABLE_TYPE, TEXT_TYPE, spec_from_dict, spec_type
from lwgpu.spec.rkme import RKME
from lwgpu.spec.text import TextRKME

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_public_names():
    assert lwgpu.load_spec is lwgpu.spec.io.load_spec
    assert lwgpu.TextRKME is TextRKME


def test_table_and_text_by_type(tmp_path):
    rng = np.random.default_rng(0)
    z, beta = rng.normal(size=(5, 3)), rng.dirichlet(np.ones(5))
    table = RKME(z, beta, gamma=0.2, num_points=7, dtype="float64")
    text = TextRKME(z, beta, gamma=0.2, num_points=7, language=["de"], encoder="my/enc", dtype="float64")
    table.save(tmp_path / "table.json")
    text.save(tmp_path / "text.json")
    a, b = lwgpu.load_spec(tmp_path / "table.json", dtype="float64"), lwgpu.load_spec(tmp_path / "text.json")
    assert type(a) is RKME and type(b) is TextRKME
    assert spec_type(a) == TABLE_TYPE and spec_type(b) == TEXT_TYPE
    np.testing.assert_array_equal(a.z.numpy(), z)
    assert a.gamma == 0.2 and a.num_points == 7
    assert b.encoder == "my/enc" and b.language == ["de"]
    np.testing.assert_allclose(b.beta.numpy(), beta, rtol=1e-6)


def test_reference_files_by_type():
    table = lwgpu.load_spec(FIX / "reference_rkme" / "spec0.json")
    text = lwgpu.load_spec(FIX / "reference_text" / "spec_en.json")
    assert type(table) is RKME and type(text) is TextRKME and text.d == 384


def test_no_type_is_table_and_old_name_accepted():
    obj = {"z": [[0.0, 1.0]], "beta": [1.0], "gamma": 0.1}
    assert type(spec_from_dict(obj)) is RKME
    assert type(spec_from_dict({**obj, "type": "RKMEStatSpecification"})) is RKME


def test_bad_files_refused(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        lwgpu.load_spec(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be an object"):
        lwgpu.load_spec(tmp_path / "list.json")
    (tmp_path / "odd.json").write_text(json.dumps({"type": "RKMEVideoSpecification", "z": [[0]], "beta": [1]}))
    with pytest.raises(ValueError, match="unknown spec type 'RKMEVideoSpecification'"):
        lwgpu.load_spec(tmp_path / "odd.json")


def test_image_by_type(tmp_path):
    image = pytest.importorskip("lwgpu.spec.image")
    rng = np.random.default_rng(1)
    X = rng.random((6, 1, 32, 32)).astype(np.float32)
    spec = image.ImageRKME.fit(X, K=2, steps=0)
    spec.save(tmp_path / "image.json")
    back = lwgpu.load_spec(tmp_path / "image.json")
    assert type(back) is image.ImageRKME and spec_type(back) == IMAGE_TYPE == back.type
    assert json.loads((tmp_path / "image.json").read_text())["type"] == IMAGE_TYPE
    z0 = spec.z.detach().cpu().numpy() if hasattr(spec.z, "detach") else np.asarray(spec.z)
    z1 = back.z.detach().cpu().numpy() if hasattr(back.z, "detach") else np.asarray(back.z)
    np.testing.assert_allclose(z1, z0, rtol=1e-5, atol=1e-6)
    assert lwgpu.ImageRKME is image.ImageRKME
