"""The database semantic filter (Store.filter_ids) against the in-memory filter_semantic, bulk insert,
removal, and the upgrade of a version-1 database.

Every test runs on SQLite and on PostgreSQL: a server the tests start themselves (tests/pg_server.py), or
the one at ``LWGPU_TEST_PG_URL`` (a URL whose user may create databases, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, create_engine, text

from lwgpu.market.schema import FTS_TABLE, SCHEMA_VERSION
from lwgpu.market.store import Store
from lwgpu.search.semantic_filter import filter_semantic, partial_ratio
from lwgpu.spec.semantic import DATA_TYPES, LIBRARIES, LICENSES, TASK_TYPES, validate_semantic_spec

WORDS = ["digits", "house", "prices", "weather", "forecast", "classifier", "regression", "Image", "text",
         "sentiment", "FRAUD", "detection", "model", "random", "forest", "net", "sales", "energy", "load",
         "credit", "risk", "churn", "ab", "x", "İstanbul", "straße", "ſtraw", "Σίσυφος", "café", "50%_off",
         'say "hi"', "a\\b"]
TAGS = ["finance", "health", "retail", "vision", "nlp", "energy", "sport", "Edu"]
MODEL_TYPES = ["linear", "tree", "mlp"]


def _spec(rng: np.random.Generator) -> dict:
    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS, rng.integers(lo, hi)))

    spec = {
        "data_type": str(rng.choice(DATA_TYPES)), "task_type": str(rng.choice(TASK_TYPES[:3])),
        "library": str(rng.choice(LIBRARIES)), "license": str(rng.choice(LICENSES[:4])),
        "input_dim": int(rng.choice([2, 8, 64])), "output_dim": int(rng.choice([1, 2, 10])),
        "name": words(1, 4), "description": words(0, 8) if rng.random() < 0.8 else "",
        "tags": [str(t) for t in rng.choice(TAGS, rng.integers(0, 3), replace=False)],
    }
    if rng.random() < 0.6:
        spec["model_type"] = str(rng.choice(MODEL_TYPES))
    return validate_semantic_spec(spec)


def _typo(rng: np.random.Generator, s: str) -> str:
    chars = list(s)
    for _ in range(max(1, len(chars) // 6)):
        j = int(rng.integers(len(chars)))
        op = rng.integers(3)
        if op == 0:
            chars[j] = "q"
        elif op == 1 and len(chars) > 1:
            del chars[j]
        else:
            chars.insert(j, "z")
    return "".join(chars)


def _text_query(rng: np.random.Generator, specs: dict) -> str:
    s = specs[int(rng.choice(list(specs)))]
    src = s["name"] if rng.random() < 0.6 or not s["description"] else s["description"]
    kind = rng.integers(6)
    if kind == 0:  # a substring, case changed
        a = int(rng.integers(len(src)))
        b = min(len(src), a + int(rng.integers(1, 12)))
        sub = src[a:b].strip() or src
        return sub.upper() if rng.random() < 0.5 else sub
    if kind == 1:  # short (1-2 characters)
        a = int(rng.integers(len(src)))
        return src[a:a + int(rng.integers(1, 3))].strip() or "a"
    if kind in (2, 3):  # fuzzy
        return _typo(rng, src[:20])
    if kind == 4:
        return "zzqxv wvut"  # nothing
    return str(rng.choice(WORDS)) + " " + str(rng.choice(WORDS))


def _query(rng: np.random.Generator, specs: dict) -> dict:
    q: dict = {}
    pools = {"data_type": DATA_TYPES, "task_type": TASK_TYPES[:4], "library": LIBRARIES,
             "license": LICENSES[:5], "model_type": MODEL_TYPES + ["other"], "input_dim": [2, 8, 64, 5],
             "output_dim": [1, 2, 10]}
    for key, pool in pools.items():
        if rng.random() < 0.2:
            vals = [v.item() if hasattr(v, "item") else v for v in rng.choice(pool, rng.integers(1, 3))]
            q[key] = vals if len(vals) > 1 or rng.random() < 0.5 else vals[0]
    if rng.random() < 0.3:
        q["tags"] = [str(t) for t in rng.choice(TAGS + ["none"], rng.integers(1, 3), replace=False)]
    if rng.random() < 0.6:
        q["name"] = _text_query(rng, specs)
    if rng.random() < 0.3:
        q["description"] = _text_query(rng, specs)
    return q


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def new_url(request, tmp_path_factory):
    """A factory of URLs of new, empty databases of the backend under test (PostgreSQL: the session's
    server from the ``pg`` fixture, started by the tests themselves; skipped saying why if none can be)."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path_factory.mktemp('db') / 'm.db'}"
    return request.getfixturevalue("pg").new_database


