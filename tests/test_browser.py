"""Tests of the Chromium DevTools driver (tests/browser.py): each one fails if the driver is broken.

Pages are small HTML files written into tmp_path; one Browser serves the whole module.
"""
from __future__ import annotations

import os
import random
import signal
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from browser import (Browser, BrowserDied, BrowserError, CDPTimeout, JSError, Page, external_requests,
                     png_decode, png_stats)

# a 1x1 opaque PNG as a data: URL (no network)
DOT = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
       "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as b:
        yield b
    assert b.leftover_pids() == [] and not os.path.exists(b.root)


def _page(browser: Browser, tmp_path: Path, name: str, body: str, **kw: int) -> Page:
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>{name}</title></head>"
                    f"<body style='margin:0;background:#fff'>{body}</body></html>")
    page = browser.open(path, **kw)
    assert page.requests[0] == path.resolve().as_uri() == page.url  # the document request itself
    return page


# -- 1. console errors and uncaught exceptions ----------------------------------------------------
def test_console_error_is_reported(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "err.html", "<script>console.log('fine'); console.error('boom')</script>")
    assert page.errors == ["console.error: boom"]
    assert page.console == [("log", "fine"), ("error", "boom")]


def test_uncaught_exceptions_are_reported(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "throw.html",
                 "<script>throw new Error('kaboom')</script>"
                 "<script>Promise.reject(new TypeError('nope'))</script>"
                 "<script>window.after = 1</script>")
    assert page.eval("window.after") == 1  # later scripts still ran
    assert len(page.errors) == 2
    assert "Uncaught" in page.errors[0] and "Error: kaboom" in page.errors[0]
    assert "(in promise)" in page.errors[1] and "TypeError: nope" in page.errors[1]


def test_clean_page_has_no_errors(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "clean.html",
                 "<p id=p>hello</p><script>console.log('hello', 42); console.warn('careful')</script>")
    assert page.errors == []
    assert page.console == [("log", "hello 42"), ("warning", "careful")]  # capture works, just no errors
    assert page.eval("document.getElementById('p').textContent") == "hello"


def test_eval_raises_on_page_exceptions_and_awaits_promises(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "eval.html", "<p>x</p>")
    assert page.eval("new Promise(r => setTimeout(() => r({a: [1, 2]}), 50))") == {"a": [1, 2]}
    with pytest.raises(JSError, match="ReferenceError"):
        page.eval("noSuchName + 1")
    with pytest.raises(JSError, match="rejected"):
        page.eval("Promise.reject(new Error('rejected'))")
    with pytest.raises(CDPTimeout):
        page.eval("new Promise(() => {})", timeout=0.5)
    assert page.eval("6 * 7") == 42  # the late reply of the abandoned call does not confuse this one
    with pytest.raises(BrowserError, match="no element"):
        page.center_of("#missing")


def test_missing_file_is_a_navigation_error(browser: Browser, tmp_path: Path) -> None:
    with pytest.raises(BrowserError, match="ERR_FILE_NOT_FOUND"):
        browser.open(tmp_path / "nope.html")


# -- 2. network requests ----------------------------------------------------------------------------
def test_external_requests_are_listed(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "net.html",
                 "<img src='http://127.0.0.1:9/x.png'>"
                 "<script>fetch('http://example.invalid/').catch(() => {})</script>")
    assert sorted(external_requests(page)) == ["http://127.0.0.1:9/x.png", "http://example.invalid/"]
    assert len(page.errors) == 2 and all(e.startswith("log: Failed to load resource") for e in page.errors)


def test_requests_of_workers_frames_and_after_load_are_seen(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "frame.html").write_text("<script>fetch('http://frame.invalid/').catch(() => {})</script>")
    page = _page(browser, tmp_path, "late.html",
                 "<iframe src='frame.html'></iframe>"
                 "<script>const src = \"fetch('http://worker.invalid/').catch(() => {})\";"
                 "new Worker(URL.createObjectURL(new Blob([src])));"
                 "addEventListener('load', () =>"
                 "  setTimeout(() => fetch('http://late.invalid/').catch(() => {})));"
                 "</script>")
    assert sorted(external_requests(page)) == [(tmp_path / "frame.html").as_uri(), "http://frame.invalid/",
                                               "http://late.invalid/", "http://worker.invalid/"]
    assert sum(u.startswith("blob:") for u in page.requests) == 1  # the worker script: not external


