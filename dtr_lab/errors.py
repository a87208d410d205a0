"""The one exception type for bad input: the CLI prints its message as one line and exits 2."""

from __future__ import annotations


class DTRLabError(ValueError):
    """Bad input (config value, dataset file, checkpoint); the message names it and the fix."""

    raised: list[DTRLabError] = []  # config parsers may re-wrap the error; the CLI finds it here

    def __init__(self, message: str) -> None:
        super().__init__(message)
        DTRLabError.raised.append(self)


def find_bad_input(exc: BaseException) -> DTRLabError | None:
    """The DTRLabError behind exc: exc itself, one in its cause chain, or one whose text it quotes."""
    seen = exc
    while seen is not None:
        if isinstance(seen, DTRLabError):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return next((e for e in reversed(DTRLabError.raised) if str(e) in text), None)
