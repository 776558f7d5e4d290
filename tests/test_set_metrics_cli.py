"""FID/KID and DISTS through the commands: `imgtune score DIR DIR --set-metrics fid,kid`,
`tune --set-metrics ... --report`, `--metrics dists`, `--composite documents`, and exit 4
naming the missing checkpoint. Networks are randomly initialised (tests only), saved under the
real file names in one `--weights` folder (`all_weights_dir`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from optimizer import api
from optimizer.cli import app
from optimizer.metrics.set_metrics import SetScorer

from .conftest import SAMPLES

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Five small originals and their JPEG q20 versions (different sizes, one grey)."""
    root = tmp_path_factory.mktemp("sets")
    ref, enc = root / "ref", root / "enc"
    ref.mkdir()
    enc.mkdir()
    for name in ("coffee", "chelsea", "rocket", "astronaut", "tiger_grayscale_cc0"):
        im = Image.open(SAMPLES / f"{name}.png")
        im.thumbnail((120, 120))
        im.save(ref / f"{name}.png")
        im.save(enc / f"{name}.jpg", quality=20)
    return ref, enc


def _summary(output: str) -> dict:
    lines = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
    return next(x for x in lines if x.get("type") == "summary")


def test_score_set_metrics(folders, all_weights_dir):
    ref, enc = folders
    r = runner.invoke(
        app,
        ["score", str(ref), str(enc), "--metrics", "psnr", "--set-metrics", "fid,kid",
         "--weights", str(all_weights_dir), "--device", "cpu", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    found = _summary(r.stdout)["set_metrics"]
    assert found["n"] == 5
    assert np.isfinite(found["fid"]) and found["fid"] > 0
    assert np.isfinite(found["kid_mean"]) and found["kid_subset_size"] == 5
    assert any("2048" in n and "read KID" in n for n in found["notes"])
    assert "pt_inception-2015-12-05-6726825d.pth" in found["method"]["features"]
    # The same numbers as the scorer given the decoded pairs directly.
    scorer = SetScorer("fid,kid", device="cpu", weights_dir=all_weights_dir)
    for p in sorted(ref.iterdir()):
        a = np.asarray(Image.open(p).convert("RGB"))
        b = np.asarray(Image.open(enc / f"{p.stem}.jpg").convert("RGB"))
        scorer.add(a, b)
    direct = scorer.result()
    assert found["fid"] == pytest.approx(direct["fid"], rel=1e-6)
    assert found["kid_mean"] == pytest.approx(direct["kid_mean"], rel=1e-6)


def test_score_set_metrics_table(folders, all_weights_dir):
    ref, enc = folders
    r = runner.invoke(
        app,
        ["score", str(ref), str(enc), "--metrics", "psnr", "--set-metrics", "kid",
         "--weights", str(all_weights_dir), "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "set metrics, 5 pairs" in r.stdout and "kid" in r.stdout
    assert "fewer than the 1000 asked for" in r.stdout.replace("\n", " ")


def test_set_metrics_without_weights_exit_4(folders, tmp_path, monkeypatch):
    ref, enc = folders
    empty = tmp_path / "weights"
    empty.mkdir()
    r = runner.invoke(
        app,
        ["score", str(ref), str(enc), "--metrics", "psnr", "--set-metrics", "fid,kid",
         "--weights", str(empty)],
    )  # fmt: skip
    assert r.exit_code == 4, r.output
    assert "pt_inception-2015-12-05-6726825d.pth" in r.output and "--set-metrics" in r.output
    # No folder given: the torch cache, then a download, which fails here.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.delenv("IMGTUNE_WEIGHTS", raising=False)
    r = runner.invoke(
        app, ["score", str(ref), str(enc), "--metrics", "psnr", "--set-metrics", "kid"]
    )
    assert r.exit_code == 4, r.output
    assert "network unreachable" in r.output and "pytorch-fid's Inception" in r.output


def test_set_metrics_need_folders_and_known_names(folders, all_weights_dir):
    ref, enc = folders
    r = runner.invoke(
        app,
        ["score", str(ref / "coffee.png"), str(enc / "coffee.jpg"), "--metrics", "psnr",
         "--set-metrics", "fid"],
    )  # fmt: skip
    assert r.exit_code == 2 and "two folders" in r.output
    with pytest.raises(api.UsageError, match="choose from fid, kid"):
        api.build_set_scorer("fid,is", weights=all_weights_dir)


def test_dists_and_documents_composite(folders, all_weights_dir, tmp_path):
    ref, enc = folders
    w = ["--weights", str(all_weights_dir), "--device", "cpu"]
    a, b = str(ref / "coffee.png"), str(enc / "coffee.jpg")
    r = runner.invoke(app, ["score", a, b, "--metrics", "dists", *w, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert 0 < d["dists"] < 1 and d["composite_weights"] == {"dists": 1.0}
    r = runner.invoke(app, ["score", a, b, "--metrics", "ssim", "--composite", "documents", *w])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    for name in ("lpips", "dists", "psnr"):
        assert f"│ {name} " in r.stdout, name
    assert "FID is a set metric, renormalised away per image" in text
    r = runner.invoke(app, ["score", a, b, "--target", "dists<=0.5", *w])
    assert r.exit_code == 0 and "meets" in r.stdout
    empty = tmp_path / "none"
    empty.mkdir()
    r = runner.invoke(app, ["score", a, b, "--metrics", "dists", "--weights", str(empty)])
    assert r.exit_code == 4 and "vgg16-397923af.pth" in r.output


def test_tune_reports_set_metrics_of_the_chosen_recipe(folders, all_weights_dir, tmp_path):
    ref, _ = folders
    studies = tmp_path / "studies"
    r = runner.invoke(
        app,
        ["tune", str(ref), "--target", "ssim>=0.9", "--codecs", "webp", "--trials", "2",
         "--seed", "1", "--set-metrics", "fid,kid", "--weights", str(all_weights_dir),
         "--device", "cpu", "--report", str(tmp_path / "r.html"), "--json", "--no-learn"],
        env={"IMGTUNE_STUDIES": str(studies)},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.splitlines()[-1])
    found = summary["set_metrics"]
    assert found["n"] == 5 and found["recipe"] == summary["params"]
    assert np.isfinite(found["fid"]) and np.isfinite(found["kid_mean"])
    html = (tmp_path / "r.html").read_text()
    assert "Set metrics (5 images)" in html and f"{found['fid']:.4g}" in html
    # `imgtune report` regenerates it from the study, set metrics included.
    r2 = runner.invoke(
        app,
        ["report", summary["study"], "--out", str(tmp_path / "again.html")],
        env={"IMGTUNE_STUDIES": str(studies)},
    )
    assert r2.exit_code == 0, r2.output
    assert "Set metrics (5 images)" in (tmp_path / "again.html").read_text()