def _fts_ok(store: Store) -> None:
    """The full-text index's own consistency check (SQLite's FTS5; PostgreSQL indexes need none)."""
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as c:
            c.exec_driver_sql(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('integrity-check', 0)")


def _fill(store: Store, specs: list[dict], start: int = 0) -> dict[int, dict]:
    with store.transaction() as s:
        ids = Store.insert_many(s, [(f"h{start + j}", sp, {"k": j}, "rkme.json") for j, sp in enumerate(specs)])
    return dict(zip(ids, specs))


@pytest.fixture(scope="module")
def filled(new_url):
    rng = np.random.default_rng(0)
    store = Store(new_url())
    specs = _fill(store, [_spec(rng) for _ in range(300)])
    yield store, specs
    store.dispose()


def _check(store: Store, specs: dict, q: dict) -> None:
    got = store.filter_ids(q)
    assert got.dtype == np.int64
    assert got.tolist() == filter_semantic(q, specs), q


def test_filter_ids_matches_filter_semantic(filled):
    store, specs = filled
    rng = np.random.default_rng(1)
    kinds = {"fuzzy": 0, "exact": 0, "empty": 0}
    for _ in range(600):
        q = _query(rng, specs)
        _check(store, specs, q)
        want = filter_semantic(q, specs)
        kinds["empty" if not want else "exact" if sorted(want) == want else "fuzzy"] += 1
    assert min(kinds.values()) >= 20, kinds  # every path was exercised


def test_filter_ids_simple_cases(filled):
    store, specs = filled
    assert store.filter_ids(None).tolist() == sorted(specs)
    assert store.filter_ids({}).tolist() == sorted(specs)
    assert store.filter_ids({"feature_descriptions": {0: "x"}}).tolist() == sorted(specs)
    for q in ({"data_type": "table"}, {"task_type": ["Regression", "classification"]}, {"tags": ["Edu"]},
              {"model_type": "tree", "input_dim": [2, 8]}, {"name": "İstanbul"}, {"name": "istanbul"},
              {"name": "STRASSE"}, {"description": "strasse"}, {"name": "straw"}, {"name": '"hi"'},
              {"name": "50%_"}, {"name": "%"}, {"name": "a\\b"}, {"name": "weathr forcast"},
              {"name": "digits", "description": "fraud"}, {"tags": ["none"]}, {"input_dim": 3}):
        _check(store, specs, q)


def test_bad_queries_raise(filled):
    store, _ = filled
    with pytest.raises(ValueError, match="unknown"):
        store.filter_ids({"colour": "red"})
    with pytest.raises(ValueError, match="task_type"):
        store.filter_ids({"task_type": "dance"})
    with pytest.raises(ValueError, match="input_dim"):
        store.filter_ids({"input_dim": -1})
    with pytest.raises(ValueError, match="tags"):
        store.filter_ids({"tags": [3]})
    with pytest.raises(ValueError, match="name"):
        store.filter_ids({"name": 5})


def test_partial_ratio_is_rapidfuzz():
    from rapidfuzz import fuzz

    assert partial_ratio("Digit", "handwritten DIGITS") == 1.0
    assert partial_ratio("hause", "house prices") == pytest.approx(fuzz.partial_ratio("hause", "house prices") / 100)
    assert partial_ratio("", "x") == 1.0 and partial_ratio("x", "") == 0.0


def _fts_ids(store: Store, needle: str) -> list[int]:
    with store.engine.connect() as c:
        return sorted(c.execute(text(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :p"),
                                {"p": '"' + needle.lower().replace('"', '""') + '"'}).scalars())


def test_insert_many_and_remove_keep_tags_and_fts(new_url):
    rng = np.random.default_rng(2)
    store = Store(new_url())
    specs = _fill(store, [_spec(rng) for _ in range(120)])
    ids = sorted(specs)
    assert ids == list(range(1, 121))
    with store.transaction() as s:
        one = Store.insert(s, "single", specs[1], {}, "rkme.json")
    specs[one] = specs[1]
    assert store.tags(one) == specs[1]["tags"]
    gone = [int(i) for i in rng.choice(list(specs), 50, replace=False)]
    with store.transaction() as s:
        assert all(Store.remove(s, i) for i in gone)
        assert not Store.remove(s, gone[0])
    for i in gone:
        specs.pop(i)
        assert store.tags(i) == []
    more = _fill(store, [_spec(rng) for _ in range(30)], start=1000)
    assert min(more) > max(ids + [one])  # ids are never reused
    specs.update(more)
    with store.engine.connect() as c:
        tag_rows = [tuple(r) for r in c.execute(text("SELECT learnware_id, tag FROM tags"))]
    _fts_ok(store)
    assert sorted(tag_rows) == sorted((i, t) for i, sp in specs.items() for t in sp["tags"])
    for i, sp in specs.items():
        for field in ("name", "description"):
            if len(sp[field]) >= 3 and store.engine.dialect.name == "sqlite":
                hits = _fts_ids(store, sp[field])
                assert i in hits and not set(hits) & set(gone)
    q_rng = np.random.default_rng(3)
    for _ in range(150):
        _check(store, specs, _query(q_rng, specs))
    ids, dims = store.ids_and_dims()
    assert ids.tolist() == sorted(specs) and dims.tolist() == [specs[i]["input_dim"] for i in sorted(specs)]
    assert store.count() == len(specs)
    some = sorted(specs)[:3]
    assert store.ids_by_hash([store.get(i).content_hash for i in some] + ["nope"]) == {
        store.get(i).content_hash: i for i in some}
    store.dispose()


def test_duplicate_hash_rolls_back(new_url):
    from sqlalchemy.exc import IntegrityError

    rng = np.random.default_rng(4)
    store = Store(new_url())
    specs = _fill(store, [_spec(rng) for _ in range(3)])
    with pytest.raises(IntegrityError):
        with store.transaction() as s:
            Store.insert_many(s, [("new", _spec(rng), {}, "f"), ("h0", _spec(rng), {}, "f")])
    assert store.filter_ids(None).tolist() == sorted(specs)
    with store.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM tags")).scalar() == sum(len(s["tags"]) for s in specs.values())
    store.dispose()


def _v1_tables() -> tuple[MetaData, Table]:
    """The tables as the version-1 Store created them (learnwares with semantic_json, meta)."""
    md = MetaData()
    lw = Table("learnwares", md,
               Column("id", Integer, primary_key=True, autoincrement=True),
               Column("content_hash", String(64), nullable=False, unique=True, index=True),
               Column("name", String(512), nullable=False),
               Column("data_type", String(32), nullable=False, index=True),
               Column("task_type", String(32), nullable=False, index=True),
               Column("library", String(32), nullable=False), Column("license", String(32), nullable=False),
               Column("input_dim", Integer, nullable=False, index=True),
               Column("output_dim", Integer, nullable=False),
               Column("semantic_json", Text, nullable=False), Column("model_json", Text, nullable=False),
               Column("spec_file", String(256), nullable=False), Column("created", Float, nullable=False),
               sqlite_autoincrement=True)
    Table("meta", md, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))
    return md, lw


def test_upgrade_from_version_1(new_url, caplog):
    """A database written by the version-1 Store (learnwares + semantic_json only) is upgraded on open."""
    rng = np.random.default_rng(5)
    url = new_url()
    md, lw = _v1_tables()
    engine = create_engine(url)
    md.create_all(engine)
    specs = [_spec(rng) for _ in range(80)]
    with engine.begin() as c:
        c.execute(lw.insert(), [
            {"content_hash": f"h{j}", "name": s["name"], "data_type": s["data_type"], "task_type": s["task_type"],
             "library": s["library"], "license": s["license"], "input_dim": s["input_dim"],
             "output_dim": s["output_dim"], "semantic_json": json.dumps(s, sort_keys=True), "model_json": "{}",
             "spec_file": "rkme.json", "created": 0.0} for j, s in enumerate(specs)])
        c.execute(text("DELETE FROM learnwares WHERE id IN (3, 80)"))  # ids 3, 80 must never come back
        c.execute(text("INSERT INTO meta VALUES ('gamma', '0.1')"))
    engine.dispose()
    by_id = {j + 1: s for j, s in enumerate(specs) if j + 1 not in (3, 80)}

    with caplog.at_level(logging.INFO, logger="lwgpu.market.schema"):
        store = Store(url)
    assert "upgrad" in caplog.text
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) and store.get_meta("gamma") == "0.1"
    row = store.get(5)
    assert row.description == by_id[5]["description"] and row.model_type == by_id[5].get("model_type")
    assert store.tags(5) == by_id[5]["tags"]
    _fts_ok(store)
    q_rng = np.random.default_rng(6)
    for _ in range(100):
        _check(store, by_id, _query(q_rng, by_id))
    with store.transaction() as s:
        new = Store.insert_many(s, [("new", specs[0], {}, "rkme.json")])
        Store.remove(s, 7)
    assert new == [81]
    by_id[81] = specs[0]
    by_id.pop(7)
    store.dispose()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lwgpu.market.schema"):
        store = Store(url)  # already upgraded: opens without redoing it
    assert "upgrad" not in caplog.text
    for _ in range(50):
        _check(store, by_id, _query(q_rng, by_id))
    store.dispose()


