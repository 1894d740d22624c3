"""Market generators with ground truth: synthetic Gaussian-mixture tasks and tasks carved from real data."""
from .synthetic import SyntheticMarket, UserTasks

__all__ = ["SyntheticMarket", "UserTasks"]
