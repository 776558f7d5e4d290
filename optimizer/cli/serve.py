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
    data: Annotated[
        str | None,
        typer.Option(
            help="Folder for background jobs and results; jobs in it resume when the service "
            "starts again (default: a new temporary folder, gone with the process)."
        ),
    ] = None,
    warn: Annotated[
        str | None,
        typer.Option(
            help="Quality monitor: warn when the bad tail (5th percentile) of the last --window "
            "scored outputs misses this, e.g. 'ssimulacra2>=80'.",
            rich_help_panel="Quality monitor",
        ),
    ] = None,
    fail: Annotated[
        str | None,
        typer.Option(
            help="Quality monitor: critical when that tail misses this, e.g. 'ssimulacra2>=70'.",
            rich_help_panel="Quality monitor",
        ),
    ] = None,
    window: Annotated[
        int,
        typer.Option(help="Outputs the monitor judges.", rich_help_panel="Quality monitor"),
    ] = 500,
    alert_webhook: Annotated[
        str | None,
        typer.Option(
            help="POST each change of the monitor's level here as JSON.",
            rich_help_panel="Quality monitor",
        ),
    ] = None,
) -> None:
    """Run the HTTP service: optimise and score uploads, background jobs, a web page at /.

    Endpoints: POST /v1/optimize, /v1/score and /v1/jobs; GET /healthz, /readyz, /metrics and
    /v1/monitor; OpenAPI at /docs. Limits answer with JSON errors (413, 422, 503, 504). With
    --warn/--fail, a monitor judges the bad tail of the last --window scored outputs and logs,
    counts and POSTs each change of its level."""
    from ..api import parse_bytes
    from ..service import Settings
    from ..service import serve as run

    run(
        Settings(
            host=host, port=port, device=device, workers=workers, queue=queue,
            max_upload=parse_bytes(max_upload), max_pixels=max_pixels, timeout=timeout,
            token=token, warn=warn, fail=fail, window=window, alert_webhook=alert_webhook,
            data=data,
        ),
        processes=processes,
    )  # fmt: skip
