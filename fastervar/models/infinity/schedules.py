"""Infinity's image schedules: which (h, w) token grid each scale step predicts, per aspect ratio
and pixel budget.

Infinity was trained on eight aspect templates (height / width >= 1) and their transposes, each a
ladder of 13 grids; a pixel budget `pn` takes the first 7, 10, 12 or 13 rungs. The grids are not
a formula, they are what the released checkpoints were trained with, so they are data here. A
transposed template is keyed by 1/ratio truncated to three decimals (0.666, not 0.667), and a
request snaps to the nearest template, as upstream does. Token grids are 16 px (the VAE stride).
"""

from __future__ import annotations

from ...errors import FastervarError

VAE_STRIDE = 16
PN_STEPS = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}

# height/width -> the 13 grids as (heights, widths)
_LADDERS: dict[float, tuple[tuple[int, ...], tuple[int, ...]]] = {
    1.000: ((1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64), (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)),
    1.250: ((1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 45, 55, 70), (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 36, 44, 56)),
    1.333: ((1, 2, 4, 8, 12, 16, 20, 24, 28, 36, 48, 60, 72), (1, 2, 3, 6, 9, 12, 15, 18, 21, 27, 36, 45, 54)),
    1.500: ((1, 2, 3, 6, 9, 15, 21, 27, 33, 39, 48, 63, 78), (1, 2, 2, 4, 6, 10, 14, 18, 22, 26, 32, 42, 52)),
    1.750: ((1, 2, 3, 7, 11, 14, 21, 28, 35, 42, 56, 70, 84), (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48)),
    2.000: ((1, 2, 4, 6, 10, 16, 22, 30, 38, 46, 60, 74, 90), (1, 2, 2, 3, 5, 8, 11, 15, 19, 23, 30, 37, 45)),
    2.500: ((1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 65, 80, 100), (1, 2, 2, 4, 6, 8, 10, 12, 16, 20, 26, 32, 40)),
    3.000: ((1, 2, 6, 9, 15, 21, 27, 36, 45, 54, 72, 90, 111), (1, 2, 2, 3, 5, 7, 9, 12, 15, 18, 24, 30, 37)),
}


def templates() -> dict[float, list[tuple[int, int]]]:
    """All 15 templates, height/width -> the 13 (h, w) grids."""
    out: dict[float, list[tuple[int, int]]] = {}
    for ratio, (hs, ws) in _LADDERS.items():
        out[ratio] = list(zip(hs, ws))
        if ratio != 1.0:
            out[int(1000 / ratio) / 1000] = list(zip(ws, hs))
    return out


def parse_aspect(text: str) -> float:
    """'H:W' (height to width, so 1:2 is a wide image) or a plain height/width number."""
    try:
        if ":" in text:
            h, w = (float(x) for x in text.split(":"))
            value = h / w
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise FastervarError(f"--aspect {text!r}: give height:width, such as 1:1 or 1:2") from None
    if not value > 0:
        raise FastervarError(f"--aspect {text!r}: height and width must be positive")
    return value


def nearest_template(h_div_w: float) -> float:
    return min(templates(), key=lambda r: abs(r - h_div_w))


def schedule(h_div_w: float, pn: str) -> list[tuple[int, int]]:
    """The (h, w) token grid of every scale step for the template nearest `h_div_w`."""
    if pn not in PN_STEPS:
        raise FastervarError(f"--pn {pn!r} is unknown; choose one of {', '.join(PN_STEPS)}")
    return templates()[nearest_template(h_div_w)][:PN_STEPS[pn]]


def image_size(h_div_w: float, pn: str) -> tuple[int, int]:
    """(height, width) in pixels of the images this schedule decodes to."""
    h, w = schedule(h_div_w, pn)[-1]
    return h * VAE_STRIDE, w * VAE_STRIDE
