"""Logs of every service process: `ganforge api` (with uvicorn's access and error logs),
`ganforge worker` (with Celery's own lines), a job's process and `ganforge up`'s supervisor.

GANFORGE_LOG_FORMAT=text (the default) writes readable lines, as Celery's worker does;
GANFORGE_LOG_FORMAT=json writes one JSON object per line, for a log collector: `time` (ISO
8601, UTC), `level`, `logger`, `message`, `job_id` while a job is handled (`job_context`), and
any `extra=` fields of the call (a job's lifecycle lines carry `event`: claimed,
checkpointed, requeued, finished, failed).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import IO, Any, Literal, Protocol

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
# Celery's worker format: the worker's, its job processes' and the API's lines look alike.
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"

_job_id: ContextVar[str | None] = ContextVar("ganforge_job_id", default=None)
_ours: logging.Handler | None = None


def log_format() -> LogFormat:
    from app.settings import get_settings

    return get_settings().log_format


class JobIdFilter(logging.Filter):
    """Gives a record logged while a job is handled its `job_id` (unless the call gave one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _job_id.get()
        if job_id is not None and getattr(record, "job_id", None) is None:
            record.job_id = job_id
        return True


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record: time, level, logger, message, then the record's extras;
    uvicorn's access lines also get client, method, path and status."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("color_message", None)  # uvicorn's message with terminal colours
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            log_data.update(client=client, method=method, path=path, status=status)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Records logged in this context (this thread or task) carry `job_id`."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def bind_job_id(job_id: str) -> None:
    """Every later record of this context carries `job_id` (a job's own process)."""
    _job_id.set(job_id)


def setup_logging(level: int | str = logging.INFO, *, stream: IO[str] | None = None) -> LogFormat:
    """Send the records of every logger to one handler on the root logger (stderr), in
    GANFORGE_LOG_FORMAT; every entry point calls it. In json, Python warnings and uncaught
    exceptions become records too. The format in use."""
    global _ours
    fmt = log_format()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    if _ours is not None:
        root.removeHandler(_ours)
    root.addHandler(handler)
    root.setLevel(level)
    _ours = handler
    # Noise at INFO: alembic on every start ("Context impl SQLiteImpl."), the supervisor's
    # health polls (httpx2's "HTTP Request: ...").
    for noisy in ("alembic", "httpx2", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if fmt == "json":
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread
    return fmt


def uvicorn_log_config() -> dict[str, Any] | None:
    """uvicorn's `log_config`: its own (text) one, or none in json, so that its loggers
    propagate to the root handler `setup_logging` installed."""
    from uvicorn.config import LOGGING_CONFIG

    return None if log_format() == "json" else LOGGING_CONFIG


def take_over(logger: logging.Logger, level: int | str = logging.INFO) -> None:
    """In json: replace the handlers Celery gave `logger` (its root or task logger, from
    the `after_setup_logger` signals) by the root handler of `setup_logging`."""
    if log_format() != "json":
        return
    logger.handlers.clear()
    if logger is logging.getLogger():
        setup_logging(level, stream=sys.__stderr__)  # not Celery's redirected sys.stderr
        # Celery gives multiprocessing's logger a handler of its own (text), which keeps
        # records from propagating.
        mp = logging.getLogger("multiprocessing")
        mp.handlers.clear()
        mp.propagate = True
    else:
        logger.propagate = True


class Say(Protocol):
    def __call__(self, message: str, level: int | None = None, **fields: Any) -> None: ...


def to_log(echo: Callable[[str], object], logger: str) -> Say:
    """A function that prints a line with `echo` in the text format and logs it to `logger`
    in json (ERROR for `error: ...`, WARNING for `warning: ...`, else INFO unless `level`)."""

    def say(message: str, level: int | None = None, **fields: Any) -> None:
        if log_format() != "json":
            echo(message)
            return
        if _ours is None:
            setup_logging()
        for prefix, prefixed in (("error: ", logging.ERROR), ("warning: ", logging.WARNING)):
            if message.startswith(prefix):
                message, level = message.removeprefix(prefix), level or prefixed
        logging.getLogger(logger).log(level or logging.INFO, message, extra=fields)

    return say


def echo(message: str, *, err: bool = False) -> None:
    """`typer.echo` for the service commands' lines: a record of `ganforge.cli` in json."""
    import typer

    to_log(lambda line: typer.echo(line, err=err), "ganforge.cli")(message)


def _uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("ganforge").critical("uncaught exception", exc_info=(kind, value, traceback))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("ganforge").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
