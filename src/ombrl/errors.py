"""The one error type for user mistakes.

The CLI catches it and prints its message as a single line with exit code 2, so a wrong
path, key or value never shows a traceback. Library code raises it only for problems a
user can fix (bad input files, bad config values), never for programming errors.
"""


class OmbrlError(Exception):
    """A user mistake: the message names the file, key or value and says what is wrong."""
