"""User-facing errors: raised for bad input, printed by the CLI as one line without a traceback."""


class HqtdError(Exception):
    """A mistake the user can fix (bad file, bad key, bad value). It names what and where."""
