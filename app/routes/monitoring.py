"""GET /metrics: the service in the Prometheus text format.

ganforge_jobs{status="running"}                 jobs by status
ganforge_queue_depth{queue="cpu"}                messages waiting on the broker
ganforge_job_steps_per_second{job_id="..."}      latest perf/steps_per_s of running jobs
ganforge_job_step{job_id="..."}                  step reached by running jobs
ganforge_devices{host="...",state="free"}        GPUs of each worker host: free or busy
ganforge_device_busy{host="...",device="0"}      1 while a job holds the device, else 0
ganforge_artifact_bytes{kind="checkpoint"}       bytes in the artifact store by kind:
                                                 checkpoint (tensors and sidecars), sample,
                                                 dataset (from the sizes recorded in the rows)
ganforge_http_requests_total{method,route,status}  the API's requests (app.http_metrics),
ganforge_http_request_duration_seconds{method,route}  by route template
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import queue
from app.deps import SessionDep, SettingsDep
from app.devices import device_report, largest_worker
from app.models import JOB_STATUSES, Job, JobStatus, MetricPoint, utcnow
from app.retention import stored_bytes
from app.settings import Settings

router = APIRouter()


class ServiceCollector(Collector):
    """Reads the database (and the broker) at scrape time; nothing is kept in memory."""

    def __init__(self, session: Session, settings: Settings):
        self.session, self.settings = session, settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = dict(
            self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
        jobs = GaugeMetricFamily("ganforge_jobs", "Jobs by status.", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], float(counts.get(status, 0)))
        yield jobs

        yield from self._devices()

        stored = GaugeMetricFamily(
            "ganforge_artifact_bytes",
            "Bytes in the artifact store by kind (checkpoint, sample, dataset).",
            labels=["kind"],
        )
        for kind, size in stored_bytes(self.session.connection()).items():
            stored.add_metric([kind], float(size))
        yield stored

        depth = GaugeMetricFamily(
            "ganforge_queue_depth", "Job ids waiting on the broker, per queue.", labels=["queue"]
        )
        try:
            for name, count in queue.queue_depth(self.settings, self._gpu_queues()).items():
                depth.add_metric([name], float(count))
        except Exception:  # noqa: BLE001 - an unreachable broker leaves the family empty
            pass
        yield depth

        rate = GaugeMetricFamily(
            "ganforge_job_steps_per_second",
            "Training speed of running jobs (their latest perf/steps_per_s).",
            labels=["job_id"],
        )
        step = GaugeMetricFamily(
            "ganforge_job_step", "Generator steps done by running jobs.", labels=["job_id"]
        )
        running = self.session.execute(
            select(Job.id, Job.step).where(
                Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING))
            )
        ).all()
        for job_id, job_step in running:
            step.add_metric([job_id], float(job_step))
            latest = self.session.scalar(
                select(MetricPoint.value)
                .where(MetricPoint.job_id == job_id, MetricPoint.name == "perf/steps_per_s")
                .order_by(MetricPoint.step.desc())
                .limit(1)
            )
            if latest is not None:
                rate.add_metric([job_id], float(latest))
        yield rate
        yield step

    def _devices(self) -> Iterator[GaugeMetricFamily]:
        counts = GaugeMetricFamily(
            "ganforge_devices", "GPUs of each worker host, free or busy.", labels=["host", "state"]
        )
        busy = GaugeMetricFamily(
            "ganforge_device_busy",
            "1 while a job holds the GPU, else 0.",
            labels=["host", "device"],
        )
        for host, entry in device_report(self.session.connection(), self.settings).items():
            counts.add_metric([host, "free"], float(len(entry.free)))
            counts.add_metric([host, "busy"], float(len(entry.busy)))
            for device in entry.devices:
                busy.add_metric([host, device], 1.0 if device in entry.busy else 0.0)
        yield counts
        yield busy

    def _gpu_queues(self) -> set[str]:
        """The `gpuN` queues in use: those of queued jobs and of the live workers' sizes."""
        specs = self.session.scalars(select(Job.spec).where(Job.status == JobStatus.QUEUED))
        names = {queue.stored_queue(self.settings, spec) for spec in specs}
        live_since = utcnow() - timedelta(seconds=self.settings.lease_seconds)
        largest = largest_worker(self.session.connection(), live_since=live_since)
        return names | set(queue.worker_queues(self.settings, largest))


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(session, settings))
    registry.register(request.app.state.http_metrics)  # app.http_metrics: the API's traffic
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
