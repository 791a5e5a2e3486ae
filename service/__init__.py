"""powerserve: an OpenAI-compatible service for power sampling and its self-distilled model."""

__version__ = "0.1.0"
