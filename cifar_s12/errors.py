"""The one exception type the CLI turns into a one-line message and exit status 2 (no traceback)."""


class UserError(Exception):
    """Bad input from the user: missing data, an unreadable file, an unknown name. The message says what to do."""
