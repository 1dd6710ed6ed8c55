"""`ganforge`: train a spec here (`train`), sample a checkpoint (`generate`).

Exit status: 0 success; 2 an invalid spec, data or checkpoint (one line naming the field);
1 a run that diverged (naming the step and metric); 130 interrupted (a checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from trainer.guided import Sampler
    from trainer.spec import TrainSpec
    from trainer.training import Progress, Trainer, TrainResult

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ganforge: GAN training with exact gradient accumulation and a gradient-leak audit.",
)

OUTPUTS = ("metrics.jsonl", "warnings.jsonl", "spec.json", "samples", "checkpoints")


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _prepare_out(out: Path, *, resume_step: int | None, overwrite: bool) -> None:
    import shutil

    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and resume_step is None:
        if not overwrite:
            fail(
                f"out: {out} already holds a run ({', '.join(existing)}); "
                "pass --overwrite or choose another folder"
            )
        for name in existing:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if resume_step is not None and (out / "metrics.jsonl").exists():
        # Rows logged after the checkpoint will be logged again by the resumed run.
        lines = (out / "metrics.jsonl").read_text().splitlines()
        kept = [ln for ln in lines if ln and json.loads(ln)["step"] <= resume_step]
        (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in kept))
    out.mkdir(parents=True, exist_ok=True)


@cli.command()
def train(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="YAML or JSON job spec")],
    out: Annotated[Path, typer.Option("--out", help="folder for the run's outputs")],
    resume: Annotated[
        Path | None, typer.Option(help="continue from this checkpoint (.safetensors)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a previous run in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Run the trainer on this machine, no service: outputs go to --out."""
    from trainer.checkpoint import CheckpointError, read_checkpoint
    from trainer.data import DataError
    from trainer.distributed import ranks
    from trainer.spec import SpecError, load_spec
    from trainer.training import Trainer

    try:
        spec = load_spec(spec_path)
        checkpoint = read_checkpoint(resume) if resume is not None else None
    except (SpecError, CheckpointError) as exc:
        fail(str(exc))
    with contextlib.ExitStack() as group:
        try:
            # distributed.world_size > 1: the other ranks start here; this process is rank 0.
            rank = group.enter_context(ranks(spec, resume=checkpoint))
            trainer = Trainer(spec, rank=rank)
            if checkpoint is not None:
                trainer.load(checkpoint)
        except (DataError, CheckpointError, ValueError) as exc:
            fail(str(exc))
        _train(
            spec, trainer, out, resumed=resume is not None, overwrite=overwrite, progress=progress
        )


