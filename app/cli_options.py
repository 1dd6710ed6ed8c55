"""Options the commands that talk to a running service share (`submit`, `dataset upload`)."""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_SERVER = "http://127.0.0.1:8000"

Server = Annotated[str, typer.Option(envvar="GANFORGE_SERVER", help="the ganforge API")]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="GANFORGE_TOKEN",
        help="API token (`ganforge token create`), when the server needs one",
    ),
]