def test_filter_follows_writes_of_another_store(new_url):
    """Store A's in-memory field copy follows inserts and removals made through Store B (another process)."""
    rng = np.random.default_rng(7)
    url = new_url()
    a, b = Store(url), Store(url)
    specs = _fill(b, [_spec(rng) for _ in range(60)])
    q_rng = np.random.default_rng(8)
    for step in range(12):
        for _ in range(8):
            _check(a, specs, _query(q_rng, specs))
        writer = b if step % 3 else a
        gone = [int(i) for i in rng.choice(list(specs), int(rng.integers(0, 6)), replace=False)]
        with writer.transaction() as s:
            for i in gone:
                Store.remove(s, i)
            new = Store.insert_many(s, [(f"s{step}-{j}", _spec(rng), {}, "f") for j in range(len(gone) if step % 2 else 7)])
        for i in gone:
            specs.pop(i)
        specs.update(zip(new, [json.loads(r.semantic_json) for r in map(b.get, new)]))
    for _ in range(20):
        _check(a, specs, _query(q_rng, specs))
    a.dispose()
    b.dispose()


def _sqlite_store(tmp_path, n: int = 250, seed: int = 9) -> tuple[Store, dict[int, dict]]:
    rng = np.random.default_rng(seed)
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    specs = [_spec(rng) for _ in range(n)]
    for j, sp in enumerate(specs[:40]):  # numbers and mixed runs, so that words sit inside longer terms
        sp["name"] = f"{sp['name']} model{j}x 12{j}34 Über{j}"
    return store, _fill(store, specs)


