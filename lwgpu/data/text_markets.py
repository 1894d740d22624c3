"""Text markets with ground truth from a real corpus shipped with Python: the pydoc topics.

Corpus: ``pydoc_data.topics.topics`` (in every CPython install, no download): 79 topics of the Python
language reference ("for", "assignment", "specialnames", "string-methods", ...), about 1,500 paragraphs
of at least 80 characters. Topics with enough paragraphs (``min_paragraphs``) are the classes.

A task is a subset of ``topics_per_task`` topics; its learnware is a :class:`TextTaskModel` (TF-IDF +
logistic regression, taking raw strings and answering the global topic label) with a
:class:`~lwgpu.spec.text.TextRKME` of its training paragraphs. The paragraphs of each topic are split
once into a training pool and a held-out pool; a user holds held-out paragraphs of one task's topics,
so the right learnware is known (``user.task``).

Paragraph embeddings are cached in-process per (encoder, text), so a sweep over market sizes encodes
each paragraph once.
"""
from __future__ import annotations

import functools
import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["TextTaskModel", "TextTask", "TextUser", "TextMarketData", "load_corpus", "make_text_market",
           "embed_cached"]

_EMB_CACHE: dict[tuple[str, str], np.ndarray] = {}


class TextTaskModel:
    """A classifier of raw strings: TF-IDF (word 1-2 grams) + logistic regression, in the full label space.

    ``predict(texts) -> (n,)`` labels in ``[0, n_classes)``; ``predict_proba(texts) -> (n, n_classes)``.
    Picklable (module-level class, scikit-learn only).
    """

    def __init__(self, n_classes: int) -> None:
        self.n_classes = int(n_classes)
        self.classes_ = np.arange(self.n_classes)
        self.pipeline: Any = None

    def fit(self, texts: Sequence[str], y: Any) -> "TextTaskModel":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                      LogisticRegression(max_iter=500)).fit([str(t) for t in texts], np.asarray(y))
        return self

    def predict(self, texts: Any) -> np.ndarray:
        return np.asarray(self.pipeline.predict([str(t) for t in texts]), dtype=np.int64)

    def predict_proba(self, texts: Any) -> np.ndarray:
        out = np.zeros((len(texts), self.n_classes))
        cls = np.asarray(self.pipeline.classes_, dtype=np.int64)
        out[:, cls] = self.pipeline.predict_proba([str(t) for t in texts])
        return out


@dataclass
class TextTask:
    """One market task: training paragraphs, topic labels, its topics, model, semantic spec and TextRKME."""

    index: int
    name: str
    texts: list[str]
    y: np.ndarray
    topics: tuple[int, ...]
    model: TextTaskModel
    semantic_spec: dict[str, Any]
    spec: Any = None

    @property
    def rkme(self) -> Any:
        return self.spec


@dataclass
class TextUser:
    """A user's held-out paragraphs of task ``task`` (the ground truth), their labels and the user's spec."""

    texts: list[str]
    y: np.ndarray
    task: int
    spec: Any = None


@dataclass
class TextMarketData:
    """What :func:`make_text_market` made: tasks (learnwares), users with their true task, the topic names."""

    tasks: list[TextTask]
    users: list[TextUser]
    topic_names: list[str]
    K: int
    encoder: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def specs(self) -> list[Any]:
        return [t.spec for t in self.tasks]


