"""Generate sample_images/graphic_text.png: flat colour, hard edges and small text.

Photos hide ringing and colour bleeding; this is the kind of web graphic (a banner, a chart)
where chroma subsampling and low quality show first. Made by code so its licence is ours (CC0).
Run: python scripts/make_sample_graphic.py
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parent.parent / "sample_images" / "graphic_text.png"


def make() -> Image.Image:
    im = Image.new("RGB", (480, 320), (246, 246, 240))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 479, 64), fill=(20, 60, 140))
    d.text(
        (16, 14), "imgtune sample graphic", fill=(255, 255, 255), font=ImageFont.load_default(28)
    )
    small = ImageFont.load_default(13)
    for i, line in enumerate(
        [
            "Flat colour, sharp edges and small text are where",
            "JPEG's 4:2:0 chroma subsampling and ringing show first.",
            "Red on blue: the hardest case for subsampled chroma.",
        ]
    ):
        d.text((16, 80 + 20 * i), line, fill=(30, 30, 30), font=small)
    # A small bar chart in saturated colours.
    colours = [(220, 40, 40), (40, 160, 60), (240, 180, 0), (120, 40, 200), (0, 150, 200)]
    for i, (h, c) in enumerate(zip([120, 80, 150, 60, 100], colours, strict=True)):
        x0 = 40 + i * 56
        d.rectangle((x0, 300 - h, x0 + 40, 300), fill=c)
    d.line((30, 300, 330, 300), fill=(0, 0, 0), width=2)
    d.rectangle((350, 170, 460, 300), fill=(20, 40, 200))
    d.text((362, 220), "RED", fill=(230, 20, 20), font=ImageFont.load_default(30))
    d.ellipse((380, 90, 440, 150), outline=(200, 0, 90), width=4)
    return im


if __name__ == "__main__":
    make().save(OUT, optimize=True)
    print(f"wrote {OUT}")
