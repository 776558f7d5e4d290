"""`imgtune serve`: the HTTP service (FastAPI on uvicorn).

Endpoints (OpenAPI at ``/docs``):

- ``GET /healthz``: the process answers. ``GET /readyz``: 200 once the default metric suite is
  loaded, else 503. ``GET /metrics``: Prometheus text (requests, latency, encodes, bytes
  saved, scores). These, the web page at ``/`` and the API's description need no token.
- ``POST /v1/score``: multipart ``reference`` and ``candidate`` (+ ``metrics``, ``target``)
  -> what ``imgtune score --json`` prints for the pair.
- ``POST /v1/optimize``: multipart ``image`` (+ ``target`` or ``quality``, ``codecs``,
  ``max_bytes``, ``keep_metadata``) -> the smallest passing file as the body, its codec,
  quality, bytes and scores in ``X-Imgtune-*`` headers. Without ``codecs``, the ``Accept``
  header says which formats the client takes (a browser without ``image/avif`` never gets
  AVIF; JPEG is always allowed). With ``Accept: application/json``: the same as JSON, with a
  download URL (``GET /v1/results/{id}``, kept for the last `Settings.results` outputs).
  ``widths`` (``"480,960"``, JSON only): ``{"variants": [...]}``, one per width as
  ``optimize --widths`` makes them.

- ``POST /v1/jobs``: multipart ``files`` (zips are unpacked, names checked; other files
  taken as images) and `optimize`'s options -> 202 and the job; ``GET /v1/jobs/{id}``: its
  state (queued, running, done, failed, cancelled) and progress; ``GET /v1/jobs/{id}/result``:
  a zip of the outputs with imgtune.json; ``DELETE /v1/jobs/{id}``: cancel. Jobs live in
  ``--data`` (`optimizer.service_jobs`) and resume when the service starts again.
- ``GET /v1/monitor``: the quality monitor's window (with ``--warn``/``--fail``).

Safety: uploads larger than ``max_upload`` bytes are refused while they arrive (413); images
over ``max_pixels`` (decompression bombs included) or that do not decode are 422; at most
``workers`` requests compute at once and ``queue`` more wait, beyond that 503 with
``Retry-After``; a request that runs past ``timeout`` seconds is answered 504 (its work
finishes in the background, holding its slot, so the service never runs more than it may).
Files are written only under per-request temporary folders, named by the service, removed
when the request ends. CORS is off. With a token (``--token`` or ``IMGTUNE_TOKEN``) every
endpoint but the three above needs ``Authorization: Bearer <token>`` (401). Every error is
JSON: ``{"error": {"status": 413, "code": "too_large", "message": "..."}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .assets import FORMAT_OF, MIME
from .codecs import CODECS
from .errors import ImgtuneError
from .images import ImageError, shown_size
from .metrics.weights import WeightsMissingError
from .monitor import LEVELS
from .service_jobs import JobError
from .targets import parse_target

#: multipart fields (FastAPI reads these annotations at run time: they must be module-level)
Upload = Annotated[UploadFile, File()]
OptionalField = Annotated[str | None, Form()]

__all__ = ["Settings", "create_app", "app_from_env"]

log = logging.getLogger("imgtune.serve")

ENV = "IMGTUNE_SERVE_SETTINGS"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    #: requests computing at once (per server process), and how many more may wait
    workers: int = 2
    queue: int = 8
    #: bytes of one upload (a whole request body), pixels of one image, seconds of one request
    max_upload: int = 50 * 1000**2
    max_pixels: int = 100_000_000
    timeout: float = 120.0
    token: str | None = None
    #: where results wait to be downloaded (None: a temporary folder of the process)
    data: str | None = None
    #: how many results are kept for download
    results: int = 256
    codecs: tuple[str, ...] = ("avif", "webp", "jpeg")
    #: the quality monitor (`optimizer.monitor`): thresholds on the bad tail of the last
    #: `window` outputs scored (optimize's outputs and score's candidates), and where alerts go
    warn: str | None = None
    fail: str | None = None
    window: int = 500
    alert_webhook: str | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> Settings:
        d = json.loads(text)
        d["codecs"] = tuple(d.get("codecs") or cls.codecs)
        return cls(**d)


class ServiceError(Exception):
    """An error answered as JSON with `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class _Gate:
    """At most `running` requests compute, `waiting` more wait; beyond that: busy (503)."""

    def __init__(self, running: int, waiting: int) -> None:
        self.pool = ThreadPoolExecutor(max(1, running), thread_name_prefix="imgtune-serve")
        self.slots = threading.BoundedSemaphore(max(1, running) + max(0, waiting))
        self.inflight = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[], Any], timeout: float) -> Any:
        if not self.slots.acquire(blocking=False):
            raise ServiceError(
                503, "busy", "the service is at capacity; retry shortly", {"Retry-After": "2"}
            )
        with self._lock:
            self.inflight += 1

        def done(_):
            with self._lock:
                self.inflight -= 1
            self.slots.release()  # when the work ends, not when the request gave up on it

        fut = asyncio.get_running_loop().run_in_executor(self.pool, fn)
        fut.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ServiceError(
                504, "timeout", f"the request ran past the service's limit of {timeout:g} s"
            ) from None


class _Limit:
    """ASGI middleware: a request body over `limit` bytes is refused as it arrives (413)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, "too_large", self._message())
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _send_error(send, 413, "too_large", self._message())

    def _message(self) -> str:
        return f"the upload is larger than this service takes ({self.limit:,} bytes)"


class _TooLarge(Exception):
    pass


async def _send_error(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _metrics():
    """The service's Prometheus metrics, in a registry of its own."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    reg = CollectorRegistry()
    return reg, {
        "requests": Counter(
            "imgtune_requests_total", "Requests by endpoint and status", ["endpoint", "status"],
            registry=reg,
        ),
        "latency": Histogram(
            "imgtune_request_seconds", "Request latency by endpoint", ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=reg,
        ),
        "encodes": Counter("imgtune_encodes_total", "Encodes made by /v1/optimize", registry=reg),
        "saved": Counter(
            "imgtune_bytes_saved_total", "Upload bytes minus output bytes (/v1/optimize)",
            registry=reg,
        ),
        "score": Histogram(
            "imgtune_output_score", "Score of each output on its target's metric",
            ["target"], buckets=(30, 50, 60, 70, 75, 80, 85, 90, 95, 100), registry=reg,
        ),
        "level": Gauge(
            "imgtune_quality_level", "Quality monitor: 0 ok, 1 warning, 2 critical",
            registry=reg,
        ),
        "tail": Gauge(
            "imgtune_quality_tail", "Quality monitor: the window's bad tail per threshold clause",
            ["clause"], registry=reg,
        ),
        "alerts": Counter(
            "imgtune_quality_alerts_total", "Quality monitor: level changes", ["level"],
            registry=reg,
        ),
    }  # fmt: skip


def create_app(settings: Settings | None = None):
    """The FastAPI application for `settings`."""
    from . import api

    s = settings or Settings()
    token = s.token or os.environ.get("IMGTUNE_TOKEN") or None
    data = Path(s.data) if s.data else Path(tempfile.mkdtemp(prefix="imgtune-serve-"))
    results = data / "results"
    results.mkdir(parents=True, exist_ok=True)
    gate = _Gate(s.workers, s.queue)
    registry, m = _metrics()
    monitor = None
    if s.warn or s.fail:
        from .monitor import QualityMonitor, Thresholds

        monitor = QualityMonitor(Thresholds.parse(s.warn, s.fail), window=s.window)
    suites: dict[tuple, Any] = {}
    models: dict[str, Any] = {}  # target -> the shipped quality model (None: none for it)
    loaded = threading.Lock()
    state = {"ready": False}

    def suite_for(metrics: tuple[str, ...]):
        with loaded:
            if metrics not in suites:
                suites[metrics] = api.build_suite(metrics=list(metrics), device=s.device)
            return suites[metrics]

    def model_for(target) -> Any:
        """The learned model for `target`, read once per process (the service learns nothing
        from its requests, so it never changes)."""
        with loaded:
            if str(target) not in models:
                learner = api.model_learner(target, "auto", studies=None)
                models[str(target)] = learner.current() if learner else None
            return models[str(target)]

    runner: list[Any] = []  # the job runner, started with the app (jobs resume then)

    @contextlib.asynccontextmanager
    async def lifespan(app):  # the default target's suite, before the first request needs it
        from .service_jobs import JobRunner

        await asyncio.get_running_loop().run_in_executor(None, suite_for, ("ssimulacra2",))
        runner.append(JobRunner(data / "jobs", threads=1, device=s.device))
        state["ready"] = True
        yield
        runner[0].stop()
        gate.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="imgtune",
        version="1",
        description="Perceptual-quality image optimisation: score pairs, optimise images.",
        lifespan=lifespan,
    )

    def observe(scores: dict[str, float]) -> None:
        """One scored output into the monitor; a level change is logged, counted and sent."""
        if monitor is None:
            return
        event = monitor.add(scores)
        stats = monitor.stats()
        for name, value in monitor.tails.items():
            m["tail"].labels(name).set(value)
        m["level"].set(LEVELS.index(stats["level"]))
        if event is None:
            return
        event = {**event, "stats": stats, "time": time.time()}
        m["alerts"].labels(event["to"]).inc()
        log.warning(json.dumps(event, default=float))
        if s.alert_webhook:
            threading.Thread(target=_post, args=(s.alert_webhook, event), daemon=True).start()

    def error(status: int, code: str, message: str, headers=None) -> JSONResponse:
        return JSONResponse(
            {"error": {"status": status, "code": code, "message": message}},
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(JobError)
    async def _job_error(request: Request, exc: JobError):
        return error(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        what = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error(422, "invalid_request", what or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, "http", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return error(500, "internal", f"{type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        path = request.url.path
        # the page, health and the API's description are open; the page asks for the token
        open_path = path in ("/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
        if token and not open_path:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                response = error(401, "unauthorized", "a bearer token is needed")
                m["requests"].labels(path, 401).inc()
                return response
        endpoint = path if path.startswith(("/v1/score", "/v1/optimize", "/healthz")) else "other"
        t0 = time.perf_counter()
        response = await call_next(request)
        m["latency"].labels(endpoint).observe(time.perf_counter() - t0)
        m["requests"].labels(endpoint, response.status_code).inc()
        return response

    page = (Path(__file__).parent / "web" / "index.html").read_text()

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        # Self-contained: no script, style or font from anywhere but this page.
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        if not state["ready"]:
            return error(503, "not_ready", "the metric suite is still loading")
        return {"status": "ready", "device": s.device}

    @app.get("/v1/monitor")
    def monitor_stats():
        if monitor is None:
            raise ServiceError(404, "no_monitor", "start the service with --warn/--fail")
        return monitor.stats()

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def _saved(upload: UploadFile, folder: Path, name: str) -> Path:
        """The upload in `folder` under a name of ours (never the client's)."""
        path = folder / name
        with path.open("wb") as f:
            while chunk := await upload.read(1 << 20):
                f.write(chunk)
        if path.stat().st_size == 0:
            raise ServiceError(422, "empty", f"{upload.filename or name}: the upload is empty")
        return path

    def _bad_image(exc: Exception, name: str | None) -> ServiceError:
        # The message names our temporary file: name what the client sent instead.
        text = str(exc)
        reason = text.split(": ", 1)[1] if ": " in text and text.startswith("/") else text
        return ServiceError(422, "bad_image", f"{name or 'the upload'}: {reason}")

    @app.post("/v1/score")
    async def score(
        reference: Upload,
        candidate: Upload,
        metrics: OptionalField = None,
        target: OptionalField = None,
    ) -> dict:
        folder = Path(tempfile.mkdtemp(prefix="req-", dir=data))
        try:
            ref = await _saved(reference, folder, "reference")
            cand = await _saved(candidate, folder, "candidate")

            def work() -> dict:
                try:
                    # The suite of these metrics is built once per process (LPIPS's and
                    # DISTS's networks are not read from disk per request).
                    chosen = [m.strip() for m in (metrics or api.DEFAULT_METRICS).split(",")]
                    chosen = [m for m in chosen if m]
                    names = parse_target(target).needed_metrics(chosen) if target else chosen
                    r = api.score(
                        ref, cand, target=target, suite=suite_for(tuple(names)),
                        max_pixels=s.max_pixels,
                    )  # fmt: skip
                except ImageError as exc:  # which of the two it is, by our name for it
                    which = reference if str(exc).startswith(str(ref)) else candidate
                    raise _bad_image(exc, which.filename) from None
                except WeightsMissingError as exc:
                    raise ServiceError(503, "weights_missing", str(exc)) from None
                except (ValueError, ImgtuneError) as exc:
                    raise ServiceError(422, "invalid_request", str(exc)) from None
                rec = {**r.record(), "composite_weights": r.composite.as_dict()}
                rec["reference"], rec["candidate"] = reference.filename, candidate.filename
                rec["name"] = candidate.filename
                observe(dict(r.scores.values))
                return rec

            return await gate.run(work, s.timeout)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @app.post("/v1/optimize")
    async def optimize(
        request: Request,
        image: Upload,
        target: OptionalField = None,
        quality: OptionalField = None,
        codecs: OptionalField = None,
        max_bytes: OptionalField = None,
        widths: OptionalField = None,
        keep_metadata: Annotated[str, Form()] = "auto",
    ):
        accept = request.headers.get("accept", "")
        takes = {t.split(";")[0].strip().lower() for t in accept.split(",") if t.strip()}
        wants_json = "application/json" in takes
        allowed = list(s.codecs)
        named = any(t.startswith("image/") for t in takes)
        if codecs is None and named and "image/*" not in takes and "*/*" not in takes:
            # what the client takes decides (JPEG: every client); JSON alone: any format
            allowed = [c for c in allowed if c == "jpeg" or media_type(c) in takes]
        folder = Path(tempfile.mkdtemp(prefix="req-", dir=data))
        try:
            src = await _saved(image, folder, "upload")

            def work():
                from .image_job import Status, optimize_image
                from .predictor import Prediction

                try:
                    job = api.optimize_job(
                        target=target, quality=quality, codecs=codecs or allowed,
                        max_bytes=max_bytes, keep_metadata=keep_metadata,
                        max_pixels=s.max_pixels, widths=widths,
                    )  # fmt: skip
                except ImgtuneError as exc:
                    raise ServiceError(422, "invalid_request", str(exc)) from None
                suite = suite_for(tuple(job.target.needed_metrics()))
                prediction = Prediction(model=model_for(job.target))
                size = shown_size(src) if job.widths else (0, 0)
                if size is None:
                    raise ServiceError(422, "bad_image", f"{image.filename}: not an image")
                done = []
                for v in job.variants(size[0]):
                    r = optimize_image(
                        src, job.for_variant(v), suite=suite, prediction=prediction,
                        name=image.filename or "upload", stem="output",
                    )  # fmt: skip
                    o = r.outcome
                    if o.status == Status.SKIPPED:
                        raise _bad_image(ImgtuneError(o.error or "unusable image"), image.filename)
                    done.append((o, r.payload if r.payload is not None else src.read_bytes()))
                return done, job

            if widths is not None and not wants_json:
                raise ServiceError(
                    406, "not_acceptable",
                    "with widths the answer is several files: ask with Accept: application/json",
                )  # fmt: skip
            done, job = await gate.run(work, s.timeout)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        metas = []
        for o, body in done:
            m["encodes"].inc(o.encodes)
            m["saved"].inc(max(o.source_bytes - len(body), 0))
            clause = job.target.clauses[0] if job.target.clauses else None
            if clause is not None and clause.metric in o.scores:
                m["score"].labels(str(job.target)).observe(o.scores[clause.metric])
            if o.scores:
                observe(dict(o.scores))
            metas.append(
                {
                    "status": str(o.status),
                    "codec": o.codec,
                    "quality": o.quality,
                    "bytes": len(body),
                    "source_bytes": o.source_bytes,
                    "width": o.width,
                    "height": o.height,
                    "scores": o.scores,
                    "meets_target": o.meets_target,
                    "target": job.goal(),
                    "type": media_type(o.codec) if o.codec else _sniff(body),
                    "encodes": o.encodes,
                    "message": o.error,
                }
            )
        if wants_json:
            for meta, (_, body) in zip(metas, done, strict=True):
                rid = secrets.token_hex(12)
                _keep(results, rid, body, s.results)
                meta["url"] = f"/v1/results/{rid}"
            return {"variants": metas} if widths is not None else metas[0]
        (o, body), meta = done[0], metas[0]
        headers = {
            "X-Imgtune-Status": meta["status"],
            "X-Imgtune-Codec": str(o.codec or ""),
            "X-Imgtune-Quality": str(o.quality if o.quality is not None else ""),
            "X-Imgtune-Bytes": str(len(body)),
            "X-Imgtune-Source-Bytes": str(o.source_bytes),
            "X-Imgtune-Scores": json.dumps(o.scores, separators=(",", ":")),
            "X-Imgtune-Target": meta["target"],
            "Vary": "Accept",
        }
        return Response(body, media_type=meta["type"], headers=headers)

    def job_view(meta: dict) -> dict:
        view = {**meta, "url": f"/v1/jobs/{meta['id']}"}
        if meta["state"] == "done":
            view["result"] = f"/v1/jobs/{meta['id']}/result"
        return view

    @app.post("/v1/jobs", status_code=202)
    async def create_job(
        files: Annotated[list[UploadFile], File()],
        target: OptionalField = None,
        quality: OptionalField = None,
        codecs: OptionalField = None,
        max_bytes: OptionalField = None,
        widths: OptionalField = None,
        formats: OptionalField = None,
        keep_metadata: OptionalField = None,
    ) -> dict:
        options = {"target": target, "quality": quality, "codecs": codecs,
                   "max_bytes": max_bytes, "widths": widths, "formats": formats,
                   "keep_metadata": keep_metadata}  # fmt: skip
        try:  # the options are checked now, not when the job runs
            api.optimize_job(**{k: v for k, v in options.items() if v is not None})
        except ImgtuneError as exc:
            raise ServiceError(422, "invalid_request", str(exc)) from None
        folder = Path(tempfile.mkdtemp(prefix="req-", dir=data))
        try:
            saved = [
                (f.filename or f"upload{i}", await _saved(f, folder, f"upload{i}"))
                for i, f in enumerate(files)
            ]
            meta = await asyncio.get_running_loop().run_in_executor(
                None, runner[0].submit, saved, options
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return job_view(meta)

    @app.get("/v1/jobs/{jid}")
    def job_status(jid: str) -> dict:
        return job_view(runner[0].status(jid))

    @app.get("/v1/jobs/{jid}/result")
    def job_result(jid: str):
        return FileResponse(
            runner[0].result(jid), media_type="application/zip", filename=f"imgtune-{jid}.zip"
        )

    @app.delete("/v1/jobs/{jid}")
    def job_cancel(jid: str) -> dict:
        return job_view(runner[0].cancel(jid))

    @app.get("/v1/results/{rid}")
    def result(rid: str):
        if not (len(rid) == 24 and all(c in "0123456789abcdef" for c in rid)):
            raise ServiceError(404, "not_found", "no such result")
        path = results / rid
        if not path.is_file():
            raise ServiceError(404, "not_found", "no such result (results are kept a while)")
        with path.open("rb") as f:
            head = f.read(64)
        return FileResponse(path, media_type=_sniff(head))

    return _Limit(app, s.max_upload)


def _post(url: str, event: dict) -> None:
    """An alert to the webhook; a failure to deliver is logged, never raised."""
    import httpx

    try:
        httpx.post(url, json=event, timeout=5).raise_for_status()
    except Exception as exc:  # the service goes on whatever the webhook does
        log.error(json.dumps({"event": "alert_not_delivered", "url": url, "error": str(exc)}))


def media_type(codec: str) -> str:
    """The media type of `codec`'s files (`assets.MIME`, by the extension it writes)."""
    return MIME.get(FORMAT_OF.get(CODECS[codec].extension, ""), "application/octet-stream")


def _sniff(head: bytes) -> str:
    """The media type of a file from its first bytes (a kept source's)."""
    if head[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


def _keep(folder: Path, rid: str, body: bytes, most: int) -> None:
    """Store a result for download; only the newest `most` are kept."""
    tmp = folder / f".{rid}.part"
    tmp.write_bytes(body)
    os.replace(tmp, folder / rid)
    files = sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                   key=lambda p: p.stat().st_mtime_ns)  # fmt: skip
    for p in files[: max(0, len(files) - most)]:
        p.unlink(missing_ok=True)


def app_from_env():
    """The application for uvicorn's workers: settings from ``IMGTUNE_SERVE_SETTINGS``."""
    return create_app(Settings.from_env(os.environ.get(ENV, "{}")))


def serve(settings: Settings, *, processes: int = 1) -> None:
    """Run the service in the foreground (uvicorn) until interrupted."""
    import dataclasses

    import uvicorn

    if settings.data is None:  # one folder for every process: a result is found by any
        settings = dataclasses.replace(settings, data=tempfile.mkdtemp(prefix="imgtune-serve-"))
    os.environ[ENV] = settings.to_env()
    uvicorn.run(
        "optimizer.service:app_from_env", factory=True, host=settings.host, port=settings.port,
        workers=processes, log_level="info", access_log=False,
    )  # fmt: skip