def test_word_index_gives_the_trigram_index_ids(tmp_path):
    """The word path (vocabulary terms containing the word, then their postings) returns exactly the ids
    of the trigram phrase query, on random substrings of the stored texts: ASCII, non-ASCII, digits."""
    from lwgpu.market.schema import is_word
    from lwgpu.market.store_filter import _word_ids

    store, specs = _sqlite_store(tmp_path)
    rng = np.random.default_rng(10)
    texts = [sp[f].lower() for sp in specs.values() for f in ("name", "description") if sp[f]]
    used = 0
    with store.engine.connect() as c:
        for _ in range(400):
            src = texts[int(rng.integers(len(texts)))]
            a = int(rng.integers(len(src)))
            sub = src[a:a + int(rng.integers(3, 10))]
            if len(sub) < 3:
                continue
            got = _word_ids(c, sub)
            if not is_word(sub):
                assert got is None
                continue
            used += 1
            assert got is not None and got.tolist() == _fts_ids(store, sub), sub
        crossing = 0
        for sp in specs.values():  # across the end of the name and the start of the description: no match
            cross = (sp["name"][-3:] + sp["description"][:3]).lower()
            if sp["description"] and is_word(cross):
                crossing += 1
                assert _word_ids(c, cross).tolist() == _fts_ids(store, cross), cross
        assert crossing >= 5
        for absent in ("zzqxv", "über999", "12345678"):
            assert _word_ids(c, absent).tolist() == _fts_ids(store, absent) == []
    assert used >= 100
    store.dispose()


