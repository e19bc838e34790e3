"""liverec: a real-time, feedback-aware recommender service."""

__version__ = "0.1.0"
