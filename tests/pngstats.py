"""Pure-Python PNG decoding and pixel statistics for screenshot checks (zlib + the five scanline
filters; 8-bit grey, grey+alpha, RGB and RGBA, non-interlaced).

1. ``png_decode`` checks the signature and IHDR, joins the IDAT chunks, inflates them and undoes
   each scanline's filter (None, Sub, Up, Average, Paeth) → (width, height, channels, pixels).
2. ``png_stats`` counts distinct pixel values and the fraction of pixels that differ from the
   background (given, or the most common value).
"""
from __future__ import annotations

import zlib
from array import array
from collections import Counter

# -- PNG ---------------------------------------------------------------------------------------------
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (8-bit only)


def _add_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise (a + b) mod 256 over whole rows at once (SWAR on Python big integers)."""
    n = len(a)
    lo7, hi1 = int.from_bytes(b"\x7f" * n, "big"), int.from_bytes(b"\x80" * n, "big")
    x, y = int.from_bytes(a, "big"), int.from_bytes(b, "big")
    return (((x & lo7) + (y & lo7)) ^ ((x ^ y) & hi1)).to_bytes(n, "big")


def _unfilter(ftype: int, raw: bytes, prev: bytes, bpp: int) -> bytes:
    """Undo one scanline filter (PNG spec §9.2); ``prev`` is the previous decoded row (zeros at top)."""
    if ftype == 0:
        return raw
    if ftype == 2:
        return _add_bytes(raw, prev)
    out = bytearray(raw)
    n = len(out)
    if ftype == 1:
        for i in range(bpp, n):
            out[i] = (out[i] + out[i - bpp]) & 255
    elif ftype == 3:
        for i in range(n):
            out[i] = (out[i] + (((out[i - bpp] if i >= bpp else 0) + prev[i]) >> 1)) & 255
    elif ftype == 4:
        for i in range(n):
            if i >= bpp:
                a, c = out[i - bpp], prev[i - bpp]
            else:
                a = c = 0
            b = prev[i]
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    else:
        raise ValueError(f"PNG: bad filter type {ftype}")
    return bytes(out)


def png_decode(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, pixels) of an 8-bit grey/GA/RGB/RGBA non-interlaced PNG.

    ``pixels`` is height * width * channels bytes, rows top to bottom.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG (bad signature)")
    pos, idat, ihdr = 8, [], b""
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if len(ihdr) != 13:
        raise ValueError("PNG: missing IHDR")
    w, h = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, ctype, interlace = ihdr[8], ihdr[9], ihdr[12]
    if depth != 8 or ctype not in _CHANNELS or interlace != 0:
        raise ValueError(f"unsupported PNG: bit depth {depth}, colour type {ctype}, interlace {interlace} "
                         "(only 8-bit grey/grey+alpha/RGB/RGBA, non-interlaced)")
    ch = _CHANNELS[ctype]
    stride = w * ch
    flat = zlib.decompress(b"".join(idat))
    if len(flat) != h * (stride + 1):
        raise ValueError(f"PNG: {len(flat)} bytes of image data, expected {h * (stride + 1)}")
    rows, prev = [], bytes(stride)
    for y in range(h):
        off = y * (stride + 1)
        prev = _unfilter(flat[off], flat[off + 1:off + 1 + stride], prev, ch)
        rows.append(prev)
    return w, h, ch, b"".join(rows)


def png_stats(data: bytes, background: tuple[int, ...] | None = None) -> tuple[int, int, int, float]:
    """(width, height, distinct pixel values, fraction of pixels that differ from the background).

    The background is ``background`` (one value per channel) or else the most common pixel value.
    """
    w, h, ch, pix = png_decode(data)
    if w * h == 0:
        return w, h, 0, 0.0
    if ch == 3:  # pad RGB to RGBX so every pixel is one machine word
        padded = bytearray(w * h * 4)
        for c in range(3):
            padded[c::4] = pix[c::3]
        pix, size = bytes(padded), 4
    else:
        size = ch
    words = array({1: "B", 2: "H", 4: "I"}[size])  # "I" is 4 bytes on every platform CPython runs on
    words.frombytes(pix)  # one integer per pixel (native byte order; only equality matters)
    counts = Counter(words)
    if background is None:
        n_bg = counts.most_common(1)[0][1]
    else:
        key = bytes(background) + (b"\0" if ch == 3 else b"")
        probe = array(words.typecode)
        probe.frombytes(key)
        n_bg = counts.get(probe[0], 0)
    return w, h, len(counts), (w * h - n_bg) / (w * h)
