"""A Trainer's state as a checkpoint, and back: networks, optimizers, loss scalers, EMA,
both RNGs and the leak warning, so a resumed run draws and steps exactly as the run it
continues would have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainer import checkpoint as ckpt_io
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.spec import TrainSpec

if TYPE_CHECKING:
    from trainer.training import Trainer


def checkpoint_of(trainer: Trainer) -> Checkpoint:
    """The trainer's state at its current step."""
    tensors = {
        **ckpt_io.module_tensors("generator.", trainer.generator),
        **ckpt_io.module_tensors("discriminator.", trainer.discriminator),
    }
    optim = {}
    for name, opt in (("opt_g", trainer.opt_g), ("opt_d", trainer.opt_d)):
        opt_tensors, optim[name] = ckpt_io.pack_optimizer(name + ".", opt)
        tensors.update(opt_tensors)
    meta: dict[str, Any] = {
        "spec": trainer.spec.model_dump(mode="json"),
        "data_shape": list(trainer.dataset.shape),
        "optimizers": optim,
        "rng": {
            "data": ckpt_io.encode_rng(trainer.rng.get_state()),
            "torch": ckpt_io.encode_rng(torch.get_rng_state()),
        },
        "scalers": {n: s.state_dict() for n, s in trainer.engine.scaler.items() if s is not None},
        "leak_warned": trainer.leak_warned,
    }
    if trainer.ema is not None:
        tensors.update(ckpt_io.module_tensors("generator_ema.", trainer.ema.module))
        meta["ema"] = {"decay": trainer.spec.ema, "n_averaged": int(trainer.ema.n_averaged)}
    return ckpt_io.make_checkpoint(trainer.step, tensors, meta)


def restore(trainer: Trainer, ckpt: Checkpoint) -> None:
    """Load `ckpt` into `trainer`, which must have been built from the same spec (only steps,
    distributed and retention may differ); raises CheckpointError otherwise."""
    saved = TrainSpec.model_validate(ckpt.meta["spec"])
    # Retention only says which checkpoints the service keeps: it changes no training.
    same = {
        "steps": trainer.spec.steps,
        "distributed": trainer.spec.distributed,
        "retention": trainer.spec.retention,
    }
    if saved.model_copy(update=same) != trainer.spec:
        raise CheckpointError(
            "checkpoint: it was made by a different spec (only steps, distributed and "
            "retention may differ)"
        )
    meta = ckpt.meta
    trainer.generator.load_state_dict(ckpt.tensors("generator."))
    trainer.discriminator.load_state_dict(ckpt.tensors("discriminator."))
    for name, opt in (("opt_g", trainer.opt_g), ("opt_d", trainer.opt_d)):
        opt.load_state_dict(ckpt_io.unpack_optimizer(name + ".", ckpt, meta["optimizers"][name]))
    for name, state in meta.get("scalers", {}).items():
        scaler = trainer.engine.scaler[name]
        assert scaler is not None
        scaler.load_state_dict(state)
    if trainer.ema is not None:
        trainer.ema.module.load_state_dict(ckpt.tensors("generator_ema."))
        trainer.ema.n_averaged.fill_(meta["ema"]["n_averaged"])
    trainer.rng.set_state(ckpt_io.decode_rng(meta["rng"]["data"]))
    torch.set_rng_state(ckpt_io.decode_rng(meta["rng"]["torch"]))
    trainer.leak_warned = bool(meta.get("leak_warned", False))
    trainer.step = ckpt.step
