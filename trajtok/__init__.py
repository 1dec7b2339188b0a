"""TrajTok: trajectory tokens for video transformers, from pseudo-labels to distributed pretraining."""

__version__ = "0.1.0"
