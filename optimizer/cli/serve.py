"""`imgtune serve`: the HTTP service (`optimizer.service`)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DeviceOpt


def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    processes: Annotated[
        int, typer.Option(help="Server processes (uvicorn workers), each with its own suite.")
    ] = 1,
    workers: Annotated[int, typer.Option(help="Requests computing at once, per process.")] = 2,
    queue: Annotated[
        int, typer.Option(help="Requests that may wait beyond those; more get 503 + Retry-After.")
    ] = 8,
    max_upload: Annotated[
        str, typer.Option(help="Largest request body, e.g. 50MB (413 beyond).")
    ] = "50MB",
    max_pixels: Annotated[
        int, typer.Option(help="Largest image in pixels (422 beyond: decompression bombs too).")
    ] = 100_000_000,
    timeout: Annotated[float, typer.Option(help="Seconds a request may run (504 beyond).")] = 120.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="IMGTUNE_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on all but /healthz, /readyz, /metrics.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Run the HTTP service: POST /v1/score and /v1/optimize, GET /healthz, /readyz, /metrics;
    OpenAPI at /docs. Limits answer with JSON errors (413, 422, 503, 504)."""
    from ..api import parse_bytes
    from ..service import Settings
    from ..service import serve as run

    run(
        Settings(
            host=host, port=port, device=device, workers=workers, queue=queue,
            max_upload=parse_bytes(max_upload), max_pixels=max_pixels, timeout=timeout,
            token=token,
        ),
        processes=processes,
    )  # fmt: skip
