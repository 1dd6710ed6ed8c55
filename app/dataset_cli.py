"""`ganforge dataset ...`: datasets on a running service (the logic: app.dataset_upload)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli_options import DEFAULT_SERVER, Server, Token

dataset = typer.Typer(no_args_is_help=True, help="Datasets on a running service.")

PathArgument = Annotated[
    Path,
    typer.Argument(
        metavar="PATH",
        exists=True,
        help="a folder of PNG/JPEG/WebP/BMP images (sent as a tar made on the fly), a "
        ".zip/.tar/.tar.gz of them, or a .npy/.npz array",
    ),
]


@dataset.command("upload")
def upload(
    path: PathArgument,
    resolution: int | None = typer.Option(
        None, help="images: the square side in px they are scaled to, 8 to 256 (needed)"
    ),
    channels: int | None = typer.Option(
        None, help="images: 1 or 3 (default: 1 when every image is gray, else 3)"
    ),
    crop: str | None = typer.Option(
        None, help="images: center (default; scale the short side, crop the middle) or resize"
    ),
    server: Server = DEFAULT_SERVER,
    api_token: Token = None,
) -> None:
    """Upload a dataset; prints its id, shape, count and the files left out."""
    import httpx2
    from tqdm import tqdm

    from app.cli_options import ClientError, client
    from app.dataset_upload import report, source_for
    from app.dataset_upload import upload as send

    given = {"resolution": resolution, "channels": channels, "crop": crop}
    fields = {name: str(value) for name, value in given.items() if value is not None}
    try:
        source = source_for(path, fields)
        with (
            client(server, api_token) as api,
            tqdm(total=source.size, unit="B", unit_scale=True, unit_divisor=1024) as bar,
        ):
            made = send(api, source, fields, bar.update)
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except httpx2.HTTPError as exc:
        typer.echo(f"error: server: cannot upload to {server}: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a file of the folder changed or vanished while it was sent
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stored = f"{server}/api/datasets lists what it stored"
        typer.echo(f"interrupted before the server answered; {stored}", err=True)
        raise typer.Exit(130) from None
    for line in report(made, server):
        typer.echo(line)
