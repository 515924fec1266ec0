"""Errors a user can fix. The CLI prints their message (no traceback) and exits with status 2."""


class UserError(Exception):
    """Bad input from the user: a file, a key, an id, a value. The message says what and where."""