@functools.lru_cache(maxsize=4)
def _corpus(min_chars: int, max_chars: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", topics[name])]
        paras = [p[:max_chars] for p in paras if len(p) >= min_chars]
        out.append((name, tuple(paras)))
    return tuple(out)


def load_corpus(min_chars: int = 80, max_chars: int = 400, min_paragraphs: int = 1) -> dict[str, list[str]]:
    """``{topic: paragraphs}`` of the pydoc topics: paragraphs (whitespace collapsed) of at least ``min_chars``
    characters, cut at ``max_chars``; topics with fewer than ``min_paragraphs`` are left out."""
    return {name: list(p) for name, p in _corpus(int(min_chars), int(max_chars)) if len(p) >= min_paragraphs}


def embed_cached(texts: Sequence[str], encoder: str, device: Any = "auto") -> np.ndarray:
    """Sentence embeddings (n, d) of ``texts``, each text encoded once per process and encoder."""
    from ..spec.text import canonical_encoder, embed_texts

    enc = canonical_encoder(encoder)
    todo = list(dict.fromkeys(t for t in texts if (enc, t) not in _EMB_CACHE))
    if todo:
        for t, e in zip(todo, embed_texts(todo, enc, device=device)):
            _EMB_CACHE[(enc, t)] = e
    return np.stack([_EMB_CACHE[(enc, t)] for t in texts])


def _fit_specs(text_sets: Sequence[list[str]], K: int, encoder: str, device: Any,
               spec_options: dict[str, Any]) -> list[Any]:
    from ..spec.text import TextRKME, detect_languages

    embs = [embed_cached(s, encoder, device) for s in text_sets]
    return TextRKME.from_embeddings_many(embs, [detect_languages(s) for s in text_sets], encoder, K=K,
                                         device=device, **spec_options)


def make_text_market(
    n_tasks: int = 10, topics_per_task: int = 2, train_per_topic: int = 8, n_users: int = 10,
    user_per_topic: int = 4, K: int = 8, min_paragraphs: int = 12, encoder: str | None = None,
    device: Any = "auto", seed: int = 0, fit_specs: bool = True, spec_options: dict[str, Any] | None = None,
) -> TextMarketData:
    """A text market of ``n_tasks`` tasks (distinct topic subsets) and ``n_users`` users of single tasks.

    Parameters
    ----------
    topics_per_task : topics (classes) per task; tasks are distinct subsets drawn at random among the
        topics with at least ``min_paragraphs`` paragraphs (26 topics at the default 12).
    train_per_topic, user_per_topic : paragraphs per topic in a task's training set / a user's set,
        drawn from the topic's training / held-out half.
    K, encoder, device, spec_options : the TextRKME specs (default encoder: the bundled all-MiniLM-L6-v2);
        ``fit_specs=False`` leaves them out.
    """
    from ..spec.text import DEFAULT_ENCODER

    encoder = encoder or DEFAULT_ENCODER
    rng = np.random.default_rng(seed)
    corpus = load_corpus(min_paragraphs=max(min_paragraphs, 2))
    names = sorted(corpus)
    n_topics = len(names)
    combos = list(itertools.combinations(range(n_topics), topics_per_task))
    if n_tasks > len(combos):
        raise ValueError(f"at most {len(combos)} distinct tasks of {topics_per_task} of {n_topics} topics; "
                         f"asked for {n_tasks}")
    train_pool, user_pool = {}, {}
    for i, name in enumerate(names):
        perm = rng.permutation(len(corpus[name]))
        half = len(perm) // 2
        train_pool[i], user_pool[i] = perm[:half], perm[half:]
    chosen = [combos[i] for i in rng.choice(len(combos), n_tasks, replace=False)]
    tasks: list[TextTask] = []
    for t, topics in enumerate(chosen):
        texts, y = [], []
        for c in topics:
            pick = rng.choice(train_pool[c], min(train_per_topic, len(train_pool[c])), replace=False)
            texts += [corpus[names[c]][j] for j in pick]
            y += [c] * len(pick)
        model = TextTaskModel(n_topics).fit(texts, y)
        name = "pydoc-" + "+".join(names[c] for c in topics)
        sem = {"data_type": "text", "task_type": "classification", "input_dim": 1, "output_dim": n_topics,
               "name": name, "library": "sklearn", "license": "MIT",
               "description": f"TF-IDF + logistic regression telling apart the pydoc topics {[names[c] for c in topics]}",
               "tags": ["pydoc", *[f"topic:{names[c]}" for c in topics]]}
        tasks.append(TextTask(t, name, texts, np.asarray(y, np.int64), tuple(topics), model, sem))
    users: list[TextUser] = []
    for _ in range(n_users):
        t = int(rng.integers(n_tasks))
        texts, y = [], []
        for c in tasks[t].topics:
            pick = rng.choice(user_pool[c], min(user_per_topic, len(user_pool[c])), replace=False)
            texts += [corpus[names[c]][j] for j in pick]
            y += [c] * len(pick)
        users.append(TextUser(texts, np.asarray(y, np.int64), t))
    if fit_specs:
        opts = dict(spec_options or {})
        for task, spec in zip(tasks, _fit_specs([t.texts for t in tasks], K, encoder, device, opts)):
            task.spec = spec
        for user, spec in zip(users, _fit_specs([u.texts for u in users], K, encoder, device, opts)):
            user.spec = spec
    return TextMarketData(tasks, users, names, K, encoder, {"topics_per_task": topics_per_task, "seed": seed})
