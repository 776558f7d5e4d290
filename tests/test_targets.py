"""Target grammar: clauses, directions, and errors that name the bad token."""

from __future__ import annotations

import pytest

from optimizer.targets import TargetError, parse_target


def test_parse_and_check():
    t = parse_target("composite>=0.9, lpips<=0.05,ssim_p5>=0.85")
    assert [str(c) for c in t.clauses] == ["composite>=0.9", "lpips<=0.05", "ssim_p5>=0.85"]
    good = {"composite": 0.91, "lpips": 0.05, "ssim_p5": 0.9}
    assert t.met(good)
    bad = dict(good, lpips=0.06)
    assert [str(c) for c in t.failures(bad)] == ["lpips<=0.05"]
    assert t.failures({"composite": 1.0}) == list(t.clauses[1:])  # absent metric = miss
    assert parse_target("psnr>=40").met({"psnr": float("inf")})
    assert not parse_target("psnr>=40").met({"psnr": float("nan")})


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("composite>0.9", "composite>0.9"),
        ("ssim>=high", "ssim>=high"),
        ("ssim>=0.9,,lpips<=0.1", ""),
        ("sharpness>=3", "sharpness"),
    ],
)
def test_malformed_names_the_token(text, token):
    with pytest.raises(TargetError) as e:
        parse_target(text)
    assert repr(token) in str(e.value) or f"'{token}'" in str(e.value)


def test_wrong_direction_is_explained():
    with pytest.raises(TargetError, match=r"lower is better, so write lpips<=0.1"):
        parse_target("lpips>=0.1")


def test_empty():
    with pytest.raises(TargetError, match="empty"):
        parse_target("  ")
