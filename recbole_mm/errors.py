"""User errors: the exception type for bad input and the exit handling that turns it into one line.

This module imports nothing of recbole_mm's, so every module (the command line, the checkpoint
reader, the data readers) can import it without an import circle.
"""

from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2  # argparse's status for a bad command line; ours for any bad input


class RecBoleMMError(Exception):
    """Base class: bad input that the user can fix; the message says which file/field and how."""


class DataError(RecBoleMMError, ValueError):
    """A dataset file or dataset config entry is missing or malformed."""


class CheckpointError(RecBoleMMError):
    """A checkpoint cannot be loaded safely."""


class FeatureError(RecBoleMMError):
    """Bad input to the feature extraction, or a model that cannot be loaded; one line, exit status 2."""


class UnknownModelError(RecBoleMMError, ValueError):
    """The model name is neither a RecBole model nor a recbole_mm model."""


def config_choice(config, key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    """``config[key]`` (``default`` when unset), which must be one of ``allowed``."""
    value = config[key] or default
    if value not in allowed:
        raise RecBoleMMError(f"{key}: {value!r} is not one of {', '.join(allowed)}; fix the config")
    return value


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run ``main``; a :class:`RecBoleMMError` becomes one ``recbole_mm: error:`` line on stderr and
    exit status 2 (a multi-line message is joined, so the promise of one line holds)."""
    try:
        main()
    except RecBoleMMError as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"recbole_mm: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def one_line(text: object) -> str:
    """``text`` with its whitespace runs, newlines included, made single spaces: for one-line messages."""
    return " ".join(str(text).split())


def warn_user(message: str) -> None:
    """One ``recbole_mm: warning:`` line on stderr, for input that works but not as the user may think
    (before the logger exists, so the line is not lost in a log file)."""
    print(f"recbole_mm: warning: {message}", file=sys.stderr)
