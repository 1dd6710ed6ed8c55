"""Keep benchmark results in docs/benchmarks.md: each benchmark owns one marked section."""

from __future__ import annotations

import platform
import time
from pathlib import Path


def replace_section(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` (or append)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    machine = f"{platform.machine()}, Python {platform.python_version()}"
    stamp = f"_Measured {time.strftime('%Y-%m-%d')} on {machine}._\n\n"
    block = f"{start}\n{stamp}{body}{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)
