"""Errors caused by the user's input rather than by a bug, and what the entry points print.

Their message is one line that names the fix; the entry points (``entry_point``) print it without
a traceback and exit with status 1. Anything else is a bug and keeps its traceback. A ``Notice``
(something went wrong and was fixed, e.g. a damaged cache shard re-extracted) is a warning the entry
points print as one line. The entry points also drop third-party noise that says nothing about the
run (``quiet_third_party``) and keep freed host memory for the next step (``ctxsae.host_memory``).
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

from ctxsae.host_memory import keep_freed_memory

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """Bad input (missing model or data, wrong config, corrupt cache): the message names the fix."""


class NonFiniteLoss(UserError, FloatingPointError):
    """Training diverged: the message says which settings to change; the last good checkpoint is kept."""


class Notice(UserWarning):
    """Something was wrong and has been dealt with (a damaged cache shard re-extracted): the message says what."""


def unwrap(error: BaseException) -> BaseException:
    """The error behind ``error``: Hydra wraps what a ``_target_`` raises (ours: one-line UserErrors)."""
    from hydra.errors import InstantiationException

    return error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error


def exit_with(error: UserError) -> None:
    """End the program as the entry points end on bad input: ``error: <message>`` on stderr, exit status 1."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_third_party() -> None:
    """Drop Lightning's product tips (litlogger, litmodels), the deprecation warning its tree utilities raise
    under the pinned torch, and its warning that an epoch has fewer batches than the logging interval (runs
    here count steps across epochs, so they do log): none is about the run."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")


def _format_warning(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, Notice):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def entry_point(main: F) -> F:
    """An entry point's main: a ``UserError`` (also one raised inside Hydra's ``instantiate``) becomes
    ``error: <message>`` on stderr and exit status 1, with no traceback; a ``Notice`` prints as
    ``warning: <message>``; third-party noise is quieted; freed host memory is kept (``keep_freed_memory``)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        keep_freed_memory()
        quiet_third_party()
        warnings.formatwarning = _format_warning
        try:
            return main(*args, **kwargs)
        except Exception as e:
            cause = unwrap(e)
            if not isinstance(cause, UserError):
                raise
            exit_with(cause)

    return wrapper
