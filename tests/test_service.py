"""`imgtune serve`: the real server (uvicorn in a subprocess on a free loopback port), exercised
with httpx: optimised responses decode, pass their target when re-scored and are smaller than
the upload; Accept decides the format; limits answer with the right status and a JSON error;
hostile uploads get 4xx and the service stays healthy; a full queue answers 503."""

from __future__ import annotations

import concurrent.futures
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from optimizer import api
from optimizer.metrics import MetricSuite

from . import _serve
from .conftest import SAMPLES

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _Hook(http.server.BaseHTTPRequestHandler):
    """The alert webhook: every POSTed JSON body is kept."""

    received: list[dict] = []

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        type(self).received.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hook():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Hook.received = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/alerts", _Hook.received
    srv.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, hook):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    data = log.parent / "data"
    proc, base = _serve.start(
        "--workers", "1", "--queue", "0", "--max-upload", "2MB", "--max-pixels", "4000000",
        "--timeout", "60", "--warn", "ssimulacra2>=60", "--fail", "ssimulacra2>=30",
        "--window", "50", "--alert-webhook", hook[0], "--data", str(data),
        env={"IMGTUNE_TOKEN": TOKEN}, log=log,
    )  # fmt: skip
    try:
        yield base, proc
    finally:
        _serve.stop(proc)
        # every request's temporary folder went with it
        leftover = [p.name for p in data.iterdir() if p.name.startswith("req-")]
        assert leftover == [], leftover


def _png(name: str = "coffee", side: int = 192) -> bytes:
    im = Image.open(SAMPLES / f"{name}.png").convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _optimize(base, data: bytes, *, accept: str = "*/*", name: str = "a.png", **fields):
    return httpx.post(
        f"{base}/v1/optimize", files={"image": (name, data)}, data=fields,
        headers={**AUTH, "Accept": accept}, timeout=90,
    )  # fmt: skip


def test_health_ready_and_metrics_need_no_token_and_the_rest_does(server):
    base, _ = server
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    r = httpx.post(f"{base}/v1/optimize", files={"image": ("a.png", _png())})
    assert r.status_code == 401
    assert r.json() == {
        "error": {"status": 401, "code": "unauthorized", "message": "a bearer token is needed"}
    }
    assert "imgtune_requests_total" in httpx.get(f"{base}/metrics").text


def test_an_optimized_response_decodes_passes_when_rescored_and_is_smaller(server):
    base, _ = server
    upload = _png()
    r = _optimize(base, upload)
    assert r.status_code == 200, r.text
    assert r.headers["x-imgtune-status"] == "written"
    assert int(r.headers["x-imgtune-bytes"]) == len(r.content) < len(upload)
    got = Image.open(io.BytesIO(r.content))
    assert r.headers["content-type"] == f"image/{got.format.lower()}"
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    ref = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"))
    score = suite.score_pair(ref, np.asarray(got.convert("RGB"))).values["ssimulacra2"]
    assert score >= 80 - 0.05, score
    # the metrics say so
    text = httpx.get(f"{base}/metrics").text
    assert 'imgtune_requests_total{endpoint="/v1/optimize",status="200"}' in text
    assert "imgtune_output_score_bucket" in text and "imgtune_bytes_saved_total" in text


def test_accept_decides_the_format(server):
    base, _ = server
    upload = _png("chelsea")
    no_avif = _optimize(base, upload, accept="image/webp,image/jpeg;q=0.8")
    assert no_avif.status_code == 200 and no_avif.headers["content-type"] in (
        "image/webp", "image/jpeg"
    )  # fmt: skip
    jpeg_only = _optimize(base, upload, accept="image/jpeg")
    assert jpeg_only.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg_only.content)).format == "JPEG"
    assert no_avif.headers["vary"] == "Accept"


def test_the_json_variant_gives_metadata_and_a_download(server):
    base, _ = server
    r = _optimize(base, _png(), accept="application/json", codecs="webp")
    meta = r.json()
    assert r.status_code == 200 and meta["codec"] == "webp" and meta["meets_target"] is True
    got = httpx.get(base + meta["url"], headers=AUTH)
    assert got.status_code == 200 and len(got.content) == meta["bytes"]
    assert got.headers["content-type"] == "image/webp"
    assert httpx.get(f"{base}/v1/results/{'0' * 24}", headers=AUTH).status_code == 404


