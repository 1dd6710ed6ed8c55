"""How errors are told in one line: the CLI, the API and the job's `error` field."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-blank line of the exception's message, else its type's name (an empty
    message, `KeyError()`, still says what happened)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
