"""The one exception type users see: bad input, reported as a single clear line."""


class RelionPyError(Exception):
    """An error caused by the user's input or environment (not a bug).

    The CLIs print ``relion_py: error: <message>`` and exit with status 1, no traceback.
    """
