"""The one exception pdfast raises for bad input: a one-line message naming the problem and the fix."""


class PdfastError(Exception):
    """Bad input or an unsupported model. ``str(err)`` is a single line fit for a user."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
