"""Errors caused by the user's input rather than by a bug.

Their message is one line that names the fix; the entry points print it without a traceback.
"""


class UserError(Exception):
    """Bad input (missing model or data, wrong config, corrupt cache): the message names the fix."""


def unwrap(error: BaseException) -> BaseException:
    """The error behind ``error``: Hydra wraps what a ``_target_`` raises (ours: one-line UserErrors)."""
    from hydra.errors import InstantiationException

    return error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
