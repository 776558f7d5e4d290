"""`imgtune check`: a quality gate for CI (`api.check`, `optimizer.monitor`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated
from xml.etree import ElementTree as ET

import typer

from .. import api
from ..outcome import ExitCode
from .common import DeviceOpt, err, json_line, out


def check(
    originals: Annotated[Path, typer.Argument(help="Folder of the source images.")],
    encoded: Annotated[
        Path, typer.Argument(help="Folder of their encodes, paired by name without extension.")
    ],
    warn: Annotated[
        str | None,
        typer.Option(help="Warn where the set's bad tail misses this, e.g. 'ssimulacra2>=80'."),
    ] = None,
    fail: Annotated[
        str | None,
        typer.Option(
            help="Fail (exit 3) where the set's bad tail misses this, e.g. 'ssimulacra2>=70'."
        ),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option(help="Write a JUnit XML report (one test case per image).")
    ] = None,
    github: Annotated[
        bool,
        typer.Option(
            "--github", help="Print GitHub Actions annotations for each image below a threshold."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """A quality gate for CI: judge ENCODED against ORIGINALS by --warn and --fail.

    The set's bad tail (5th percentile of each metric, 95th for LPIPS-like ones) is judged
    against --warn and --fail, and each image alone. Exit 3 when the tail misses --fail; a
    --warn miss is reported, exit 0."""
    result = api.check(originals, encoded, warn=warn, fail=fail, device=device)
    if junit is not None:
        _junit(result, junit)
    if github:
        for p in result["pairs"]:
            if p["level"] != "ok":
                kind = "error" if p["level"] == "critical" else "warning"
                why = ", ".join(f"{k}={v:.4g}" for k, v in p["scores"].items() if k != "composite")
                out.print(
                    f"::{kind} file={p['candidate']},title=imgtune check::{p['name']} is below "
                    f"the {'fail' if kind == 'error' else 'warn'} threshold ({why})",
                    soft_wrap=True, highlight=False, markup=False,
                )  # fmt: skip
    if as_json:
        json_line(result)
    else:
        tails = ", ".join(f"{k}: tail {v:.4g}" for k, v in result["tails"].items())
        bad = [p["name"] for p in result["pairs"] if p["level"] != "ok"]
        err.print(
            f"{result['count']} images: {result['level']} ({tails})"
            + (f"; below a threshold: {', '.join(bad)}" if bad else "")
        )
        for problem in result["problems"]:
            err.print(f"[yellow]skipped:[/yellow] {problem}")
    raise typer.Exit(ExitCode.TARGET_MISSED if result["level"] == "critical" else ExitCode.OK)


def _junit(result: dict, path: Path) -> None:
    """One test case per image: a failure below --fail, a skipped-with-message below --warn."""
    from ..files import atomic_write_text

    pairs = result["pairs"]
    suite = ET.Element(
        "testsuite", name="imgtune check", tests=str(len(pairs)),
        failures=str(sum(p["level"] == "critical" for p in pairs)), errors="0",
        skipped=str(sum(p["level"] == "warning" for p in pairs)),
    )  # fmt: skip
    props = ET.SubElement(suite, "properties")  # first, as the JUnit schema has it
    ET.SubElement(props, "property", name="level", value=result["level"])
    for k, v in result["tails"].items():
        ET.SubElement(props, "property", name=f"tail {k}", value=f"{v:.6g}")
    for p in pairs:
        case = ET.SubElement(suite, "testcase", classname="imgtune.check", name=p["name"])
        scores = ", ".join(f"{k}={v:.4g}" for k, v in p["scores"].items() if not math.isnan(v))
        if p["level"] == "critical":
            ET.SubElement(case, "failure", message=f"below {result['fail']}").text = scores
        elif p["level"] == "warning":
            ET.SubElement(case, "skipped", message=f"below {result['warn']}").text = scores
        ET.SubElement(case, "system-out").text = scores
    atomic_write_text(path, ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode"))
