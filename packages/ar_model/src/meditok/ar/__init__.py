"""meditok.ar: the unified autoregressive model (issue: meditok-ar, PEFT fine-tuning, understanding, generation, vLLM plugin).

Not implemented yet: this package is a skeleton that reserves the name and layout.
"""

__version__ = "0.0.1"
