"""Draw docs/figures/filters-*.png: each spatial rule on a kept, a dropped and an ambiguous case.

The verdicts printed on the pictures are computed by the rules themselves, so the figures
stay true to the code: run `python docs/figures/make_filter_figures.py` after changing a rule.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from synthvg.models.spatial_rules import Context, Geom, check
from synthvg.render import load_font
from synthvg.schemas import Box
from synthvg.schemas.config import SpatialRulesConfig

W, H = 200, 100
OUT = Path(__file__).parent
CASES = {
    "left of": [((10, 40, 40, 70), (140, 30, 180, 80)), ((140, 30, 180, 80), (10, 40, 40, 70)), ((90, 20, 106, 80), (94, 10, 110, 90))],
    "above": [((80, 2, 110, 25), (70, 60, 130, 95)), ((70, 60, 130, 95), (80, 2, 110, 25)), ((60, 30, 90, 70), (100, 28, 130, 72))],
    "on": [((80, 20, 110, 44), (40, 40, 160, 90)), ((80, 70, 110, 98), (40, 10, 160, 50)), ((80, 0, 110, 10), (40, 40, 160, 90))],
    "inside": [((80, 40, 100, 60), (40, 10, 160, 90)), ((10, 10, 40, 40), (120, 40, 180, 90)), ((20, 30, 80, 70), (60, 10, 160, 90))],
    "next to": [((30, 30, 80, 80), (82, 30, 130, 80)), ((5, 5, 30, 30), (170, 70, 195, 95)), ((30, 30, 70, 70), (95, 30, 135, 70))],
    "near": [((30, 30, 80, 80), (88, 30, 130, 80)), ((5, 5, 30, 30), (170, 70, 195, 95)), ((10, 30, 50, 70), (80, 30, 120, 70))],
}
COLORS = {"kept": (20, 140, 60), "dropped": (200, 40, 40), "unverified": (140, 140, 140)}
VERDICT = {"keep": "kept", "drop": "dropped", "abstain": "unverified"}


def geom(b) -> Geom:
    box = Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3])
    return Geom(box, box.area)


def panel(predicate: str, s, o) -> Image.Image:
    result = check(predicate, geom(s), geom(o), Context(W, H, SpatialRulesConfig()))
    verdict = VERDICT[result.decision]
    img = Image.new("RGB", (W, H + 34), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, W - 1, H - 1], outline=(200, 200, 200))
    d.rectangle(o, outline=(30, 90, 230), width=3)
    d.rectangle(s, outline=(230, 30, 30), width=3)
    d.text((s[0] + 3, s[1] + 2), "S", fill=(230, 30, 30), font=load_font(12))
    d.text((o[0] + 3, o[1] + 2), "O", fill=(30, 90, 230), font=load_font(12))
    d.text((4, H + 2), f"S {predicate} O: {verdict}", fill=COLORS[verdict], font=load_font(12))
    reason = result.reason if len(result.reason) <= 38 else result.reason[:37] + "…"
    d.text((4, H + 18), reason, fill=(60, 60, 60), font=load_font(10))
    return img


def main() -> None:
    for predicate, cases in CASES.items():
        panels = [panel(predicate, s, o) for s, o in cases]
        sheet = Image.new("RGB", (len(panels) * (W + 10), H + 34), "white")
        for i, p in enumerate(panels):
            sheet.paste(p, (i * (W + 10), 0))
        sheet.save(OUT / f"filters-{predicate.replace(' ', '-')}.png")


if __name__ == "__main__":
    main()
