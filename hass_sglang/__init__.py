"""hass_sglang: HASS speculative decoding (arXiv 2408.15766) for SGLang.

Pipeline: data -> features -> train -> export -> serve (SGLang plugin) -> benchmark,
with the target loader, the draft heads and the reference decoder as the shared core.
Importing the package is cheap: no torch work happens at import time.
"""

__version__ = "0.1.0"
