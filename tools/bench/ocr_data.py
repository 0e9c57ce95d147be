"""Synthetic OCR inputs for the benchmarks: rendered text lines and document pages, CTC decoding.

Nothing is downloaded. Text is rendered with PIL from a word list in the fonts the machine has
(DejaVu via fontconfig when present, PIL's built-in font otherwise), black-ish ink on a light
background, then preprocessed the way `rapidocr_onnxruntime` preprocesses (x / 255 - 0.5) / 0.5:

  text_lines(n, seed)  -> (list of 1x3x48x320 float32 arrays, list of ground-truth strings)
                          resized to height 48 and right-padded with zeros, as rapidocr's
                          `TextRecognizer.resize_norm_img` does
  pages(n, seed)       -> list of 1x3x640x640 float32 arrays: blocks of text lines at a few sizes
  load_characters(path)-> the CTC alphabet stored in the PP-OCR rec model's metadata ('character'),
                          with 'blank' first and ' ' last (rapidocr's CTCLabelDecode)
  ctc_greedy_decode(probs, chars) -> strings (argmax, merge repeats, drop blanks)
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

__all__ = ["text_lines", "pages", "load_characters", "ctc_greedy_decode", "fonts", "WORDS"]

WORDS = (
    "invoice total amount due date account number order shipping address customer service "
    "payment received balance tax subtotal discount quantity price item description reference "
    "station platform train departure arrival gate terminal ticket valid until monday tuesday "
    "wednesday thursday friday saturday sunday january march april june august october december "
    "open closed exit entrance parking level floor room office library museum hospital pharmacy "
    "street avenue road north south east west central market bakery coffee fresh bread milk "
    "warning caution danger keep door clear push pull emergency only staff private public "
    "welcome thank you please call email phone fax website online store sale new limited edition "
    "chapter section page figure table summary results method data model report annual review "
    "London Paris Berlin Madrid Tokyo Boston Chicago Sydney Toronto Dublin Oslo Vienna Prague "
    "Alice Robert Maria James Chen Fatima Lucas Olivia Noah Emma Smith Garcia Brown Wilson"
).split()


def fonts() -> list[str]:
    """TrueType fonts to render with: a few DejaVu faces when installed (sorted, deterministic)."""
    wanted = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
              "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf")
    found = {Path(p).name: p for p in glob.glob("/usr/share/fonts/**/*.ttf", recursive=True)}
    return [found[w] for w in wanted if w in found]


def _font(path: str | None, size: int):
    from PIL import ImageFont

    if path is None:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            return ImageFont.load_default()
    return ImageFont.truetype(path, size)


def _phrase(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 5))
    words = [str(rng.choice(WORDS)) for _ in range(n)]
    if rng.random() < 0.35:  # numbers, amounts, codes
        words.insert(int(rng.integers(0, n + 1)), rng.choice([
            str(int(rng.integers(1, 999))), f"{rng.integers(1, 9999)}.{rng.integers(0, 99):02d}",
            f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/20{rng.integers(10, 30)}",
            f"No.{rng.integers(100, 99999)}"]))
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    return " ".join(words)


def _normalize(img: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 in [-1, 1] (rapidocr: /255, -0.5, /0.5)."""
    return ((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def text_lines(n: int, seed: int, height: int = 48, width: int = 320, max_tries: int = 20
               ) -> tuple[list[np.ndarray], list[str]]:
    """`n` single text lines as recognition inputs 1x3x48x320 and their ground-truth text."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    faces = fonts() or [None]
    feeds, texts = [], []
    while len(feeds) < n:
        for _ in range(max_tries):  # a phrase short enough to fit 320 px at height 48
            text = _phrase(rng)
            font = _font(faces[int(rng.integers(len(faces)))], int(rng.integers(26, 40)))
            left, top, right, bottom = font.getbbox(text)
            pad = int(rng.integers(4, 12))
            w, h = right - left + 2 * pad, bottom - top + 2 * pad
            if w / h * height <= width:
                break
        bg = int(rng.integers(205, 256))
        ink = int(rng.integers(0, 60))
        img = Image.new("RGB", (w, h), (bg, bg, max(0, bg - int(rng.integers(0, 20)))))
        ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=(ink, ink, ink), font=font)
        new_w = min(width, int(np.ceil(height * w / h)))
        img = img.resize((new_w, height), Image.BILINEAR)
        x = np.zeros((3, height, width), np.float32)  # rapidocr pads with 0 after normalising
        x[:, :, :new_w] = _normalize(np.asarray(img))
        feeds.append(x[None])
        texts.append(text)
    return feeds, texts


def pages(n: int, seed: int, size: int = 640) -> list[np.ndarray]:
    """`n` document-like pages (text blocks at a few sizes, some dark rules) as 1x3xSxS inputs."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    faces = fonts() or [None]
    out = []
    for _ in range(n):
        bg = int(rng.integers(215, 256))
        img = Image.new("RGB", (size, size), (bg, bg, bg))
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(10, 40))
        while y < size - 30:
            font_size = int(rng.choice([14, 18, 22, 28, 36]))
            font = _font(faces[int(rng.integers(len(faces)))], font_size)
            x = int(rng.integers(10, 120))
            ink = int(rng.integers(0, 70))
            text = " ".join(_phrase(rng) for _ in range(int(rng.integers(1, 4))))
            draw.text((x, y), text, fill=(ink, ink, ink), font=font)
            if rng.random() < 0.1:
                draw.line((x, y + font_size + 6, size - 20, y + font_size + 6), fill=(60, 60, 60), width=1)
            y += int(font_size * rng.uniform(1.3, 2.6))
        out.append(_normalize(np.asarray(img))[None])
    return out


def load_characters(rec_model_path: str | Path) -> list[str]:
    """The rec model's CTC alphabet: rapidocr reads metadata 'character' and adds blank / space."""
    import onnx

    model = onnx.load(str(rec_model_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise RuntimeError(f"{rec_model_path} has no 'character' metadata (is it the rapidocr PP-OCR rec model?)")
    return ["blank", *meta["character"].splitlines(), " "]


def ctc_greedy_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """[batch, time, classes] -> strings: argmax per step, merge repeats, drop the blank (index 0)."""
    idx = np.asarray(probs).argmax(axis=2)
    out = []
    for row in idx:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(chars[i] for i in row[keep]))
    return out
