"""A market holding table, text and image learnwares side by side: one bank per type and shape, searches by
the user spec's type return only that type (distances equal the specs' own float64 ones), encoders never mix,
the database records each spec's type, and an older database is upgraded."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from lwgpu.data.text_markets import TextTaskModel, load_corpus
from lwgpu.kernels import reference as ref
from lwgpu.market import Market, pack_learnware
from lwgpu.market.checks import PROBE_TEXTS, SubmissionError
from lwgpu.market.store import Store
from lwgpu.market.schema import SCHEMA_VERSION
from lwgpu.spec.io import IMAGE_TYPE, TABLE_TYPE, TEXT_TYPE
from lwgpu.spec.rkme import RKME
from lwgpu.spec.text import EncoderMismatchError, TextRKME, register_encoder


def _hashing_encoder(texts):
    """A small deterministic bag-of-words encoder (unit-norm 64-d hashed counts)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=64, alternate_sign=False).transform(texts).toarray()


register_encoder("test/hash-a", _hashing_encoder)
register_encoder("test/hash-b", lambda t: 2.0 * _hashing_encoder(t))


def _sem(data_type, name, input_dim, output_dim, tags=()):
    return {"data_type": data_type, "task_type": "classification", "input_dim": input_dim, "output_dim": output_dim,
            "name": name, "description": name, "tags": list(tags), "library": "sklearn", "license": "MIT"}