def test_score_gives_what_imgtune_score_gives(server, tmp_path):
    base, _ = server
    ref = _png()
    cand = io.BytesIO()
    Image.open(io.BytesIO(ref)).convert("RGB").save(cand, "JPEG", quality=60)
    r = httpx.post(
        f"{base}/v1/score",
        files={"reference": ("r.png", ref), "candidate": ("c.jpg", cand.getvalue())},
        data={"metrics": "ssimulacra2,psnr", "target": "ssimulacra2>=80"}, headers=AUTH,
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    (tmp_path / "r.png").write_bytes(ref)
    (tmp_path / "c.jpg").write_bytes(cand.getvalue())
    local = api.score(tmp_path / "r.png", tmp_path / "c.jpg", metrics="ssimulacra2,psnr",
                      target="ssimulacra2>=80", device="cpu").record()  # fmt: skip
    got = r.json()
    assert set(local) | {"composite_weights"} == set(got)  # imgtune score --json's fields
    for k in ("ssimulacra2", "psnr", "composite"):
        assert got[k] == pytest.approx(local[k], abs=1e-6), k
    assert got["missed"] == local["missed"] == ["ssimulacra2>=80"]
    assert (got["reference"], got["candidate"]) == ("r.png", "c.jpg")  # names, not our paths


def _hostile() -> dict[str, bytes]:
    png = _png(side=64)
    jpg = io.BytesIO()
    Image.open(io.BytesIO(png)).save(jpg, "JPEG")
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000)).save(bomb, "PNG")  # 25 MP in a few KB: over 4 MP

    def png_header(w: int, h: int) -> bytes:  # a PNG that claims a size and holds no pixels
        ihdr = b"IHDR" + w.to_bytes(4, "big") + h.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
        return (
            b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr
            + zlib.crc32(ihdr).to_bytes(4, "big")
        )  # fmt: skip

    rng = np.random.default_rng(0)
    return {
        "zero.png": b"",
        "text.png": b"hello, this is not an image\n" * 10,
        "html.jpg": b"<html><body>no</body></html>",
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg.getvalue()[: len(jpg.getvalue()) // 3],
        "head_only.png": png[:40],
        "bomb.png": bomb.getvalue(),
        "huge_dims.png": png_header(100000, 100000),
        "wide.png": png_header(65535, 1),
        "zero_dims.png": png_header(0, 0),
        "random.bin": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "random.png": b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "random.jpg": b"\xff\xd8\xff" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "random.webp": b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(200),
        "random.avif": b"\x00\x00\x00\x1cftypavif" + bytes(300),
        "gif_header.gif": b"GIF89a" + bytes(20),
        "bmp_header.bmp": b"BM" + bytes(60),
        "tiff_header.tif": b"II*\x00" + bytes(100),
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "nul.png": bytes(4096),
    }


def test_twenty_hostile_uploads_get_4xx_and_the_service_stays_healthy(server):
    base, proc = server
    uploads = _hostile()
    assert len(uploads) == 20
    for name, data in uploads.items():
        r = _optimize(base, data, name=name)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"status", "code", "message"} and err["status"] == r.status_code
        assert "/tmp" not in err["message"], err  # the service's own paths are not told
    assert proc.poll() is None
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert _optimize(base, _png(side=64)).status_code == 200  # and it still works


def test_limits_answer_with_their_status(server):
    base, _ = server
    r = _optimize(base, os.urandom(2_100_000), name="big.png")
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000)).save(bomb, "PNG")
    r = _optimize(base, bomb.getvalue(), name="bomb.png")
    assert r.status_code == 422 and "bomb.png" in r.json()["error"]["message"]
    r = _optimize(base, _png(side=64), target="nonsense>=3")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = httpx.post(f"{base}/v1/optimize", headers=AUTH, data={"target": "ssim>=0.9"})
    assert r.status_code == 422  # no image


def test_a_full_queue_answers_503_with_retry_after(server):
    base, _ = server
    upload = _png("astronaut", side=384)  # a second or so each: they overlap
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda _: _optimize(base, upload), range(4)))
    codes = sorted(r.status_code for r in rs)
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and 503 in codes, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.headers["retry-after"] == "2" and busy.json()["error"]["code"] == "busy"