def _train(
    spec: TrainSpec, trainer: Trainer, out: Path, *, resumed: bool, overwrite: bool, progress: bool
) -> None:
    from trainer.sinks import directory_sinks
    from trainer.training import TrainingDiverged

    for warning in spec.warnings():
        typer.echo(f"warning: {warning}", err=True)
    _prepare_out(out, resume_step=trainer.step if resumed else None, overwrite=overwrite)
    (out / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")
    started = time.perf_counter()
    try:
        with (
            _ctrl_c_stops() as stop_requested,
            _progress_bar(spec.steps, trainer.step, enabled=progress) as show,
        ):
            result = trainer.run(directory_sinks(out), should_stop=stop_requested, progress=show)
    except TrainingDiverged as exc:
        fail(f"{exc} (metrics so far in {out / 'metrics.jsonl'})", code=1)
    _report(result, out, elapsed=time.perf_counter() - started)


@contextlib.contextmanager
def _ctrl_c_stops() -> Iterator[Callable[[], bool]]:
    """While inside, the first Ctrl-C asks the run to stop after this step (so it keeps a
    checkpoint to resume from); a second one interrupts at once. Yields `should_stop`."""
    requested = False

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        typer.echo("\nstopping after this step (Ctrl-C again to abort)...", err=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _progress_bar(total: int, initial: int, *, enabled: bool) -> Iterator[Progress]:
    """A tqdm bar on stderr (closed on leaving) and the `progress` callback that moves it,
    showing the losses and the main quality numbers as they are recorded."""
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=initial,
        unit="step",
        disable=not enabled,
        mininterval=0.5,
        dynamic_ncols=True,
        file=sys.stderr,
    )

    def show(step: int, values: dict[str, float] | None) -> None:
        bar.update(step - bar.n)
        if values:
            bar.set_postfix(
                {
                    k.split("/")[-1] if k.startswith("loss/") else k: f"{v:.3g}"
                    for k, v in values.items()
                    if k in ("loss/d", "loss/g", "eval/modes", "eval/hq")
                },
                refresh=False,
            )

    try:
        yield show
    finally:
        bar.close()


def _report(result: TrainResult, out: Path, *, elapsed: float) -> None:
    """The run's last lines: where to resume a stopped run (exit 130), or a summary."""
    if result.status == "stopped":
        typer.echo(
            f"stopped at step {result.step}; resume with --resume "
            f"{out / 'checkpoints'}/step_{result.step:06d}.safetensors",
            err=True,
        )
        raise typer.Exit(130)
    summary = ", ".join(
        f"{k} {v:.3g}" for k, v in result.last_metrics.items() if k.startswith(("eval/", "loss/"))
    )
    typer.echo(f"done: {result.step} steps in {elapsed:.1f} s ({summary})")
    typer.echo(f"results: {out} (spec.json, metrics.jsonl, samples/, checkpoints/)")


@cli.command()
def generate(
    checkpoint: Annotated[Path, typer.Argument(help="a checkpoint (.safetensors or .json)")],
    out: Annotated[Path, typer.Option("--out", help="FILE.png (grid/scatter) or FILE.npy")],
    n: Annotated[int, typer.Option("--n", help="how many samples")] = 64,
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
    sampler: Annotated[
        str, typer.Option(help="plain: G(z); drs: discriminator rejection; refine: latent steps")
    ] = "plain",
    drs_burn_in: Annotated[int | None, typer.Option(help="drs: samples scored first")] = None,
    drs_percentile: Annotated[
        float | None, typer.Option(help="drs: gamma's percentile (higher: stricter)")
    ] = None,
    drs_gamma: Annotated[
        float | None, typer.Option(help="drs: a fixed gamma instead of the percentile's")
    ] = None,
    drs_min_acceptance: Annotated[
        float | None, typer.Option(help="drs: give up below this acceptance rate")
    ] = None,
    refine_steps: Annotated[int | None, typer.Option(help="refine: gradient steps")] = None,
    refine_step_size: Annotated[float | None, typer.Option(help="refine: step size")] = None,
    refine_noise: Annotated[float | None, typer.Option(help="refine: Langevin noise")] = None,
) -> None:
    """Fresh samples from a checkpoint's generator (its EMA weights when present), plain or
    guided by the checkpoint's discriminator (--sampler drs or refine)."""
    from trainer.checkpoint import CheckpointError, read_checkpoint
    from trainer.generate import write_generated

    options = {
        "drs": {
            "burn_in": drs_burn_in,
            "percentile": drs_percentile,
            "gamma": drs_gamma,
            "min_acceptance": drs_min_acceptance,
        },
        "refine": {"steps": refine_steps, "step_size": refine_step_size, "noise": refine_noise},
    }
    chosen = _sampler(sampler, options)
    try:
        ckpt = read_checkpoint(checkpoint)
        shape, report = write_generated(ckpt, out, n, seed=seed, sampler=chosen)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    if report is not None:
        typer.echo(report.line())
    typer.echo(f"wrote {out} ({'x'.join(map(str, shape))} from step {ckpt.step})")


def _sampler(name: str, options: dict[str, dict[str, float | None]]) -> Sampler:
    """The Sampler of --sampler and the options given; exits with the field and reason."""
    from pydantic import ValidationError

    from trainer.guided import Sampler
    from trainer.spec import describe_error

    raw: dict[str, object] = {"sampler": name}
    for kind, values in options.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            raw[kind] = given
    try:
        return Sampler.model_validate(raw)
    except ValidationError as exc:
        field, reason = describe_error(exc.errors()[0])
        flag = field.replace(".", "-").replace("_", "-")
        if flag in ("drs", "refine"):  # options given for another sampler
            flag += "-* options"
        fail(f"--{flag}: {reason}" if field else reason)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
