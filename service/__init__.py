"""powerserve: an OpenAI-compatible service for power sampling and its self-distilled model."""

__all__ = ["__version__"]

__version__ = "0.1.0"