def test_the_monitor_alerts_when_the_tail_falls_below_fail(server, hook):
    base, _ = server
    _, received = hook
    ref = _png()
    bad = io.BytesIO()
    Image.open(io.BytesIO(ref)).convert("RGB").save(bad, "JPEG", quality=1)
    for _ in range(3):  # a few terrible outputs pull the window's 5th percentile under 30
        r = httpx.post(
            f"{base}/v1/score", headers=AUTH, timeout=60, data={"metrics": "ssimulacra2"},
            files={"reference": ("r.png", ref), "candidate": ("c.jpg", bad.getvalue())},
        )  # fmt: skip
        assert r.status_code == 200 and r.json()["ssimulacra2"] < 30
    stats = httpx.get(f"{base}/v1/monitor", headers=AUTH).json()
    assert stats["level"] == "critical" and stats["fail_misses"] >= 3
    assert "imgtune_quality_level 2.0" in httpx.get(f"{base}/metrics").text
    deadline = time.monotonic() + 10
    while not any(e["to"] == "critical" for e in received) and time.monotonic() < deadline:
        time.sleep(0.1)
    event = next(e for e in received if e["to"] == "critical")
    assert event["event"] == "quality_level" and event["tails"]["ssimulacra2>=30"] < 30


def test_the_docker_image_s_entrypoint_and_healthcheck_run_as_written(tmp_path):
    # No container engine runs here (a docker client without a daemon), so the image's own
    # commands are run as the Dockerfile writes them: the entrypoint (on a free loopback port
    # instead of 0.0.0.0:8000) and the healthcheck against it.
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in text.splitlines()
             if ln and not ln.startswith(("#", " "))}  # fmt: skip
    entry = json.loads(lines["ENTRYPOINT"])
    check = json.loads(lines["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert lines["USER"] != "root" and lines["EXPOSE"] == "8000"
    assert entry[:2] == ["imgtune", "serve"] and entry[entry.index("--port") + 1] == "8000"
    port = _serve.free_port()
    entry[entry.index("--host") + 1] = "127.0.0.1"
    entry[entry.index("--port") + 1] = str(port)
    exe = Path(sys.executable).parent / entry[0]
    proc = subprocess.Popen([str(exe), *entry[1:], "--device", "cpu"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        probe = [sys.executable, *check[1:]]
        probe[-1] = probe[-1].replace(":8000/", f":{port}/")
        deadline = time.monotonic() + 120
        while subprocess.run(probe, capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "never healthy"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ten_seconds_of_load_get_only_200s_and_503s_and_the_service_stays_up(server):
    from benchmarks.load import run_load, summary

    base, proc = server
    r = run_load(base, clients=4, seconds=10, body=_png(side=128), headers=AUTH)
    s = summary(r)
    assert s["other"] == 0 and s["ok"] >= 3 and s["busy"] >= 1, r["codes"]  # queue 0: 503s
    assert proc.poll() is None and httpx.get(f"{base}/healthz").status_code == 200


def _zip_of(files: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _wait_job(base, url, states=("done", "failed", "cancelled"), seconds=120):
    deadline = time.monotonic() + seconds
    while True:
        meta = httpx.get(base + url, headers=AUTH).json()
        if meta["state"] in states or time.monotonic() > deadline:
            return meta
        time.sleep(0.3)


def test_a_job_of_a_zip_and_files_runs_in_the_background_and_gives_a_zip(server):
    import zipfile

    base, _ = server
    archive = _zip_of({"a/one.png": _png("coffee", 96), "two.png": _png("rocket", 96)})
    r = httpx.post(
        f"{base}/v1/jobs", headers=AUTH, timeout=60, data={"quality": "medium"},
        files=[("files", ("set.zip", archive)), ("files", ("three.png", _png("chelsea", 96)))],
    )  # fmt: skip
    assert r.status_code == 202, r.text
    meta = _wait_job(base, r.json()["url"])
    assert meta["state"] == "done" and meta["files"] == 3, meta
    assert meta["summary"]["counts"]["written"] + meta["summary"]["counts"]["kept"] == 3
    z = zipfile.ZipFile(io.BytesIO(httpx.get(base + meta["result"], headers=AUTH).content))
    doc = json.loads(z.read("imgtune.json"))
    paths = {v["path"] for item in doc["images"].values() for v in item["variants"]}
    assert set(doc["images"]) == {"a/one.png", "two.png", "three.png"}
    for p in paths:
        Image.open(io.BytesIO(z.read(p))).load()  # every output decodes
    # a zip that reaches outside the job, and unknown jobs
    bad = _zip_of({"../evil.png": _png(side=32)})
    r = httpx.post(f"{base}/v1/jobs", headers=AUTH, files=[("files", ("x.zip", bad))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_zip"
    assert httpx.get(f"{base}/v1/jobs/{'0' * 24}", headers=AUTH).status_code == 404
    r = httpx.post(f"{base}/v1/jobs", headers=AUTH, data={"quality": "shiny"},
                   files=[("files", ("a.png", _png(side=32)))])  # fmt: skip
    assert r.status_code == 422 and "shiny" in r.json()["error"]["message"]


def test_a_job_survives_a_restart_and_a_queued_one_can_be_cancelled(tmp_path):
    port = _serve.free_port()
    data = tmp_path / "data"

    def start():
        return _serve.start("--data", str(data), port=port)[0]

    base = f"http://127.0.0.1:{port}"
    names = ["chelsea", "coffee", "rocket", "astronaut", "twins_cc0", "graphic_text"]
    archive = _zip_of({f"{n}.png": _png(n, 160) for n in names})
    proc = start()
    try:
        job = httpx.post(f"{base}/v1/jobs", files=[("files", ("s.zip", archive))]).json()
        queued = httpx.post(f"{base}/v1/jobs", files=[("files", ("q.png", _png(side=64)))]).json()
        cancelled = httpx.delete(base + queued["url"]).json()
        assert cancelled["state"] == "cancelled"  # one runner: it had not started
        while httpx.get(base + job["url"]).json()["state"] == "queued":
            time.sleep(0.1)
        proc.kill()  # mid-run, with no chance to tidy up
        proc.wait(timeout=30)
        proc = start()
        meta = _wait_job(base, job["url"])
        assert meta["state"] == "done" and meta["files"] == len(names), meta
        done = meta["summary"]["counts"]
        assert sum(done.values()) == len(names) and done["skipped"] == 0
        assert httpx.get(base + queued["url"]).json()["state"] == "cancelled"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_widths_come_back_as_json_variants_and_need_json(server):
    base, _ = server
    upload = _png(side=192)
    r = _optimize(base, upload, accept="application/json", widths="64,128,500")
    assert r.status_code == 200, r.text
    variants = r.json()["variants"]
    assert [v["width"] for v in variants] == [64, 128, 192]  # 500: the upload's own width
    for v in variants:
        got = Image.open(io.BytesIO(httpx.get(base + v["url"], headers=AUTH).content))
        assert got.size == (v["width"], v["height"]) and v["meets_target"] is True
    r = _optimize(base, upload, widths="64")
    assert r.status_code == 406 and r.json()["error"]["code"] == "not_acceptable"


def test_cors_is_off_and_the_api_description_is_open(server):
    base, _ = server
    r = httpx.options(
        f"{base}/v1/optimize",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{base}/healthz", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/optimize", "/v1/score", "/v1/jobs", "/healthz"} <= set(spec["paths"])


def test_a_request_past_the_time_limit_is_answered_504_and_keeps_its_slot():
    import asyncio

    from optimizer.service import ServiceError, _Gate

    gate = _Gate(running=1, waiting=0)
    release = threading.Event()

    async def go():
        with pytest.raises(ServiceError) as slow:
            await gate.run(lambda: release.wait(10), timeout=0.2)
        assert slow.value.status == 504 and slow.value.code == "timeout"
        # its work still runs: the slot is not given to another request meanwhile
        with pytest.raises(ServiceError) as busy:
            await gate.run(lambda: None, timeout=1)
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "2"}
        release.set()
        for _ in range(50):
            if gate.inflight == 0:
                break
            await asyncio.sleep(0.05)
        assert await gate.run(lambda: 42, timeout=1) == 42

    asyncio.run(go())


def test_two_runners_on_one_folder_run_a_job_once(tmp_path):
    # --processes: each server process has a runner over the same --data; a job resumed by
    # both is run by one (the other finds it locked), and a cancel reaches either.
    from optimizer.service_jobs import JobRunner

    src = tmp_path / "upload.png"
    src.write_bytes(_png(side=64))
    a = JobRunner(tmp_path / "jobs", device="cpu")
    meta = a.submit([("a.png", src)], {"quality": "medium"})
    b = JobRunner(tmp_path / "jobs", device="cpu")  # finds it queued: takes it too
    deadline = time.monotonic() + 120
    while a.status(meta["id"])["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert a.status(meta["id"])["state"] == "done", a.status(meta["id"])
    queued = a.submit([("b.png", src)], {"quality": "medium"})
    b.cancel(queued["id"])
    while a.status(queued["id"])["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert a.status(queued["id"])["state"] == "cancelled"
    a.stop()
    b.stop()
