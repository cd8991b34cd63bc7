"""Curaway async pipelines + webhooks."""

__version__ = "0.1.0"