def test_inline_page_makes_no_external_requests(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "inline.html",
                 f"<style>p {{ color: red }}</style><p>inline</p><img src='{DOT}'>"
                 "<script>document.title = 'ok'</script>")
    assert external_requests(page) == []
    assert page.requests == [page.url, DOT]  # the data: image was seen, just not counted as external
    assert page.eval("document.images[0].naturalWidth") == 1 and page.errors == []


def test_local_sibling_files_count_unless_allowed(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "style.css").write_text("p { color: green }")
    page = _page(browser, tmp_path, "css.html", "<link rel=stylesheet href='style.css'><p>x</p>")
    css = (tmp_path / "style.css").as_uri()
    assert external_requests(page) == [css]
    assert external_requests(page, allow_local=True) == []


# -- 3. interaction ------------------------------------------------------------------------------
INTERACTIVE = """
<div id=box style="width:200px;height:100px;background:#ccc">click me</div>
<div id=scroller style="width:200px;height:120px;overflow:auto"><div style="height:2000px"></div></div>
<input id=range type=range min=0 max=100 step=1 value=50 style="width:300px;margin:20px">
<input id=text>
<script>
window.counts = {click: 0, trusted: 0, wheel: 0, dy: 0, input: 0};
box.addEventListener("click", e => { counts.click++; if (e.isTrusted) counts.trusted++; });
scroller.addEventListener("wheel", e => { counts.wheel++; counts.dy += e.deltaY; }, {passive: true});
range.addEventListener("input", e => { if (e.isTrusted) counts.input++; });
</script>"""


def test_clicks_are_real_input_events(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "ui.html", INTERACTIVE, width=800, height=600)
    x, y = page.center_of("#box")
    assert (x, y) == (100.0, 50.0)
    for _ in range(3):
        page.click(x, y)
    page.click(x + 300, y)  # outside the box: must not count
    assert page.wait_for("counts.click >= 3") and page.eval("[counts.click, counts.trusted]") == [3, 3]


def test_wheel_scrolls_the_element_under_the_pointer(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "wheel.html", INTERACTIVE, width=800, height=600)
    x, y = page.center_of("#scroller")
    page.wheel(x, y, 100)
    page.wheel(x, y, 150)
    page.wait_for("counts.wheel == 2 && scroller.scrollTop > 0")
    assert page.eval("counts.dy") == 250


def test_range_by_drag_and_by_keys(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "range.html", INTERACTIVE, width=800, height=600)
    x, y = page.center_of("#range")  # value 50: the thumb sits in the middle
    page.drag((x, y), (x + 400, y), steps=5)  # past the right end
    page.wait_for("range.value == '100'")
    n = page.eval("counts.input")
    assert n >= 1
    page.press("ArrowLeft")  # the drag left the range focused
    page.press("ArrowLeft")
    page.press("Home")
    page.press("ArrowRight")
    page.wait_for("range.value == '1'")
    assert page.eval("counts.input") == n + 4
    tx, ty = page.center_of("#text")
    page.click(tx, ty)
    for ch in "ok 1":
        page.press(ch)
    assert page.eval("document.activeElement.id + ':' + text.value") == "text:ok 1"


# -- 4. screenshots and PNG decoding --------------------------------------------------------------------
def test_screenshot_of_coloured_blocks(browser: Browser, tmp_path: Path) -> None:
    blocks = "".join(f"<div style='width:150px;height:150px;background:{c}'></div>"
                     for c in ("#e6194b", "#3cb44b", "#4363d8", "linear-gradient(90deg,#f58231,#911eb4)"))
    page = _page(browser, tmp_path, "blocks.html",
                 f"<h1>Heading</h1><div style='display:flex;gap:10px'>{blocks}</div>", width=800, height=600)
    shot = tmp_path / "blocks.png"
    w, h, n_colours, frac = png_stats(page.screenshot(shot))
    assert (w, h) == (800, 600) and shot.read_bytes()[:4] == b"\x89PNG"
    assert n_colours > 50 and frac > 0.05  # 4*150*150 / (800*600) ~ 0.19 plus the heading
    assert png_stats(page.screenshot(full_page=True))[:2] == (800, 600)


def test_screenshot_of_blank_page(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "blank.html", "", width=640, height=480)
    assert png_stats(page.screenshot()) == (640, 480, 1, 0.0)


