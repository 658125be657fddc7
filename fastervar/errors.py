"""One exception type for every user-facing problem, so the CLI can print it as one line."""


class FastervarError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
