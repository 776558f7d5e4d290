"""Presets: `Preset.from_dict` is the one parser (every field validated, the bad one named),
`to_dict` gives back exactly the layout `imgtune tune` writes, and `build_preset` writes it."""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest

from optimizer import export
from optimizer.errors import UsageError
from optimizer.outcome import ExitCode
from optimizer.presets import (
    SCHEMA,
    Preset,
    PresetError,
    build_preset,
    load_preset,
)
from optimizer.recipe import Candidate
from optimizer.targets import Target, parse_target

#: the layout `imgtune tune` writes (made-up values)
PRESET = {
    "schema": 1,
    "params": {
        "codec": "avif",
        "quality": 64,
        "resize_filter": None,
        "sharpen": 1.1,
        "options": {"speed": 6, "subsampling": "4:4:4"},
    },
    "pillow_save_kwargs": {"quality": 64, "speed": 6, "subsampling": "4:4:4"},
    "max_size": None,
    "background": None,
    "target": {"spec": "ssimulacra2>=78", "aggregate": "min"},
    "metrics": {
        "metrics": [
            {
                "name": "ssimulacra2",
                "version": "1",
                "alpha_backgrounds": [[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]],
            }
        ],
        "composite": {"ssimulacra2": 1.0},
        "alpha_backgrounds": [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
    },
    "achieved": {
        "quality": {"ssimulacra2": {"worst": 78.4103012084961, "mean": 83.19875335693359}},
        "total_bytes": 98311,
        "source_bytes": 1204117,
        "saved_bytes": 1105806,
        "per_image": {
            "harbour.png": {"bytes": 61022, "ssimulacra2": 78.4103012084961, "composite": 0.784},
            "logo.png": {"bytes": 37289, "ssimulacra2": 87.98720550537109, "composite": None},
        },
        "default_jpeg_bytes": 171204,
    },
    "images": [
        {"name": "harbour.png", "sha256": "3b1f" * 16},
        {"name": "logo.png", "sha256": "a07c" * 16},
    ],
    "study": {
        "name": "shots-1c2d3e4f",
        "storage": "sqlite:///studies/shots-1c2d3e4f.db",
        "trials": 40,
    },
    "versions": {
        "python": "3.12.3",
        "imgtune": "0.1.0",
        "pillow": "11.1.0",
        "optuna": "4.2.1",
        "torch": "2.6.0",
        "lpips": "0.1.4",
        "numpy": "2.2.3",
    },
}

#: a JPEG recipe fitted inside a box and flattened onto a background
PRESET_BOX = {
    **copy.deepcopy(PRESET),
    "params": {
        "codec": "jpeg",
        "quality": 81,
        "resize_filter": "hamming",
        "sharpen": 0.8,
        "options": {"optimize": True, "progressive": False, "subsampling": "4:2:0"},
    },
    "pillow_save_kwargs": {
        "quality": 81,
        "optimize": True,
        "progressive": False,
        "subsampling": "4:2:0",
    },
    "max_size": [1600, None],
    "background": [250, 248, 240],
    "target": {"spec": "lpips<=0.04,ssim_p5>=0.9", "aggregate": "p10"},
}

MINIMAL = {
    "schema": 1,
    "params": {"codec": "webp", "quality": 77},
    "target": {"spec": "ssim>=0.95"},
}


def _keys(d):
    """Every key path of `d`, in order, nested dicts included."""
    out = []
    for k, v in d.items():
        out.append(k)
        if isinstance(v, dict):
            out += [f"{k}.{sub}" for sub in _keys(v)]
    return out


@pytest.mark.parametrize("data", [PRESET, PRESET_BOX], ids=["avif", "jpeg-box"])
def test_round_trip_keeps_values_and_key_order(data):
    p = Preset.from_dict(copy.deepcopy(data))
    assert p.to_dict() == data
    assert _keys(p.to_dict()) == _keys(data)
    assert list(p.to_dict()["achieved"])[-1] == "default_jpeg_bytes"
    assert Preset.from_dict(p.to_dict()) == p


def test_fields_are_parsed():
    p = Preset.from_dict(copy.deepcopy(PRESET_BOX), source="box.json")
    assert p.candidate == Candidate.make(
        "jpeg", 81, resize_filter="hamming", sharpen=0.8, progressive=False
    )
    assert p.max_size == (1600, None) and p.background == (250, 248, 240)
    assert p.target == "lpips<=0.04,ssim_p5>=0.9" and p.aggregate == "p10"
    assert isinstance(p.parsed_target, Target)
    assert p.parsed_target == parse_target("lpips<=0.04,ssim_p5>=0.9")
    assert p.schema == SCHEMA and p.images[1]["name"] == "logo.png"


def test_the_preset_does_not_share_the_callers_dicts():
    data = copy.deepcopy(PRESET)
    p = Preset.from_dict(data)
    data["achieved"]["total_bytes"] = 1
    p.to_dict()["metrics"]["composite"]["ssimulacra2"] = 0.5
    assert p.achieved["total_bytes"] == 98311
    assert p.to_dict() == PRESET
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.target = "ssim>=0.5"  # type: ignore[misc]


@pytest.mark.parametrize("data", [PRESET, PRESET_BOX], ids=["avif", "jpeg-box"])
def test_save_then_load(data, tmp_path):
    path = tmp_path / "sub.preset.json"
    p = Preset.from_dict(copy.deepcopy(data))
    assert p.save(path) == path
    assert path.read_text() == json.dumps(data, indent=2) + "\n"
    assert load_preset(path) == p
    assert load_preset(str(path)) == p
    assert [f.name for f in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_bad_preset_is_never_saved(tmp_path):
    with pytest.raises(PresetError, match=r"c\.json: params\.quality: "):
        Preset.from_dict({**PRESET, "params": {"codec": "avif", "quality": 101}}, source="c.json")
    assert Preset.from_dict(PRESET).save(tmp_path / "a.json").read_text() == (
        json.dumps(PRESET, indent=2) + "\n"
    )


def _set(path: str, value):
    """A copy of PRESET with the field at dotted `path` set to `value` (deleted for DELETE)."""

    def make():
        d = copy.deepcopy(PRESET)
        *parents, last = path.split(".")
        node = d
        for k in parents:
            node = node[k]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        return d

    return make


DELETE = object()
BROKEN = [  # (id, broken preset, text the message must hold after "broken.json: ")
    ("schema-2", _set("schema", 2), "preset schema 2; this imgtune reads 1"),
    ("schema-bool", _set("schema", True), "preset schema True"),
    ("schema-missing", _set("schema", DELETE), "schema: missing"),
    ("params-missing", _set("params", DELETE), "params: missing"),
    ("params-list", _set("params", [64]), "params: "),
    ("params-unknown-field", _set("params.qualty", 60), "params: unknown recipe field(s) qualty"),
    ("codec-unknown", _set("params.codec", "gif"), "params.codec: unknown codec 'gif'"),
    ("codec-number", _set("params.codec", 3), "params.codec: must be a string"),
    ("quality-high", _set("params.quality", 101), "params.quality: avif quality must be"),
    ("quality-bool", _set("params.quality", True), "params.quality: "),
    ("quality-str", _set("params.quality", "64"), "params.quality: "),
    ("quality-float", _set("params.quality", 64.0), "params.quality: "),
    ("option-unknown", _set("params.options.turbo", 1), "params.options.turbo: unknown avif"),
    ("option-range", _set("params.options.speed", 11), "params.options.speed: "),
    ("option-choice", _set("params.options.subsampling", "4:1:1"), "params.options.subsampling"),
    ("options-list", _set("params.options", ["speed"]), "params.options: "),
    ("filter-unknown", _set("params.resize_filter", "cubic"), "params.resize_filter: unknown"),
    ("filter-number", _set("params.resize_filter", 3), "params.resize_filter: must be"),
    ("sharpen-high", _set("params.sharpen", 2.5), "params.sharpen: sharpen must be"),
    ("sharpen-str", _set("params.sharpen", "1.1"), "params.sharpen: "),
    ("target-missing", _set("target", DELETE), "target: missing"),
    ("target-string", _set("target", "ssim>=0.9"), "target: must be a JSON object"),
    ("target-extra", _set("target.metric", "ssim"), "target: unknown field(s) 'metric'"),
    ("spec-missing", _set("target.spec", DELETE), "target.spec: must be a string"),
    ("spec-bad", _set("target.spec", "ssimulacra2=>78"), "target.spec: bad target clause"),
    ("spec-metric", _set("target.spec", "sharpness>=3"), "target.spec: unknown metric"),
    ("spec-wrong-way", _set("target.spec", "lpips>=0.05"), "target.spec: target clause 'lpips"),
    ("aggregate-word", _set("target.aggregate", "median"), "target.aggregate: "),
    ("aggregate-p100", _set("target.aggregate", "p100"), "target.aggregate: "),
    ("aggregate-p0", _set("target.aggregate", "p0"), "target.aggregate: "),
    ("max-size-zero", _set("max_size", [0, 100]), "max_size: "),
    ("max-size-nulls", _set("max_size", [None, None]), "max_size: "),
    ("max-size-one", _set("max_size", [100]), "max_size: "),
    ("max-size-str", _set("max_size", "800x600"), "max_size: "),
    ("max-size-float", _set("max_size", [800.0, 600]), "max_size: "),
    ("max-size-bool", _set("max_size", [True, 600]), "max_size: "),
    ("background-256", _set("background", [256, 0, 0]), "background: "),
    ("background-two", _set("background", [0, 0]), "background: "),
    ("background-hex", _set("background", "#ffffff"), "background: "),
    ("background-bool", _set("background", [0, 0, True]), "background: "),
    ("kwargs-mismatch", _set("pillow_save_kwargs.quality", 50), "pillow_save_kwargs: "),
    ("kwargs-list", _set("pillow_save_kwargs", []), "pillow_save_kwargs: must be"),
    ("metrics-list", _set("metrics", []), "metrics: must be a JSON object"),
    ("achieved-null", _set("achieved", None), "achieved: must be a JSON object"),
    ("images-dict", _set("images", {"a.png": "x"}), "images: "),
    ("images-number", _set("images", [{"name": "a.png", "sha256": 5}]), "images: "),
    ("study-list", _set("study", ["s"]), "study: must be a JSON object"),
    ("versions-number", _set("versions.python", 3.12), "versions: "),
    ("unknown-field", _set("max-size", [800, 600]), "unknown field(s) 'max-size'"),
]


@pytest.mark.parametrize("make,needle", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_every_bad_field_is_named(make, needle):
    data = make()
    with pytest.raises(PresetError) as info:
        Preset.from_dict(data, source="broken.json")
    msg = str(info.value)
    assert msg.startswith("broken.json: "), msg
    assert needle in msg, msg
    assert isinstance(info.value, UsageError) and info.value.exit_code == ExitCode.USAGE
    # a dict handed to export gets the same error, with the default source
    with pytest.raises(PresetError, match=r"^preset: "):
        export.render(make(), "json")


def test_the_broken_variants_differ_from_a_good_preset_in_one_field_only():
    """Each broken variant must fail for its own field, not for an accident of the fixture."""
    Preset.from_dict(copy.deepcopy(PRESET))  # the fixture itself is valid
    for name, make, _ in BROKEN:
        broken = make()
        changed = [
            k
            for k in set(PRESET) | set(broken)
            if json.dumps(PRESET.get(k, "<absent>")) != json.dumps(broken.get(k, "<absent>"))
        ]
        assert len(changed) == 1, (name, changed)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("missing.json", None, "cannot read"),
        ("text.json", "schema = 1\n", "not JSON"),
        ("list.json", "[1, 2]", "must be a JSON object"),
        ("empty.json", "", "not JSON"),
        ("binary.json", b"\xff\xfe\x00", "not UTF-8"),
        ("v2.json", json.dumps({**PRESET, "schema": 2}), "preset schema 2"),
    ],
)
def test_load_preset_names_the_file(name, content, reason, tmp_path):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert reason in str(info.value)


def test_load_preset_of_a_folder_is_a_preset_error(tmp_path):
    with pytest.raises(PresetError, match="cannot read"):
        load_preset(tmp_path)


def test_a_minimal_hand_written_preset_loads_and_renders(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(MINIMAL))
    p = load_preset(path)
    assert p.candidate == Candidate.make("webp", 77)
    assert p.aggregate == "min" and p.max_size is None and p.background is None
    assert p.pillow_save_kwargs == {"quality": 77, "method": 4}
    assert (p.metrics, p.achieved, p.images, p.study, p.versions) == ({}, {}, [], {}, {})
    text = export.render(p, "cwebp", input="a.png", output="a.webp")
    assert "cwebp -q 77 -m 4 -metadata none a.png -o a.webp" in text
    assert "target ssim>=0.95" in text
    assert export.render(MINIMAL, "cwebp") == export.render(p, "cwebp")
    # written back in full, in the usual order
    assert list(p.to_dict()) == list(PRESET)
    assert Preset.from_dict(p.to_dict()) == p


def test_render_takes_a_preset_or_its_dict():
    p = Preset.from_dict(PRESET_BOX)
    for fmt in export.FORMATS:
        if fmt in ("cwebp", "avifenc"):
            with pytest.raises(UsageError, match="this preset's codec is jpeg"):
                export.render(p, fmt)
            continue
        assert export.render(p, fmt, input="i.png") == export.render(
            copy.deepcopy(PRESET_BOX), fmt, input="i.png"
        )
    assert json.loads(export.render(p, "json"))["max_size"] == [1600, None]
    with pytest.raises(UsageError, match="unknown export format"):
        export.render(p, "gimp")


# build_preset: a TuneResult and ImageSet stand-in with just what it reads
def _tuned(feasible: bool = True):
    cand = Candidate.make("webp", 70, resize_filter="bicubic", sharpen=1.2, method=5)
    ev = SimpleNamespace(
        candidate=cand,
        feasible=feasible,
        total_bytes=3000,
        per_image={
            "b.png": {"bytes": 1000, "ssimulacra2": 81.5, "lpips": 0.02, "composite": float("inf")},
            "a.png": {"bytes": 2000, "ssimulacra2": 85.25, "lpips": 0.04, "composite": 0.9},
        },
    )
    result = SimpleNamespace(best=ev, study_name="s-1", storage=None, trials=12)
    images = SimpleNamespace(
        items=[SimpleNamespace(size=(300, 200)), SimpleNamespace(size=(250, 320))],
        resized=True,
        widths=(),
        background=(1, 2, 3),
        suite=SimpleNamespace(describe=lambda: {"metrics": [], "composite": {"lpips": 1.0}}),
        source_bytes=50000,
        fingerprint=lambda: [{"name": "a.png", "sha256": "aa"}, {"name": "b.png", "sha256": "bb"}],
    )
    return result, images


def test_build_preset_writes_the_known_layout(tmp_path):
    result, images = _tuned()
    target = parse_target("ssimulacra2>=80,lpips<=0.05")
    p = build_preset(result, images, target, aggregate="p10", default_jpeg_bytes=9999)
    d = p.to_dict()
    versions = d.pop("versions")
    assert versions["python"] and set(versions) >= {"imgtune", "pillow", "numpy"}
    assert d == {
        "schema": 1,
        "params": {
            "codec": "webp",
            "quality": 70,
            "resize_filter": "bicubic",
            "sharpen": 1.2,
            "options": {"method": 5},
        },
        "pillow_save_kwargs": {"quality": 70, "method": 5},
        "max_size": [300, 320],
        "background": [1, 2, 3],
        "target": {"spec": "ssimulacra2>=80,lpips<=0.05", "aggregate": "p10"},
        "metrics": {"metrics": [], "composite": {"lpips": 1.0}},
        "achieved": {
            "quality": {
                "ssimulacra2": {"worst": 81.5, "mean": 83.375},
                "lpips": {"worst": 0.04, "mean": 0.03},
            },
            "total_bytes": 3000,
            "source_bytes": 50000,
            "saved_bytes": 47000,
            "per_image": {
                "b.png": {"bytes": 1000, "ssimulacra2": 81.5, "lpips": 0.02, "composite": None},
                "a.png": {"bytes": 2000, "ssimulacra2": 85.25, "lpips": 0.04, "composite": 0.9},
            },
            "default_jpeg_bytes": 9999,
        },
        "images": [{"name": "a.png", "sha256": "aa"}, {"name": "b.png", "sha256": "bb"}],
        "study": {"name": "s-1", "storage": None, "trials": 12},
    }
    assert list(p.to_dict()) == list(PRESET)
    assert list(d["achieved"]) == [
        "quality",
        "total_bytes",
        "source_bytes",
        "saved_bytes",
        "per_image",
        "default_jpeg_bytes",
    ]
    # what it builds, it reads back
    assert load_preset(p.save(tmp_path / "p.json")) == p
    without = build_preset(result, images, target, aggregate="p10").to_dict()["achieved"]
    assert "default_jpeg_bytes" not in without


def test_build_preset_refuses_a_missed_target():
    result, images = _tuned(feasible=False)
    with pytest.raises(ValueError, match="no feasible recipe"):
        build_preset(result, images, parse_target("ssim>=0.9"), aggregate="min")
    result.best = None
    with pytest.raises(ValueError, match="no feasible recipe"):
        build_preset(result, images, parse_target("ssim>=0.9"), aggregate="min")
