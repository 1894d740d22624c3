"""Reuse: turn the learnwares a search found into predictions for the user.

- :class:`JobSelector`: route each row to one learnware (classifier on samples herded from RKMEs).
- :class:`Averaging`: mean / vote by label / vote by probability over all learnwares.
- :class:`EnsemblePruning`: a weighted sub-ensemble chosen greedily on a few labels.
- :class:`FeatureAugment`: a linear model on the user's features plus learnware outputs.
- :func:`align_features`: use a learnware whose columns differ from the user's (matched by name).
- :func:`reuse_curve`: reuse error vs. number of user labels, against the user's own model.
"""
from .alignment import AlignedLearnware, align_features
from .averaging import Averaging
from .base import Reuser
from .ensemble_pruning import EnsemblePruning
from .evaluation import make_reuser, reuse_curve, summarize
from .feature_augment import FeatureAugment
from .job_selector import JobSelector

__all__ = ["AlignedLearnware", "Averaging", "EnsemblePruning", "FeatureAugment", "JobSelector", "Reuser",
           "align_features", "make_reuser", "reuse_curve", "summarize"]
