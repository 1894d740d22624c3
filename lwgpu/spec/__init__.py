"""Specifications: the statistical RKME and the semantic schema."""
from .rkme import RKME

__all__ = ["RKME"]