@pytest.fixture(scope="module")
def parts():
    """(kind, model, semantic spec, spec) of 3 table, 3 text (encoder hash-a) and, when image specs are
    available, 3 image learnwares."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        X = rng.normal(loc=2.0 * i, size=(40, 4))
        y = (X[:, 0] > 2.0 * i).astype(int)
        out.append(("table", LogisticRegression().fit(X, y), _sem("table", f"table{i}", 4, 2),
                    RKME.fit(X, K=4, device="cpu", seed=i)))
    corpus = load_corpus(min_paragraphs=12)
    names = sorted(corpus)[:6]
    for i in range(3):
        texts = corpus[names[2 * i]][:6] + corpus[names[2 * i + 1]][:6]
        y = [2 * i] * 6 + [2 * i + 1] * 6
        out.append(("text", TextTaskModel(6).fit(texts, y), _sem("text", f"text{i}", 1, 6, ["pydoc"]),
                    TextRKME.fit(texts, K=4, encoder="test/hash-a", device="cpu", seed=i)))
    try:
        from lwgpu.data.image_markets import make_image_market
        import lwgpu.spec.image  # noqa: F401
    except ImportError:
        return out
    data = make_image_market(n_tasks=3, n_users=0, K=3, train_per_class=4, spec_options={"steps": 0}, seed=1)
    out += [("image", t.model, t.semantic_spec, t.spec) for t in data.tasks]
    return out


@pytest.fixture(scope="module")
def market(parts, tmp_path_factory):
    m = Market(tmp_path_factory.mktemp("typed") / "m", device="cpu")
    ids = m.add_many([p[1] for p in parts], [p[2] for p in parts], [p[3] for p in parts], progress=False)
    assert all(isinstance(i, int) for i in ids), ids
    yield m, ids
    m.close()


def _brute(query, spec):
    if isinstance(query, RKME):
        (zq, bq), (zs, bs) = query.to(dtype="float64").numpy(), spec.to(dtype="float64").numpy()
        return ref.mmd2(zq, bq, zs, bs, query.gamma)
    return query.dist(spec)  # image specs: the spec's own float64 NNGP distance


def _ids_of(parts, ids, kind):
    return {i for p, i in zip(parts, ids) if p[0] == kind}


def test_each_type_searches_only_its_own_bank(market, parts):
    m, ids = market
    kinds = sorted({p[0] for p in parts})
    keys = sorted(m._banks.keys())
    assert len(keys) == len(kinds) and "d4" in keys and any(k.startswith("text-test_hash_a-") for k in keys)
    for p, i in zip(parts, ids):
        res = m.search(p[3], k=10, mixture=False)
        got = [s.id for s in res.single]
        assert set(got) == _ids_of(parts, ids, p[0])  # every learnware of its type, none of another
        assert got[0] == i  # the learnware whose spec it is (distance 0)
        for s in res.single:
            other = parts[ids.index(s.id)][3]
            assert s.mmd2 == pytest.approx(_brute(p[3], other), rel=2e-4, abs=2e-6)
    stored = {r.id: (r.spec_type, r.encoder) for r in m.store.rows()}
    want = {"table": (TABLE_TYPE, None), "text": (TEXT_TYPE, "test/hash-a"), "image": (IMAGE_TYPE, None)}
    assert stored == {i: want[p[0]] for p, i in zip(parts, ids)}
    assert type(m.get(ids[3]).rkme) is TextRKME and m.get(ids[3]).rkme.encoder == "test/hash-a"


def test_semantic_filter_within_a_type(market, parts):
    m, ids = market
    text_ids = sorted(_ids_of(parts, ids, "text"))
    res = m.search(parts[3][3], semantic={"name": "text2"}, k=5, mixture=False)
    assert [s.id for s in res.single] == [text_ids[2]]
    res = m.search(parts[0][3], semantic={"data_type": "text"}, k=5, mixture=False)
    assert res.single == []  # a table query never sees text learnwares, even when asked for them


def test_encoder_mismatch_refused_and_encoders_kept_apart(parts, tmp_path):
    with Market(tmp_path / "m", device="cpu") as m:
        text_parts = [p for p in parts if p[0] == "text"]
        a_ids = m.add_many([p[1] for p in text_parts], [p[2] for p in text_parts], [p[3] for p in text_parts],
                           progress=False)
        texts = load_corpus(min_paragraphs=12)[sorted(load_corpus(min_paragraphs=12))[0]][:6]
        b_spec = TextRKME.fit(texts, K=3, encoder="test/hash-b", device="cpu")
        with pytest.raises(EncoderMismatchError, match="test/hash-b"):
            m.search(b_spec)
        b_id = m.add(text_parts[0][1], _sem("text", "b0", 1, 6), b_spec)
        assert [s.id for s in m.search(b_spec, mixture=False).single] == [b_id]
        assert {s.id for s in m.search(text_parts[0][3], mixture=False).single} == set(a_ids)
        with pytest.raises(SubmissionError, match="data_type 'text'"):
            m.add(text_parts[0][1], _sem("table", "wrong", 1, 6), text_parts[0][3])


def test_reopen_rebuilds_typed_banks_and_delete(market, parts, tmp_path):
    m, ids = market
    root = tmp_path / "copy"
    m.flush()
    shutil.copytree(m.root, root)
    shutil.rmtree(root / "banks")  # derived data: rebuilt from the database and the spec files
    with Market(root, device="cpu") as m2:
        assert sorted(m2._banks.keys()) == sorted(m._banks.keys())
        for p in parts:
            a = [(s.id, round(s.mmd2, 6)) for s in m.search(p[3], mixture=False).single]
            b = [(s.id, round(s.mmd2, 6)) for s in m2.search(p[3], mixture=False).single]
            assert a == b
        text_ids = sorted(_ids_of(parts, ids, "text"))
        m2.delete(text_ids[0])
        assert {s.id for s in m2.search(parts[4][3], mixture=False).single} == set(text_ids[1:])
    with Market(root, device="cpu") as m3:  # the delete survives a reopen; the other types are untouched
        assert {s.id for s in m3.search(parts[4][3], mixture=False).single} == set(text_ids[1:])
        assert {s.id for s in m3.search(parts[0][3], mixture=False).single} == _ids_of(parts, ids, "table")


def test_text_package_checked_in_worker(parts, tmp_path):
    kind, model, sem, spec = next(p for p in parts if p[0] == "text")
    pkg = pack_learnware(model, sem, spec, tmp_path / "text_pkg.zip")
    with Market(tmp_path / "m", device="cpu") as m:
        new = m.submit(pkg)
        lw = m.get(new)
        assert type(lw.rkme) is TextRKME and lw.rkme.encoder == "test/hash-a"
        probes = np.array(PROBE_TEXTS[:4])
        np.testing.assert_array_equal(lw.predict(probes), model.predict(probes))
        assert [s.id for s in m.search(spec, mixture=False).single] == [new]


def test_version2_database_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    with store.transaction() as s:
        Store.insert_many(s, [("h1", {**_sem("table", "t", 3, 2), "tags": []}, {"kind": "sklearn"}, "rkme.json")])
    store.dispose()
    eng = create_engine(url)
    with eng.begin() as conn:  # make it a version-2 database: no spec columns
        for ix in ("ix_learnwares_spec_type", "ix_learnwares_spec_key"):
            conn.execute(text(f"DROP INDEX IF EXISTS {ix}"))
        for col in ("spec_type", "spec_key", "encoder"):
            conn.execute(text(f"ALTER TABLE learnwares DROP COLUMN {col}"))
        conn.execute(text("UPDATE meta SET value = '2' WHERE key = 'schema_version'"))
    eng.dispose()
    store = Store(url)
    (row,) = store.rows()
    assert (row.spec_type, row.spec_key, row.encoder) == (TABLE_TYPE, None, None)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
    groups = store.bank_groups(*store.ids_and_dims())
    assert {k: v.tolist() for k, v in groups.items()} == {"d3": [row.id]}
    store.dispose()


@pytest.mark.gpu
def test_image_bank_on_gpu_matches_cpu(parts):
    from lwgpu.market.image_bank import ImageBank

    image = [p[3] for p in parts if p[0] == "image"]
    if not image:
        pytest.skip("image specs are not available")
    ids = np.arange(len(image)) + 1
    cpu, gpu = ImageBank(None, 0.1, (1, 32, 32), device="cpu"), ImageBank(None, 0.1, (1, 32, 32), device="cuda")
    cpu.add(image, ids)
    gpu.add(image, ids)
    np.testing.assert_allclose(gpu.mmd2(image[0]), cpu.mmd2(image[0]), rtol=1e-5, atol=1e-7)
