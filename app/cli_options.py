"""What the commands that talk to a running service share (`submit`, `sweep`, `dataset
upload`): the --server and --token options, the client, and reading the API's answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import httpx2

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


class ClientError(Exception):
    """A command's failure with its exit status: 2 the input is invalid (the server's
    message names the field), 1 any other refusal."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def client(server: str, token: str | None, **kwargs: Any) -> httpx2.Client:
    """An API client, with the token as a bearer when given."""
    import httpx2

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.Client(base_url=server, timeout=30, headers=headers, **kwargs)


def details(answer: httpx2.Response) -> list[str]:
    """The messages of an error answer: one per `detail[]` entry, or its text."""
    try:
        detail = answer.json().get("detail")
    except ValueError:
        return [answer.text[:200]]
    if isinstance(detail, list):
        return [str(d.get("message", d)) if isinstance(d, dict) else str(d) for d in detail]
    return [str(detail)]


def created(answer: httpx2.Response, invalid: tuple[int, ...] = (422,)) -> dict[str, Any]:
    """The body of a 201; ClientError otherwise: exit 2 with the field messages for the
    statuses in `invalid`, exit 1 with the status for any other."""
    if answer.status_code == 201:
        made: dict[str, Any] = answer.json()
        return made
    lines = details(answer)
    if answer.status_code in invalid:
        raise ClientError("\n".join(lines), 2)
    raise ClientError(f"server: {answer.status_code} {' '.join(lines)}", 1)


@contextmanager
def exits_on_failure(server: str, going_on: str) -> Iterator[None]:
    """Turn what a command talking to the service can meet into its message and exit
    status: a ClientError (its code), an unreachable server (1), Ctrl-C (130, saying that
    `going_on` continues on the server)."""
    import httpx2

    try:
        yield
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except httpx2.HTTPError as exc:
        typer.echo(f"error: server: cannot reach {server}: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted; {going_on} goes on on the server", err=True)
        raise typer.Exit(130) from None
