"""The one exception type the CLI turns into a one-line message.

Library code raises `CentelhaError` for anything a user can fix (bad file, bad config,
bad argument). Anything else is a bug and keeps its traceback.
"""


class CentelhaError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, message: str = ""):
        # Messages quote what they refuse (a key from a corrupt file, a library's own error
        # text), newlines and all: whitespace runs become one space, so it stays one line.
        super().__init__(" ".join(str(message).split()))
