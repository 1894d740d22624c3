"""Learnware stand-ins for the reuse tests."""
import numpy as np


class Stub:
    """A learnware stand-in: fixed outputs per call, optional probabilities and classes_."""

    def __init__(self, labels=None, proba=None, classes=None, values=None, d=None):
        self._labels, self._proba, self._values = labels, proba, values
        if classes is not None:
            self.classes_ = classes
        if d is not None:
            self.semantic_spec = {"input_dim": d}
        if proba is None:
            self.predict_proba = None

    def predict(self, X):
        if self._values is not None:
            return self._values(X)
        return self._labels(X)

    def predict_proba(self, X):  # noqa: F811 - replaced by None when the stub has no probabilities
        return self._proba(X)
