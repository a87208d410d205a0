"""The one exception type for bad input: the CLI prints its message as one line and exits 2."""


class DTRLabError(ValueError):
    """Bad input (config value, dataset file, checkpoint); the message names it and the fix."""
