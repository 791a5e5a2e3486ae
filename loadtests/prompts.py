"""The prompts every benchmark and load test sends, as chat messages.

Dependency-free: the locustfile imports it from its own virtual environment (.venv-load), which has
neither the service nor its dependencies. Short, so that a prompt and its answer fit the tiny test
model's 64-token context (loadtests/run_load.py --tiny).
"""

from __future__ import annotations

__all__ = ["PROMPTS", "messages"]

PROMPTS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A train travels 60 km in one hour. How far does it go in 3 hours?",
    "What is 12 times 4? Explain briefly.",
    "Sara had 20 sweets and gave away 7. How many are left?",
    "Name the largest planet of the solar system and one fact about it.",
    "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Write one sentence about the sea.",
    "If a shirt costs 15 dollars and is 20 percent off, what does it cost?",
    "What is the capital of Italy?",
    "Give a synonym of 'happy'.",
    "How many legs do three spiders have?",
    "Spell the word 'garden' backwards.",
]


def messages(prompt: str) -> list[dict[str, str]]:
    """A prompt as the one user message of a chat completion."""
    return [{"role": "user", "content": prompt}]
