"""Data-parallel jobs with torch.distributed: launching the ranks.

A job with `distributed.world_size: W` runs as W processes. The one that calls `ranks()` (the
worker, or `ganforge train`) is rank 0: it keeps the job's sinks, heartbeat and stop
callback. Ranks 1..W-1 are started with `torch.multiprocessing` (forkserver), build the same
Trainer from the same spec (and checkpoint, when resuming) and write nothing. They meet
through a `file://` rendezvous in a private temporary folder, so no port is picked.

Every rank draws the same effective batch from the same RNG and takes its own share of the
micro-batches (`StepEngine`), so W ranks x k micro-batches compute exactly what 1 rank x W*k
micro-batches does, and a checkpoint resumes with any world size.

The building blocks the engine and trainer share (Rank, DDP wrappers, collectives) are in
`trainer.ddp`; this module sits on top of the trainer, since each rank builds one.
"""

from __future__ import annotations

import contextlib
import gc
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.ddp import TIMEOUT, Rank, backend_for
from trainer.processes import follow_parent, forkserver_context
from trainer.sinks import memory_sinks
from trainer.spec import TrainSpec
from trainer.training import Trainer, resolve_device


@contextlib.contextmanager
def ranks(
    spec: TrainSpec,
    *,
    resume: Any = None,
    datasets: dict[str, Path] | None = None,
    threads: int | None = None,
    sync_once: bool = True,
) -> Iterator[Rank]:
    """Run ranks 1..W-1 in child processes while this process joins the group as rank 0.

    Inside the block, build the Trainer with `rank=` the yielded Rank and train; the children
    do the same with `resume` (a Checkpoint, loaded before training) and write nothing. On
    leaving, the group is destroyed and the children are joined (killed if rank 0 failed)."""
    world = spec.distributed.world_size
    if world == 1:
        yield Rank()
        return
    device = resolve_device(spec.device)
    backend = backend_for(spec, device)
    per_rank = threads or max(1, torch.get_num_threads() // world)
    folder = Path(tempfile.mkdtemp(prefix="ganforge-ranks-"))
    init = f"file://{folder / 'rendezvous'}"
    # Ranks fork from a server that has imported the trainer once (trainer.processes).
    forkserver_context("trainer.distributed")
    children = torch.multiprocessing.start_processes(
        _rank_main,
        args=(spec.model_dump_json(), init, backend, resume, datasets or {}, per_rank, sync_once),
        nprocs=world - 1,
        join=False,
        start_method="forkserver",
    )
    threads_before = torch.get_num_threads()
    torch.set_num_threads(per_rank)
    failed = True
    try:
        dist.init_process_group(
            backend, init_method=init, rank=0, world_size=world, timeout=TIMEOUT
        )
        yield Rank(0, world)
        failed = False
    except BaseException as exc:
        # A collective broke because a child died: report the child's error instead.
        child = _child_error(children)
        if child is not None:
            raise child from exc
        raise
    finally:
        torch.set_num_threads(threads_before)
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        _finish(children, kill=failed)
        shutil.rmtree(folder, ignore_errors=True)


def _rank_main(
    index: int,
    spec_json: str,
    init: str,
    backend: str,
    resume: Any,
    datasets: dict[str, Path],
    threads: int,
    sync_once: bool,
) -> None:
    """Ranks 1..W-1: the same trainer as rank 0, no outputs."""
    # Rank 0 decides when to stop (Ctrl-C, SIGTERM, cancel) and stops every rank at the
    # same step; a rank whose parent died goes with it.
    follow_parent()
    torch.set_num_threads(threads)
    spec = TrainSpec.model_validate_json(spec_json)
    rank = Rank(index + 1, spec.distributed.world_size)
    dist.init_process_group(
        backend, init_method=init, rank=rank.rank, world_size=rank.world, timeout=TIMEOUT
    )
    try:
        trainer = Trainer(
            spec,
            resolve_dataset=datasets.__getitem__,
            evaluate=False,
            rank=rank,
            sync_once=sync_once,
        )
        if resume is not None:
            trainer.load(resume)
        trainer.run(memory_sinks())
        del trainer  # DDP's reducer goes while its process group still exists
        gc.collect()
    finally:
        dist.destroy_process_group()


def _finish(children: Any, *, kill: bool, wait: float = 30.0) -> None:
    processes = list(children.processes)
    if kill:
        for process in processes:
            if process.is_alive():
                process.kill()
    for process in processes:
        process.join(wait)
        if process.is_alive():
            process.kill()
            process.join()


def _child_error(children: Any) -> BaseException | None:
    """The first child's error, when a child failed (its traceback, as torch reports it)."""
    try:
        children.join(timeout=2)
    except Exception as exc:  # noqa: BLE001 - ProcessRaisedException, ProcessExitedException
        lines = [line for line in str(exc).splitlines() if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.match(line)]
        return RuntimeError(f"a rank of the job failed: {(errors or lines or ['?'])[-1]}")
    return None


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")
