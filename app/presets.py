"""Ready-made job specs offered by `GET /api/presets` and the New-job page, and one ready-made
sweep (a preset with `sweep`: POST /api/sweeps with its spec as `base`).

The definitions live here, in the package, so a deployed image without `examples/` serves
them; tests/app/test_specs.py checks that each preset with a twin under `examples/` (see
`EXAMPLE_FILES`) equals that file, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from trainer.spec import Isolation, Order, TrainSpec, ZeroGrad


class Preset(BaseModel):
    id: str
    title: str
    description: str
    spec: dict[str, Any]
    # The preset this one is meant to be compared with (the seed's broken order and its fix),
    # and one line saying how the two differ; None for a preset on its own.
    twin: str | None = None
    difference: str | None = None
    # A sweep preset: the body of POST /api/sweeps but `base`, which is `spec`; None for a job.
    sweep: dict[str, Any] | None = None


_SEED_DIFFERENCE = (
    "Both step G first and zero the gradients after each step; broken backpropagates each "
    "loss into both networks (isolation: none), so each steps on the other's gradient; fixed "
    "freezes D during G's backward (isolation: freeze)."
)

PRESETS: tuple[Preset, ...] = (
    Preset(
        id="ring",
        title="Ring (default recipe)",
        description=(
            "8 Gaussians on a circle with the recipe that trained best: bce + light R1, "
            "4x128 MLPs, Adam 4e-3 decayed linearly, EMA 0.99, 10,000 steps. About 3 CPU "
            "minutes; 8/8 modes."
        ),
        spec={"name": "default ring"},
    ),
    Preset(
        id="grid",
        title="Grid",
        description=(
            "25 Gaussians on a 5x5 grid (the PacGAN / VEEGAN benchmark) with the same recipe. "
            "About 3 CPU minutes; 24.8/25 modes on average."
        ),
        spec={"name": "default grid", "data": {"kind": "grid"}},
    ),
    Preset(
        id="digits",
        title="Digits",
        description=(
            "scikit-learn's 8x8 digits with 3x256 MLPs (batch norm in G), R1 weight 1, Adam "
            "2e-3 with betas (0, 0.99), 5,000 steps: classifier score 9.1-9.2 and FCD 0.4-0.7 "
            "on seeds 0-2 (real digits 9.6 and 0). About 3 CPU minutes."
        ),
        spec={
            "name": "digits",
            "steps": 5000,
            "data": {"kind": "digits"},
            # Batch norm in G: keep accumulation.steps 1 (micro-batches would change its
            # statistics; the spec warns when they do).
            "model": {"kind": "mlp", "width": 256, "depth": 3, "g_norm": "batch"},
            "loss": {"penalty_weight": 1.0},
            "optim": {
                "g": {"lr": 2.0e-3, "betas": [0.0, 0.99]},
                "d": {"lr": 2.0e-3, "betas": [0.0, 0.99]},
            },
            "every": {"samples": 1000, "eval": 1000, "checkpoint": 1000},
        },
    ),
    Preset(
        id="seed-broken",
        title="The seed's broken order",
        description=(
            "The essay's snippet: G first, plain .backward() through both networks, zero_grad "
            "right after each step. Both networks step on the other's loss gradient; the audit "
            "reports it and the generator never leaves the origin (0/8 modes)."
        ),
        spec={
            "name": "seed broken",
            "schedule": {"order": "g_first", "isolation": "none", "zero_grad": "after"},
        },
        twin="seed-fixed",
        difference=_SEED_DIFFERENCE,
    ),
    Preset(
        id="seed-fixed",
        title="Its fixed twin",
        description=(
            "Same order and zero_grad placement, D frozen during G's backward. The audit "
            "reports exactly 0 and it trains like the default recipe (8/8 modes)."
        ),
        spec={
            "name": "seed fixed",
            "schedule": {"order": "g_first", "isolation": "freeze", "zero_grad": "after"},
        },
        twin="seed-broken",
        difference=_SEED_DIFFERENCE,
    ),
    Preset(
        id="seed-study",
        title="The seed's study",
        description=(
            "Every update schedule on the ring: order x isolation x zero_grad, each with "
            "accumulation.steps 1 and 4, 36 trials of 2,000 steps judged on eval/modes. The "
            "trials table's leak audit shows which schedules leak. About 35 CPU minutes in all "
            "(a trial takes 45 s with one micro-batch, 75 s with four): about 20 minutes on 2 "
            "workers, 2 trials at a time."
        ),
        spec={"name": "seed study", "steps": 2000},
        sweep={
            "name": "The seed's study",
            "method": "grid",
            "space": {
                "schedule.order": {"values": list(get_args(Order))},
                "schedule.isolation": {"values": list(get_args(Isolation))},
                "schedule.zero_grad": {"values": list(get_args(ZeroGrad))},
                "accumulation.steps": {"values": [1, 4]},
            },
            "objective": {"metric": "eval/modes", "mode": "max"},
            "budget": {"trials": 36, "concurrent": 2},
            "pruner": "none",
        },
    ),
)

# The file under examples/ each preset mirrors (the grid has none).
EXAMPLE_FILES = {
    "ring": "default.yaml",
    "digits": "digits.yaml",
    "seed-broken": "seed-broken.yaml",
    "seed-fixed": "seed-fixed.yaml",
}


def presets() -> list[Preset]:
    """Every preset; each spec is checked to be valid (a broken preset fails loudly in tests)."""
    for preset in PRESETS:
        TrainSpec.model_validate(preset.spec)
    return [preset.model_copy(deep=True) for preset in PRESETS]
