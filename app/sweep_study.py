"""A sweep's Optuna study: stored in the service's own database through Optuna's RDB storage
(its tables beside ours; our Alembic revisions live in `ganforge_alembic_version` so that
Optuna's `alembic_version` is its own), with the sampler and the pruner the sweep names.

Samplers and pruners are not stored by Optuna: each controller pass builds them again from
the sweep's row (`load`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Literal

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from app.db import POOL_RECYCLE_SECONDS
from app.models import Sweep
from app.schemas import SpaceDimension

optuna.logging.set_verbosity(optuna.logging.WARNING)

_STORAGES: OrderedDict[str, RDBStorage] = OrderedDict()
_STORAGES_LOCK = threading.Lock()
_KEPT = 4  # storages (one engine each) kept per process: one database, plus tests' others


def engine_kwargs(url: str) -> dict[str, Any]:
    """app.db.make_engine's options that apply to Optuna's engine: SQLite waits for locks
    (WAL is already on: the journal mode is a property of the file, set by our engine);
    PostgreSQL checks and recycles its connections, and keeps a small pool."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 30}}
    return {
        "pool_pre_ping": True,
        "pool_recycle": POOL_RECYCLE_SECONDS,
        "pool_size": 2,
        "max_overflow": 8,
    }


def storage(url: str) -> RDBStorage:
    """Optuna's storage on the service database at `url` (one per process and database)."""
    with _STORAGES_LOCK:
        found = _STORAGES.get(url)
        if found is not None:
            _STORAGES.move_to_end(url)
            return found
        try:
            made = RDBStorage(url, engine_kwargs=engine_kwargs(url))
        except Exception:  # noqa: BLE001 - two processes creating its tables at once: once more
            made = RDBStorage(url, engine_kwargs=engine_kwargs(url))
        _STORAGES[url] = made
        while len(_STORAGES) > _KEPT:
            _, old = _STORAGES.popitem(last=False)
            old.engine.dispose()
        return made


class AskTellGridSampler(GridSampler):
    """Optuna's GridSampler without its stop request after a trial: that asks a running
    `optimize` loop to stop, and raises outside one (our controller tells trials itself and
    knows when the grid is exhausted: as many trials as combinations)."""

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None


def _seed(seed: int | None, offset: int) -> int | None:
    # A pass builds its sampler anew: the same seed every pass would repeat its first
    # proposal, so the seed moves on with the trials asked so far (numpy takes < 2**32).
    return None if seed is None else (seed + offset) % 2**32


def sampler(sweep: Sweep, asked: int) -> BaseSampler:
    """The sweep's sampler for a pass after `asked` trials."""
    if sweep.method == "grid":
        search = {path: dim["values"] for path, dim in sweep.space.items()}
        # The grid's order (a shuffle by the seed) must be the same in every pass.
        return AskTellGridSampler(search, seed=_seed(sweep.seed, 0))
    if sweep.method == "random":
        return RandomSampler(seed=_seed(sweep.seed, asked))
    return TPESampler(seed=_seed(sweep.seed, asked))


def pruner(config: dict[str, Any]) -> BasePruner:
    """Optuna's pruner for a stored pruner config (app.schemas.PrunerConfig)."""
    kind = config.get("kind", "none")
    if kind == "median":
        return MedianPruner(
            n_startup_trials=config.get("startup_trials", 5),
            n_warmup_steps=config.get("warmup_steps", 0),
            interval_steps=config.get("interval_steps", 1),
            n_min_trials=config.get("min_trials", 1),
        )
    if kind == "asha":
        return SuccessiveHalvingPruner(
            min_resource=config.get("min_resource", "auto"),
            reduction_factor=config.get("reduction_factor", 4),
            min_early_stopping_rate=config.get("min_early_stopping_rate", 0),
        )
    if kind == "hyperband":
        return HyperbandPruner(
            min_resource=config.get("min_resource", 1),
            max_resource=config.get("max_resource", "auto"),
            reduction_factor=config.get("reduction_factor", 3),
        )
    return NopPruner()


def direction(objective: dict[str, Any]) -> Literal["maximize", "minimize"]:
    return "maximize" if objective.get("mode", "max") == "max" else "minimize"


def create(url: str, sweep: Sweep) -> None:
    """Create the sweep's (empty) study."""
    optuna.create_study(
        storage=storage(url), study_name=sweep.study_name, direction=direction(sweep.objective)
    )


def load(url: str, sweep: Sweep) -> Study:
    """The sweep's study with its sampler and pruner."""
    store = storage(url)
    asked = store.get_n_trials(store.get_study_id_from_name(sweep.study_name))
    return optuna.load_study(
        study_name=sweep.study_name,
        storage=store,
        sampler=sampler(sweep, asked),
        pruner=pruner(sweep.pruner),
    )


def delete(url: str, study_name: str) -> None:
    """Delete a study; nothing when there is none."""
    try:
        optuna.delete_study(study_name=study_name, storage=storage(url))
    except KeyError:
        pass


def space_of(sweep: Sweep) -> dict[str, SpaceDimension]:
    return {path: SpaceDimension.model_validate(dim) for path, dim in sweep.space.items()}
