"""The one exception type the CLI turns into a one-line message.

Library code raises `CentelhaError` for anything a user can fix (bad file, bad config,
bad argument). Anything else is a bug and keeps its traceback.
"""


class CentelhaError(Exception):
    """A problem with the user's input, explained in one line."""
