"""One self-contained HTML report of a tuning study: summary, bytes-quality scatter with the
feasible region and the Pareto front, optimisation history, parameter importances (Optuna's),
and per image the source and the chosen output side by side where they differ most.

Everything is inline (plotly's JavaScript once, images as data URIs): it opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["build_report", "worst_region"]

CROP = 160  # px of source shown per image, around its worst region


def worst_region(reference: np.ndarray, output: np.ndarray, tile: int = 64) -> tuple[int, int]:
    """(x, y) centre of the tile where the output's SSIM against the reference is lowest."""
    from skimage.metrics import structural_similarity

    a = reference[:, :, :3] if reference.shape[2] >= 3 else reference[:, :, :1]
    b = output[:, :, :3] if output.shape[2] >= 3 else output[:, :, :1]
    if a.shape[2] != b.shape[2]:
        a, b = a[:, :, :1], b[:, :, :1]
    h, w = a.shape[:2]
    if min(h, w) < 7:
        return w // 2, h // 2
    _, smap = structural_similarity(
        a, b, channel_axis=-1, data_range=255, full=True, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    smap = smap.mean(axis=2)
    best, where = math.inf, (w // 2, h // 2)
    for y in range(0, max(1, h - tile + 1), tile // 2):
        for x in range(0, max(1, w - tile + 1), tile // 2):
            v = float(smap[y : y + tile, x : x + tile].mean())
            if v < best:
                best, where = v, (x + min(tile, w) // 2, y + min(tile, h) // 2)
    return where


def _first_clause(target: str) -> tuple[str, float | None, bool]:
    """The plotted metric: the target's first clause (its bound draws the feasible region)."""
    from .metrics.catalog import OUTPUTS
    from .targets import parse_target

    try:
        c = parse_target(target).clauses[0]
        return c.metric, c.value, OUTPUTS[c.metric].higher_is_better
    except Exception:  # noqa: BLE001 - an unreadable target: plot the composite, no region
        return "composite", None, True


def _data_uri(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    arr = pixels if pixels.shape[2] != 1 else pixels[:, :, 0]
    Image.fromarray(arr, mode).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _crop(pixels: np.ndarray, centre: tuple[int, int], size: int = CROP) -> np.ndarray:
    h, w = pixels.shape[:2]
    x0 = min(max(0, centre[0] - size // 2), max(0, w - size))
    y0 = min(max(0, centre[1] - size // 2), max(0, h - size))
    crop = pixels[y0 : y0 + size, x0 : x0 + size]
    return np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)  # 2x, nearest: pixels visible


def _scatter(study, metric: str, threshold: float | None, higher: bool):
    import plotly.graph_objects as go

    pts = []
    for t in study.trials:
        q = (t.user_attrs.get("quality") or {}).get(metric)
        if t.value is None and not t.user_attrs.get("complete"):
            continue
        if q is None or t.values is None:
            continue
        feasible = t.user_attrs.get("violation", 1) == 0 and t.user_attrs.get("complete")
        cand = t.user_attrs.get("candidate", {})
        pts.append((t.values[0], q, bool(feasible), t.number, cand))
    fig = go.Figure()
    for feas, name, colour in ((True, "meets the target", "#1f77b4"), (False, "misses", "#d62728")):
        sel = [p for p in pts if p[2] == feas]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in sel],
                y=[p[1] for p in sel],
                mode="markers",
                name=name,
                marker={"color": colour, "size": 8, "opacity": 0.8},
                text=[
                    f"trial {p[3]}: {p[4].get('codec')} q{p[4].get('quality')}, sharpen "
                    f"{p[4].get('sharpen')}"
                    for p in sel
                ],
                hovertemplate="%{text}<br>%{x:,.0f} bytes, " + metric + " %{y:.4g}<extra></extra>",
            )
        )
    # Pareto front: fewest bytes for each level of worst quality.
    front, best_q = [], -math.inf if higher else math.inf
    for b, q, *_ in sorted((p for p in pts if p[4]), key=lambda p: p[0]):
        if (q > best_q) if higher else (q < best_q):
            front.append((b, q))
            best_q = q
    if front:
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in front],
                y=[p[1] for p in front],
                mode="lines",
                name="Pareto front",
                line={"color": "#2ca02c", "shape": "hv"},
            )
        )
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", annotation_text=f"target {metric}")
        lo, hi = (threshold, None) if higher else (None, threshold)
        ys = [p[1] for p in pts] or [threshold]
        fig.add_hrect(
            y0=lo if lo is not None else min(ys),
            y1=hi if hi is not None else max(max(ys), threshold),
            fillcolor="#1f77b4",
            opacity=0.07,
            line_width=0,
        )
    fig.update_layout(
        title="Bytes against worst-image quality, every trial",
        xaxis_title="total bytes of the set (extrapolated for trials stopped early)",
        yaxis_title=f"worst {metric}",
        height=460,
    )
    return fig


def build_report(
    study,
    *,
    preset: dict[str, Any] | None = None,
    images: list[dict[str, Any]] | None = None,
    title: str | None = None,
) -> str:
    """HTML for `study` (an Optuna study made by `imgtune tune`). `preset`: the written preset
    (summary); `images`: per image {name, reference, output} uint8 arrays for the crops."""
    import optuna.visualization as ov
    import plotly.io as pio

    spec = study.user_attrs.get("spec", {})
    target = (preset or {}).get("target", {}).get("spec") or spec.get("target", "")
    metric, threshold, higher = _first_clause(target)
    figs: list[tuple[str, Any, str | None]] = []
    figs.append(("Bytes and quality", _scatter(study, metric, threshold, higher), None))
    try:
        figs.append(("Optimisation history", ov.plot_optimization_history(study), None))
    except Exception as exc:  # noqa: BLE001 - a chart that cannot be drawn is said, not fatal
        figs.append(("Optimisation history", None, str(exc)))
    try:
        from optuna.importance import PedAnovaImportanceEvaluator

        fig = ov.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        figs.append(("Parameter importances (PED-ANOVA)", fig, None))
    except Exception as exc:  # noqa: BLE001
        figs.append(("Parameter importances", None, f"not computable: {exc}"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title or study.study_name)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left}figure{display:inline-block;margin:8px}img{image-rendering:pixelated}"
        ".chart{min-height:460px}</style></head><body>",
        f"<h1>imgtune report: {html.escape(study.study_name)}</h1>",
        "<p>Generated "
        + datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017
        + f"; {len(study.trials)} trials; target <code>{html.escape(target)}</code>.</p>",
    ]
    parts.append(_summary(preset))
    if study.user_attrs.get("set_metrics"):
        parts.append(set_metrics_html(study.user_attrs["set_metrics"]))
    first = True
    for name, fig, problem in figs:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if fig is None:
            parts.append(f"<p>{html.escape(problem or '')}</p>")
            continue
        parts.append(
            "<div class='chart'>"
            + pio.to_html(fig, full_html=False, include_plotlyjs="inline" if first else False)
            + "</div>"
        )
        first = False
    if images:
        parts.append(
            "<h2>Where each image differs most</h2><p>Source (left) and chosen output (right), "
            f"{CROP}x{CROP} px around the 64 px tile of lowest SSIM, shown at 2x.</p>"
        )
        for im in images:
            centre = worst_region(im["reference"], im["output"])
            parts.append(
                f"<h3>{html.escape(im['name'])}</h3><figure><img alt='source' src='"
                f"{_data_uri(_crop(im['reference'], centre))}'><figcaption>source"
                f"</figcaption></figure><figure><img alt='output' src='"
                f"{_data_uri(_crop(im['output'], centre))}'><figcaption>output "
                f"{html.escape(im.get('caption', ''))}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary(preset: dict[str, Any] | None) -> str:
    if not preset:
        return "<p>No feasible recipe: no preset was written.</p>"
    a = preset["achieved"]
    p = preset["params"]
    opts = ", ".join(f"{k}={v}" for k, v in (p.get("options") or {}).items())
    rows = [
        ("recipe", f"{p['codec']} quality {p['quality']} ({opts}), sharpen {p['sharpen']}"),
        (
            "bytes",
            f"{a['source_bytes']:,} -> {a['total_bytes']:,} "
            f"({100 * a['saved_bytes'] / max(a['source_bytes'], 1):.1f}% smaller)",
        ),
    ]
    if a.get("default_jpeg_bytes"):
        rows.append(("JPEG q85 default", f"{a['default_jpeg_bytes']:,} bytes"))
    per = a.get("per_image", {})
    for metric, q in a.get("quality", {}).items():
        worst_name = None
        vals = {n: v.get(metric) for n, v in per.items() if v.get(metric) is not None}
        if vals:
            from .metrics.catalog import OUTPUTS

            pick = min if OUTPUTS[metric].higher_is_better else max
            worst_name = pick(vals, key=vals.get)
        rows.append(
            (
                metric,
                f"worst {q['worst']:.4g}"
                + (f" ({html.escape(worst_name)})" if worst_name else "")
                + f", mean {q['mean']:.4g}",
            )
        )
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Summary</h2><table>{body}</table><pre>{html.escape(json.dumps(p))}</pre>"


#: what each set metric's number means, for tables
SET_METRIC_MEANINGS = {
    "fid": "Fréchet Inception distance of the two sets (0 = same feature distribution)",
    "kid": "kernel Inception distance, unbiased MMD² (0 = same distribution; mean ± std)",
}


def set_metrics_lines(found: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, value, meaning) rows of a `SetScorer.result()`: FID and/or KID as measured."""
    rows = []
    if "fid" in found.get("method", {}) or found.get("fid") is not None:
        value = "undefined" if found.get("fid") is None else f"{found['fid']:.4g}"
        rows.append(("fid", value, SET_METRIC_MEANINGS["fid"]))
    if "kid" in found.get("method", {}) or found.get("kid_mean") is not None:
        if found.get("kid_mean") is None:
            value = "undefined"
        else:
            value = f"{found['kid_mean']:.4g} ± {found['kid_std']:.2g}"
        rows.append(("kid", value, SET_METRIC_MEANINGS["kid"]))
    return rows


def set_metrics_html(found: dict[str, Any]) -> str:
    """The report's section on FID/KID of the chosen recipe (tune --set-metrics)."""
    recipe = found.get("recipe")
    head = f"<h2>Set metrics ({found.get('n', 0)} images)</h2>"
    if recipe:
        head += (
            "<p>The outputs of the recipe <code>"
            + html.escape(json.dumps(recipe))
            + "</code> against their references, as two sets.</p>"
        )
    rows = "".join(
        f"<tr><th>{html.escape(n)}</th><td>{html.escape(v)}</td><td>{html.escape(m)}</td></tr>"
        for n, v, m in set_metrics_lines(found)
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in found.get("notes", []))
    method = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
        for k, v in found.get("method", {}).items()
    )
    return (
        head
        + f"<table>{rows}</table>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + (f"<details><summary>How</summary><ul>{method}</ul></details>" if method else "")
    )


def report_images(images, cand) -> list[dict[str, Any]]:
    """Per image of a `search.ImageSet`: the reference at output size and `cand`'s decoded
    output, for the report's crops."""
    return list(decoded_pairs(images, cand))


def decoded_pairs(images, cand) -> Iterator[dict[str, Any]]:
    """Per image of a `search.ImageSet`, one at a time: {name, reference (at output size),
    output (`cand`'s encode, decoded), caption}."""
    from .codecs import CODECS, decode

    for it in images.items:
        src = it.source
        ref = it.prepared.reference  # the set resized it to its output size once, to prepare it
        _, data = images.render(it, cand)
        alpha = src.has_alpha and CODECS[cand.codec].supports_alpha
        channels = src.channels if alpha or not src.has_alpha else src.channels - 1
        yield {
            "name": src.path.name,
            "reference": ref[:, :, :channels] if channels < ref.shape[2] else ref,
            "output": decode(data, channels=channels),
            "caption": f"{cand.codec} q{cand.quality}, {len(data):,} bytes",
        }


def write_report(path: str | Path, text: str) -> Path:
    from .files import atomic_write_text

    return atomic_write_text(path, text)
