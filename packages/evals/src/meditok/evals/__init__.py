"""meditok.evals: the evaluation suite (reconstruction, classification, VQA, generation metrics, speed/memory reports).

Not implemented yet: this package is a skeleton that reserves the name and layout.
"""

__version__ = "0.0.1"
