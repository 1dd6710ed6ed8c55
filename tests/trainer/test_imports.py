"""`trainer` stays pure PyTorch: importing it loads no web, database or queue library."""

from __future__ import annotations

import subprocess
import sys

SERVICE_LIBRARIES = [
    "fastapi",
    "starlette",
    "sqlalchemy",
    "celery",
    "redis",
    "kombu",
    "app",
    "worker",
]


def test_importing_trainer_loads_no_service_layer():
    modules = [
        "trainer",
        "trainer.spec",
        "trainer.training",
        "trainer.engine",
        "trainer.cli",
        "trainer.checkpoint",
        "trainer.generate",
        "trainer.sinks",
        "trainer.samples",
        "trainer.evaluation",
    ]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"bad = sorted(m for m in {SERVICE_LIBRARIES!r} if m in sys.modules)\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
