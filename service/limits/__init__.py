"""Who may call the API and how much: API keys, per-key rate limits, admission control.

keys.py    API keys (POWERSERVE_API_KEYS, a keys file of SHA-256 hashes), compared in constant time
rate.py    requests and engine tokens per minute per key (the ``limits`` library; Redis or memory)
gate.py    admission control and the limits, in the order a request meets them
"""

from service.limits.gate import Admission, Gate, Ticket
from service.limits.keys import ApiKey, KeyRing, hash_key
from service.limits.rate import Quota, RateLimiter, Reservation, Window, reset_text

__all__ = [
    "Admission",
    "ApiKey",
    "Gate",
    "KeyRing",
    "Quota",
    "RateLimiter",
    "Reservation",
    "Ticket",
    "Window",
    "hash_key",
    "reset_text",
]
