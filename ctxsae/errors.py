"""Errors caused by the user's input rather than by a bug.

Their message is one line that names the fix; the entry points print it without a traceback.
"""


class UserError(Exception):
    """Bad input (missing model or data, wrong config, corrupt cache): the message names the fix."""
