"""The learnware market: packages, submission checks, storage and search."""
from .checks import SubmissionError
from .learnware import Learnware
from .market import Market
from .package import pack_learnware
from ..search.results import MixtureItem, SearchResult, SingleItem

__all__ = ["Market", "Learnware", "pack_learnware", "SubmissionError", "SearchResult", "SingleItem", "MixtureItem"]
