"""The job queue: a Celery app configured from settings, used by the API (to enqueue a job id
by task name) and by the worker (to run it). The broker only carries job ids, and a message
only wakes a worker of its queue: the database, the source of truth for job state, picks the
job it runs (the first queued job of that queue by priority: worker.claim).

Queues, by the GPUs a job must hold (`TrainSpec.gpus`): `cpu` for none (`device: auto`
included), `gpu` for one, `gpu2`, `gpu3`, ... for more. A worker with N devices consumes `gpu`
up to `gpuN` and `cpu`, so a job reaches only a worker with enough devices; a CPU-only worker
consumes `cpu`. GANFORGE_QUEUE_PREFIX prefixes every name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as _KombuSQLAChannel
from kombu.transport.sqlalchemy import Transport as _SQLATransport
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from app.settings import Settings
from trainer.spec import TrainSpec

RUN_JOB = "ganforge.run_job"
QUEUES = ("gpu", "cpu")  # always reported by /metrics; `gpuN` ones as jobs or workers need them


class _SQLAChannel(_KombuSQLAChannel):
    """kombu's channel, safe when two processes declare the same new queue at once (workers
    starting together: the second insert of the queue's name fails; it reads the first's), and
    giving its database connection back when closed (kombu's keeps it until garbage
    collection, so an API answering /metrics and /api/health often ran out of connections)."""

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        super().close()  # type: ignore[no-untyped-call]

    def _get_or_create(self, queue: str) -> Any:
        try:
            return super()._get_or_create(queue)  # type: ignore[no-untyped-call]
        except IntegrityError:
            self.session.rollback()
            return super()._get_or_create(queue)  # type: ignore[no-untyped-call]


class PollingSQLATransport(_SQLATransport):
    """kombu's SQLAlchemy transport, polling every 0.1 s instead of every 1 s.

    The embedded broker is a table in a SQLite file; a worker finds a new job id by polling
    it. kombu's transport hands every transport option to `create_engine`, so the interval
    cannot be passed as an option: it is a class attribute here instead.
    """

    Channel = _SQLAChannel
    polling_interval = 0.1


# Our processes resolve `sqla+...` broker URLs to the faster-polling transport.
TRANSPORT_ALIASES["sqla"] = "app.queue:PollingSQLATransport"
TRANSPORT_ALIASES["sqlalchemy"] = "app.queue:PollingSQLATransport"


def queue_name(settings: Settings, gpus: int) -> str:
    """The queue of jobs that hold `gpus` GPUs: cpu, gpu, gpu2, gpu3, ..."""
    name = "cpu" if gpus <= 0 else "gpu" if gpus == 1 else f"gpu{gpus}"
    return settings.queue_prefix + name


def queue_for(settings: Settings, spec: TrainSpec) -> str:
    return queue_name(settings, spec.gpus)


def stored_queue(settings: Settings, spec: Mapping[str, Any]) -> str:
    """The queue of a job from its stored spec (JSON, validated when it was submitted)."""
    return queue_for(settings, TrainSpec.model_validate(spec))


def worker_queues(settings: Settings, gpus: int) -> list[str]:
    """What a worker with `gpus` devices consumes: jobs of gpus..1 GPUs, and CPU jobs."""
    return [queue_name(settings, n) for n in range(gpus, -1, -1)]


def broker_kind(url: str) -> str:
    """`redis`, `sqla` (embedded), `amqp`, ...: the scheme before any `+`."""
    return url.split("://", 1)[0].split("+", 1)[0]


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.effective_broker_url
    transport_options: dict[str, Any] = {}
    if broker_kind(url) in ("sqla", "sqlalchemy"):
        database = make_url(url.split("+", 1)[1]).database
        if database:
            from pathlib import Path

            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # A SQLite broker file shared by the API and the workers: wait for locks.
        transport_options = {"connect_args": {"timeout": 30}}
    elif broker_kind(url) == "redis":
        # A job runs for hours: a message must not be redelivered while its worker is alive.
        timeout = settings.broker_visibility_timeout
        transport_options = {
            "visibility_timeout": timeout,
            # Look for overdue unacknowledged messages every few seconds (kombu's default
            # sweep is about every 100 s). A redelivered message is harmless: the database,
            # not the broker, decides who runs which job.
            "unacked_restore_interval": max(1, min(10, timeout // 2)),
            "unacked_restore_throttle": 1,
        }
    events = broker_kind(url) not in ("sqla", "sqlalchemy")
    return {
        "broker_url": url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_backend": None,
        # A job is acknowledged when it finishes, so a worker that dies loses no job; the
        # database claim (app.jobs.claim) makes a redelivery at most wake a worker for the
        # next queued job.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_default_queue": settings.queue_prefix + "cpu",
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        # Task events (task-sent, task-started, ...) for Flower and `celery events`: over a
        # real broker only, since they go to a fanout exchange the embedded one lacks.
        "worker_send_task_events": events,
        "task_send_sent_event": events,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def make_celery(settings: Settings) -> Celery:
    celery = Celery("ganforge")
    celery.conf.update(celery_config(settings))
    return celery


@lru_cache(maxsize=8)
def _client(url: str, settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def client(settings: Settings) -> Celery:
    """A Celery app for sending (cached per broker URL: connections are pooled)."""
    return _client(settings.effective_broker_url, settings.model_dump_json())


def enqueue(settings: Settings, job_id: str, spec: TrainSpec) -> None:
    """Put a job id on its queue: the task is sent by name, the API never imports the worker."""
    send(settings, job_id, queue_for(settings, spec))


def send(settings: Settings, job_id: str, queue: str) -> None:
    client(settings).send_task(RUN_JOB, args=[job_id], queue=queue)


def queue_depth(settings: Settings, names: Iterable[str] = ()) -> dict[str, int]:
    """Messages waiting per queue (for /metrics): `gpu`, `cpu` and `names`."""
    depth: dict[str, int] = {}
    wanted = dict.fromkeys([*(settings.queue_prefix + q for q in QUEUES), *names])
    with client(settings).connection_for_read() as conn:
        channel = conn.default_channel
        for name in wanted:
            # Not passive: declaring a queue we use anyway is harmless, and a passive
            # declare of a queue that never held a message fails on some transports.
            _, count, _ = channel.queue_declare(queue=name, auto_delete=False, durable=True)
            depth[name] = int(count)
    return depth


def ping(settings: Settings, timeout: float = 2.0) -> None:
    """Raise when the broker cannot be reached (a round trip, not just a socket)."""
    with client(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        conn.default_channel.queue_declare(
            queue=settings.queue_prefix + "cpu", auto_delete=False, durable=True
        )