def test_word_index_falls_back_when_a_word_is_in_many_terms(tmp_path, monkeypatch):
    import lwgpu.market.store_filter as sf

    store, specs = _sqlite_store(tmp_path, n=80)
    with store.engine.connect() as c:
        assert sf._word_ids(c, "model") is not None  # "model", "model0x", "model1x", ...
        monkeypatch.setattr(sf, "WORD_TERMS_MAX", 3)
        assert sf._word_ids(c, "model") is None
    for q in ({"name": "model"}, {"name": "MODEL1"}, {"description": "über"}):
        _check(store, specs, q)  # the trigram path answers the same
    store.dispose()


def test_word_index_follows_removals_and_upgrade_from_version_3(tmp_path, caplog):
    """Removed learnwares leave the word index (their terms may stay in the vocabulary); a version-3
    database (no word index) gets one, filled from the stored texts, when it is opened."""
    from lwgpu.market.schema import VOCAB_FTS, VOCAB_TABLE, WORDS_TABLE
    from lwgpu.market.store_filter import _word_ids

    store, specs = _sqlite_store(tmp_path, n=120)
    gone = sorted(specs)[:40:3]
    with store.transaction() as s:
        for i in gone:
            Store.remove(s, i)
    for i in gone:
        specs.pop(i)
    with store.engine.connect() as c:
        for word in ("model1x", "12134", "digits", "über7", "café", "istanbul", "straße"):
            got = _word_ids(c, word)
            assert got is not None and got.tolist() == _fts_ids(store, word), word
            assert not set(got.tolist()) & set(gone)
    url = str(store.engine.url)
    with store.engine.begin() as c:  # back to what version 3 wrote
        c.exec_driver_sql(f"DROP TRIGGER {VOCAB_TABLE}_added")
        for t in (WORDS_TABLE, VOCAB_FTS, VOCAB_TABLE):
            c.exec_driver_sql(f"DROP TABLE {t}")
        c.exec_driver_sql("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    store.dispose()
    with caplog.at_level(logging.INFO, logger="lwgpu.market.schema"):
        store = Store(url)
    assert "word index" in caplog.text and store.get_meta("schema_version") == str(SCHEMA_VERSION)
    with store.engine.connect() as c:
        for word in ("model1x", "digits", "über7", "forecast"):
            assert _word_ids(c, word).tolist() == _fts_ids(store, word), word
    q_rng = np.random.default_rng(11)
    for _ in range(100):
        _check(store, specs, _query(q_rng, specs))
    store.dispose()


@pytest.mark.parametrize("sparse", [False, True])
def test_snapshot_positions_and_admitted_match_brute_force(sparse):
    """The snapshot's id lookup (a table for dense ids, binary search for sparse ones) against np.isin."""
    from lwgpu.market.field_index import _Snapshot

    rng = np.random.default_rng(3)
    ids = np.sort(rng.choice(10**12 if sparse else 50_000, 20_000, replace=False).astype(np.int64)) + 1
    snap = _Snapshot("g", ids)
    probe = np.concatenate([rng.choice(ids, 3_000), rng.integers(-5, int(ids[-1]) + 10, 3_000), [0, -1, 2**62]])
    pos = snap.positions(probe)
    there = np.isin(probe, ids)
    assert np.array_equal(pos >= 0, there) and np.array_equal(ids[pos[there]], probe[there])
    mask = rng.random(len(ids)) < 0.3
    for m in (None, mask):
        want = np.unique(probe[np.isin(probe, ids if m is None else ids[m])])
        assert np.array_equal(snap.admitted(probe, m), want)
    assert snap.admitted(np.zeros(0, np.int64), mask).size == 0 and _Snapshot().positions(probe).max() == -1
