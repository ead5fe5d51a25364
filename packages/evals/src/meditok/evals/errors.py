"""The one exception type of meditok-evals: raised for bad inputs *before* any work starts."""


class EvalError(ValueError):
    """A user-facing problem (missing weight file, malformed manifest, mismatched sizes); the message says what."""