def test_screenshot_pixels_are_exact(browser: Browser, tmp_path: Path) -> None:
    page = _page(browser, tmp_path, "exact.html",
                 "<div style='width:100px;height:50px;background:rgb(255,0,0)'></div>"
                 "<div style='position:absolute;left:200px;top:100px;width:30px;height:20px;"
                 "background:rgb(0,0,255)'></div>", width=400, height=300)
    assert png_stats(page.screenshot()) == (400, 300, 3, (100 * 50 + 30 * 20) / (400 * 300))
    w, h, ch, pix = png_decode(page.screenshot())
    px = lambda x, y: tuple(pix[(y * w + x) * ch:(y * w + x) * ch + 3])  # noqa: E731
    assert px(0, 0) == px(99, 49) == (255, 0, 0) and px(100, 49) == px(99, 50) == (255, 255, 255)
    assert px(200, 100) == px(229, 119) == (0, 0, 255) and px(230, 119) == (255, 255, 255)
    tall = _page(browser, tmp_path, "tall.html", "<div style='height:1000px;background:#000'></div>",
                 width=400, height=300)
    assert png_stats(tall.screenshot(full_page=True)) == (400, 1000, 1, 0.0)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _encode_png(w: int, h: int, ctype: int, pixels: list[tuple[int, ...]], interlace: int = 0) -> bytes:
    """A PNG whose row y uses filter type y % 5 (forward filters written from the spec)."""
    ch = len(pixels[0])
    rows = [bytes(v for p in pixels[y * w:(y + 1) * w] for v in p) for y in range(h)]
    out = b""
    for y, row in enumerate(rows):
        up = rows[y - 1] if y else bytes(len(row))
        ft = y % 5
        enc = bytearray()
        for i, x in enumerate(row):
            a = row[i - ch] if i >= ch else 0
            b = up[i]
            c = up[i - ch] if i >= ch else 0
            if ft == 0:
                pred = 0
            elif ft == 1:
                pred = a
            elif ft == 2:
                pred = b
            elif ft == 3:
                pred = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            enc.append((x - pred) % 256)
        out += bytes([ft]) + enc
    ihdr = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, interlace)
    comp = zlib.compress(out)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", comp[:7])
            + _chunk(b"IDAT", comp[7:]) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("ctype, ch", [(2, 3), (6, 4), (0, 1), (4, 2)])
def test_png_stats_on_a_known_image(ctype: int, ch: int) -> None:
    rng = random.Random(ctype)
    w, h = 13, 11  # 11 rows: every filter type at least twice
    bg = tuple([250] * ch)
    palette = [bg] + [tuple(rng.randrange(256) for _ in range(ch)) for _ in range(6)]
    pixels = [bg if rng.random() < 0.6 else rng.choice(palette[1:]) for _ in range(w * h)]
    pixels[0] = palette[1]  # the top-left pixel is not background: stats must not assume it is
    png = _encode_png(w, h, ctype, pixels)
    dw, dh, dch, raw = png_decode(png)
    assert (dw, dh, dch) == (w, h, ch)
    assert raw == bytes(v for p in pixels for v in p)
    n_bg = pixels.count(bg)
    assert Counter(pixels).most_common(1)[0][0] == bg  # the premise: background is the commonest value
    expected = (w, h, len(set(pixels)), (w * h - n_bg) / (w * h))
    assert png_stats(png) == expected
    assert png_stats(png, background=bg) == expected
    assert png_stats(png, background=palette[1])[3] == (w * h - pixels.count(palette[1])) / (w * h)


def test_png_decoder_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        png_stats(b"GIF89a" + bytes(20))
    with pytest.raises(ValueError, match="interlace 1"):
        png_stats(_encode_png(2, 2, 2, [(1, 2, 3)] * 4, interlace=1))
    palette = _encode_png(2, 2, 2, [(1, 2, 3)] * 4).replace(b"IHDR" + struct.pack(">II", 2, 2) + b"\x08\x02",
                                                             b"IHDR" + struct.pack(">II", 2, 2) + b"\x08\x03")
    with pytest.raises(ValueError, match="colour type 3"):
        png_stats(palette)


# -- lifecycle ------------------------------------------------------------------------------------
def test_dead_browser_raises_and_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text("<p>a</p>")
    b = Browser()
    page = b.open(tmp_path / "a.html", width=200, height=200)
    assert len(b.leftover_pids()) > 2  # browser, zygotes, renderer, ... are found
    os.kill(b.proc.pid, signal.SIGKILL)
    with pytest.raises(BrowserDied, match="chromium exited"):
        page.eval("1")
    b.close()
    assert b.leftover_pids() == [] and not os.path.exists(b.root)
