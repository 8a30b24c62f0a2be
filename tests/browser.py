"""A small, dependency-free driver for headless Chromium over the DevTools protocol (CDP) pipe.

Used by the report tests to check what a static page really does in a browser: console errors and
uncaught exceptions, every network request, real mouse/wheel/keyboard input, and screenshots.

Protocol steps:
 1. Make a temporary profile directory and two pipes.  Chromium is started (its own process group)
    with ``--remote-debugging-pipe``: it reads NUL-terminated JSON commands on fd 3 and writes
    NUL-terminated JSON replies/events on fd 4.  The child's pipe ends are first moved to fds >= 10,
    then a ``bash -c 'exec ... 3<&R 4>&W'`` trampoline puts them on fds 3 and 4 (``subprocess``
    ``pass_fds`` keeps fds only at their own numbers; dash cannot redirect fds >= 10).
 2. A daemon reader thread splits fd 4 at NUL bytes and decodes each JSON message: messages with an
    ``id`` are replies (stored by id), messages with a ``method`` are events (appended to the list
    of their page's ``sessionId``; browser-level events go to ``""``).  EOF marks the browser dead
    and wakes every waiter, which then raises :class:`BrowserDied` with the tail of chromium's stderr.
 3. ``send`` writes ``{"id", "method", "params"[, "sessionId"]}`` + NUL and waits (default 30 s) for
    the reply with that id; a reply carrying ``error`` raises :class:`CDPError`; the reply to a call
    that timed out is dropped when it arrives.
 4. ``Browser.open``: ``Target.createTarget(about:blank)`` -> ``Target.attachToTarget(flatten=True)``
    gives a session id; on that session enable ``Page``, ``Runtime``, ``Log`` and ``Network``, ask
    for ``Target.setAutoAttach(waitForDebuggerOnStart, flatten)``, set the viewport with
    ``Emulation.setDeviceMetricsOverride``, bring the tab to front, ``Page.navigate`` and wait for
    ``Page.loadEventFired``, then until no request is in flight and no event came for 0.15 s.
 5. Workers (and out-of-process frames) start paused and announce a child session in
    ``Target.attachedToTarget``; the reader files that session's events under its page's session
    and queues, for a poster thread (the reader must never block on a write), auto-attach +
    ``Runtime``/``Log``/``Network.enable`` + ``Runtime.runIfWaitingForDebugger`` on the child, so
    the worker's first request is seen too.
 6. The page folds its events into ``console`` (``Runtime.consoleAPICalled`` + ``Log.entryAdded``),
    ``errors`` (``Runtime.exceptionThrown``, console ``error``/``assert``, Log level ``error``) and
    ``requests`` (URL of every ``Network.requestWillBeSent``, the document itself first).
 7. Interaction uses ``Runtime.evaluate`` (``returnByValue``, ``awaitPromise``) and
    ``Input.dispatchMouseEvent`` / ``Input.dispatchKeyEvent``; screenshots use
    ``Page.captureScreenshot`` (full page: clip to ``Page.getLayoutMetrics().cssContentSize``).
 8. ``Browser.close``: ``Browser.close`` over the pipe, wait up to 5 s for exit, then SIGKILL what
    is left: the process group (renderers, zygote) and the crashpad handlers, which daemonize into
    their own session but carry our temp dir in their command line (``XDG_CONFIG_HOME`` points there,
    so crash reports never land in ``~/.config``); then delete the temp dir.

``png_stats`` / ``png_decode`` (``pngstats``, re-exported here) decode a PNG in pure Python (zlib +
the five scanline filters) and count colours.
"""
from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from pngstats import png_decode, png_stats  # noqa: F401 — re-exported for the tests

DEFAULT_TIMEOUT = 30.0
_BASH = shutil.which("bash") or "/bin/bash"  # dash cannot redirect fds >= 10
INSTALL_HINT = "chromium not found: install Debian chromium (apt-get install -y chromium)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars", "--disable-features=Translate,MediaRouter,OptimizationHints",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # offline by construction: no DNS lookups at all
         "--remote-debugging-pipe"]
_AUTO_ATTACH = {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True}
#: sent (in order) to every auto-attached child session, which waits paused until the last one
_CHILD_SETUP: list[tuple[str, dict]] = [("Target.setAutoAttach", _AUTO_ATTACH), ("Runtime.enable", {}),
                                        ("Log.enable", {}), ("Network.enable", {}),
                                        ("Runtime.runIfWaitingForDebugger", {})]


class BrowserError(RuntimeError):
    """Base class of the driver's errors."""


class BrowserDied(BrowserError):
    """Chromium exited (or closed the pipe) while we were talking to it."""


class CDPError(BrowserError):
    """A protocol command returned an error."""


class CDPTimeout(BrowserError, TimeoutError):
    """No reply / event within the timeout."""


class JSError(BrowserError):
    """``Page.eval`` raised (or rejected) in the page."""


def chromium_or_fail() -> str:
    """Path of the ``chromium`` executable; ``pytest.fail`` with an install hint when missing."""
    exe = shutil.which("chromium")
    if exe is None:
        import pytest

        pytest.fail(INSTALL_HINT)
    return exe


def live_pids(pgid: int, marker: str) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` or whose command line contains ``marker``.

    Chromium's crashpad handlers daemonize into their own session, so the group alone misses them;
    they carry our temporary directory in ``--database=`` (see ``XDG_CONFIG_HOME`` below).
    """
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()  # fields after "(comm)": state ppid pgrp ...
            if stat[0] == b"Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # gone meanwhile
            continue
        if int(stat[2]) == pgid or marker.encode() in cmdline:
            out.append(int(entry))
    return sorted(out)


def _kill_all(proc: subprocess.Popen, root: str) -> None:
    """SIGKILL chromium's process group and its daemonized helpers, reap, remove the temp dir."""
    for _ in range(50):
        pids = live_pids(proc.pid, root)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.02)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    shutil.rmtree(root, ignore_errors=True)


class Browser:
    """One headless chromium process driven over ``--remote-debugging-pipe``; a context manager."""

    def __init__(self, executable: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 extra_args: list[str] | None = None) -> None:
        exe = executable or chromium_or_fail()
        self.timeout = timeout
        self.root = tempfile.mkdtemp(prefix="browser-test-")  # profile, XDG dirs, stderr log
        self._stderr_path = os.path.join(self.root, "stderr.log")
        env = dict(os.environ, XDG_CONFIG_HOME=os.path.join(self.root, "config"),  # crash reports,
                   XDG_CACHE_HOME=os.path.join(self.root, "cache"))          # caches: never in ~
        cmd_r, cmd_w = os.pipe()  # we write commands -> chromium reads fd 3
        evt_r, evt_w = os.pipe()  # chromium writes fd 4 -> we read events/replies
        # the child's ends move to fds >= 10 first, so "3<&R 4>&W" can never clobber one another
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, evt_w))
        for fd in (cmd_r, evt_w):
            os.close(fd)
        profile = os.path.join(self.root, "profile")
        args = [exe, *FLAGS, *(extra_args or []), f"--user-data-dir={profile}", "about:blank"]
        script = f'exec "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        try:
            with open(self._stderr_path, "wb") as err:
                self.proc = subprocess.Popen([_BASH, "-c", script, "chromium", *args],
                                             pass_fds=(child_r, child_w), stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err, start_new_session=True, env=env)
        except BaseException:
            for fd in (cmd_w, evt_r):
                os.close(fd)
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        finally:
            os.close(child_r)
            os.close(child_w)
        self._wfd, self._rfd = cmd_w, evt_r
        self._finalizer = weakref.finalize(self, _kill_all, self.proc, self.root)
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._next_id = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self._abandoned: set[int] = set()  # ids whose caller timed out: drop their late replies
        self._root_of: dict[str, str] = {}  # child session (worker, frame) -> its page's session
        self._posts: queue.SimpleQueue[tuple[str, dict, str] | None] = queue.SimpleQueue()
        self.events: dict[str, list[dict]] = {}  # sessionId ("" = browser) -> events in arrival order
        self._dead = False
        self.reader_errors: list[str] = []  # messages the reader could not decode or file
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        self._poster = threading.Thread(target=self._post_loop, name="cdp-poster", daemon=True)
        self._poster.start()
        try:
            self.version = self.send("Browser.getVersion")
        except BaseException:
            self.close()
            raise

    # -- transport -------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = os.read(self._rfd, 1 << 20)
                if not chunk:
                    break
                start = len(buf)
                buf += chunk
                end = buf.find(b"\0", start)
                cut = 0
                while end >= 0:
                    try:
                        self._dispatch(json.loads(buf[cut:end]))
                    except (ValueError, KeyError, TypeError) as exc:  # keep reading; report on death
                        head = bytes(buf[cut:end])[:200]
                        self.reader_errors.append(f"{type(exc).__name__}: {exc}: {head!r}")
                    cut = end + 1
                    end = buf.find(b"\0", cut)
                del buf[:cut]
        except OSError:
            pass
        finally:
            with self._cond:
                self._dead = True
                self._cond.notify_all()

    def _dispatch(self, msg: dict) -> None:
        with self._cond:
            if "id" in msg:
                if msg["id"] in self._abandoned:
                    self._abandoned.discard(msg["id"])
                else:
                    self._replies[msg["id"]] = msg
            else:  # events of workers / out-of-process frames are filed under their page's session
                sid = msg.get("sessionId", "")
                root = self._root_of.get(sid, sid)
                self.events.setdefault(root, []).append(msg)
                if msg["method"] == "Target.attachedToTarget" and sid:
                    child = msg["params"]["sessionId"]
                    self._root_of[child] = root
                    for method, params in _CHILD_SETUP:
                        self._posts.put((method, params, child))
            self._cond.notify_all()

    def _post_loop(self) -> None:
        """Send fire-and-forget commands queued by the reader (it must never block on a write)."""
        while True:
            item = self._posts.get()
            if item is None:
                return
            try:
                self._write(*item, forget=True)
            except BrowserDied:
                return

    def _died(self) -> BrowserDied:
        code = self.proc.poll()
        try:
            tail = Path(self._stderr_path).read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        return BrowserDied(f"chromium exited (code {code}); stderr tail: {' | '.join(tail) or '-'}"
                           + (f"; reader errors: {self.reader_errors[-3:]}" if self.reader_errors else ""))

    def wait_until(self, predicate: Callable[[], Any], timeout: float | None, what: str) -> Any:
        """Block until ``predicate()`` (called under the lock) is truthy; return its value."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                if self._dead:
                    raise self._died()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPTimeout(f"timed out waiting for {what}")
                self._cond.wait(left)

    def _write(self, method: str, params: dict | None, session: str | None, forget: bool) -> int:
        """Write one command; its id.  ``forget``: its reply will be dropped on arrival."""
        if self._dead:
            raise self._died()
        msg_id = next(self._next_id)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        if forget:
            with self._cond:
                self._abandoned.add(msg_id)
        with self._write_lock:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._wfd, view):]
            except OSError:  # EPIPE: chromium is gone
                raise self._died() from None
        return msg_id

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and return its ``result``; raise CDPError / CDPTimeout / BrowserDied."""
        msg_id = self._write(method, params, session, forget=False)
        try:
            reply = self.wait_until(lambda: self._replies.pop(msg_id, None), timeout, f"reply to {method}")
        except CDPTimeout:
            with self._cond:  # a reply that arrives later is dropped
                if self._replies.pop(msg_id, None) is None:
                    self._abandoned.add(msg_id)
            raise
        if "error" in reply:
            err = reply["error"]
            raise CDPError(f"{method} failed: {err.get('message')} ({err.get('data', err.get('code'))})")
        return reply.get("result", {})

    # -- pages -----------------------------------------------------------------------------------
    def open(self, path_or_url: str | os.PathLike, width: int = 1200, height: int = 900,
             settle: float = 0.15, timeout: float | None = None) -> Page:
        """A new tab showing ``path_or_url`` (a file path or URL), loaded and network-idle."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Target.setAutoAttach", _AUTO_ATTACH)  # workers and out-of-process iframes too
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        page.send("Emulation.setFocusEmulationEnabled", {"enabled": True})
        page.send("Page.bringToFront")
        page.navigate(path_or_url, settle=settle, timeout=timeout)
        return page

    def close(self) -> None:
        """Ask chromium to quit, then kill whatever is left of it, remove the temp dir; idempotent."""
        if not self._finalizer.alive:
            return
        if not self._dead and self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._finalizer()  # SIGKILL the group and helpers, reap, remove the temp dir
        self._posts.put(None)
        self._reader.join(timeout=5)  # sees EOF now that every holder of the write end is gone
        self._poster.join(timeout=5)
        for fd in (self._wfd, self._rfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def leftover_pids(self) -> list[int]:
        """Live processes of this browser (empty after ``close``)."""
        return live_pids(self.proc.pid, self.root)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote_text(obj: dict) -> str:
    """A console argument (a Runtime.RemoteObject) as text, as the DevTools console would show it."""
    if "value" in obj:
        v = obj["value"]
        return v if isinstance(v, str) else json.dumps(v)
    if obj.get("type") == "undefined":
        return "undefined"
    return str(obj.get("description", obj.get("unserializableValue", obj.get("type", "?"))))


def _exception_text(details: dict) -> str:
    """``Runtime.ExceptionDetails`` as one line: "Uncaught Error: kaboom"."""
    exc = details.get("exception") or {}
    desc = str(exc.get("description") or exc.get("value") or "").split("\n")[0]
    text = details.get("text", "Uncaught")
    return f"{text} {desc}".strip() if desc and desc not in text else text


class Page:
    """One attached tab (a flattened CDP session); read-only views over its recorded events.

    ``console``, ``errors`` and ``requests`` cover everything since ``Browser.open`` (every
    navigation of this tab, its frames and its workers); open a new page for a fresh record.
    """

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser, self.target_id, self.session_id = browser, target_id, session_id
        self.url = "about:blank"

    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        return self.browser.send(method, params, session=self.session_id, timeout=timeout)

    @property
    def events(self) -> list[dict]:
        """Every event of this session so far, in arrival order (a snapshot)."""
        with self.browser._cond:
            return list(self.browser.events.get(self.session_id, []))

    def wait_event(self, method: str, since: int = 0, timeout: float | None = None,
                   where: Callable[[dict], bool] = lambda p: True) -> dict:
        """The params of the first ``method`` event at index >= ``since`` matching ``where``."""
        def find() -> dict | None:
            for ev in self.browser.events.get(self.session_id, [])[since:]:
                if ev["method"] == method and where(ev.get("params", {})):
                    return ev.get("params", {}) or {"_": True}
            return None
        return self.browser.wait_until(find, timeout, method)

    def navigate(self, path_or_url: str | os.PathLike, settle: float = 0.15,
                 timeout: float | None = None) -> None:
        """Load a file path or URL, wait for the load event, then for network idle (``settle`` s)."""
        url = str(path_or_url)
        if "://" not in url and not url.startswith(("about:", "data:")):
            url = Path(url).resolve().as_uri()
        mark = len(self.events)
        res = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if res.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {res['errorText']}")
        self.url = url
        self.wait_event("Page.loadEventFired", since=mark, timeout=timeout)
        if settle > 0:
            self.wait_idle(quiet=settle, timeout=timeout)

    def wait_idle(self, quiet: float = 0.15, timeout: float | None = None) -> None:
        """Wait until no request is in flight and no event arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + (self.browser.timeout if timeout is None else timeout)
        while True:
            n = len(self.events)
            time.sleep(quiet)
            if len(self.events) == n and not self.in_flight():
                return
            if time.monotonic() > deadline:
                raise CDPTimeout(f"network of {self.url} not idle; in flight: {sorted(self.in_flight())}")

    def in_flight(self) -> set[str]:
        """URLs of requests that started and have neither finished nor failed."""
        open_: dict[str, str] = {}
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Network.requestWillBeSent":
                open_[p["requestId"]] = p["request"]["url"]
            elif m in ("Network.loadingFinished", "Network.loadingFailed"):
                open_.pop(p["requestId"], None)
        return set(open_.values())

    # -- recorded events ---------------------------------------------------------------------------
    @property
    def console(self) -> list[tuple[str, str]]:
        """(level, text) of every console API call and Log entry, in order."""
        out = []
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled":
                out.append((p["type"], " ".join(_remote_text(a) for a in p.get("args", []))))
            elif m == "Log.entryAdded":
                e = p["entry"]
                out.append((e["level"], e["text"] + (f" ({e['url']})" if e.get("url") else "")))
        return out

    @property
    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and Log entries of level error."""
        out = []
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(_exception_text(p["exceptionDetails"]))
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(f"console.{p['type']}: " + " ".join(_remote_text(a) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                e = p["entry"]
                out.append(f"log: {e['text']}" + (f" ({e['url']})" if e.get("url") else ""))
        return out

    @property
    def requests(self) -> list[str]:
        """URL of every request the page started (the document included), in order."""
        return [ev["params"]["request"]["url"] for ev in self.events
                if ev["method"] == "Network.requestWillBeSent"]

    # -- JavaScript and input ------------------------------------------------------------------------
    def eval(self, expression: str, timeout: float | None = None) -> Any:
        """Evaluate ``expression`` in the page (awaiting promises); its JSON value; raise JSError."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True, "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in res:
            raise JSError(f"{_exception_text(res['exceptionDetails'])}  [in: {expression[:80]}]")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 5.0) -> Any:
        """Poll a JS expression until it is truthy (input handlers may run after the CDP reply)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPTimeout(f"{expression!r} still falsy after {timeout} s (last: {value!r})")
            time.sleep(0.02)

    def center_of(self, selector: str) -> tuple[float, float]:
        """Viewport (x, y) of the centre of the first element matching ``selector``, scrolled into view."""
        xy = self.eval(f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            if (!el) return null; el.scrollIntoView({{block: "center", inline: "center"}});
            const r = el.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")
        if xy is None:
            raise BrowserError(f"no element matches {selector!r} in {self.url}")
        return float(xy[0]), float(xy[1])

    def _mouse(self, kind: str, x: float, y: float, buttons: int = 0, button: str = "none",
               **extra: Any) -> None:
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": button,
                                                "buttons": buttons, **extra})

    def mouse_move(self, x: float, y: float) -> None:
        self._mouse("mouseMoved", x, y)

    def click(self, x: float, y: float) -> None:
        """A left click (move, press, release) at viewport coordinates."""
        self._mouse("mouseMoved", x, y)
        self._mouse("mousePressed", x, y, buttons=1, button="left", clickCount=1)
        self._mouse("mouseReleased", x, y, buttons=0, button="left", clickCount=1)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 5) -> None:
        """Press the left button at ``start``, move in ``steps`` straight steps to ``end``, release."""
        (x0, y0), (x1, y1) = start, end
        self._mouse("mouseMoved", x0, y0)
        self._mouse("mousePressed", x0, y0, buttons=1, button="left", clickCount=1)
        for i in range(1, steps + 1):
            t = i / steps
            self._mouse("mouseMoved", x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, buttons=1, button="left")
        self._mouse("mouseReleased", x1, y1, buttons=0, button="left", clickCount=1)

    def wheel(self, x: float, y: float, delta_y: float, delta_x: float = 0.0) -> None:
        """One mouse-wheel event at (x, y); positive ``delta_y`` scrolls down."""
        self._mouse("mouseMoved", x, y)
        self._mouse("mouseWheel", x, y, deltaX=delta_x, deltaY=delta_y)

    def press(self, key: str) -> None:
        """Press and release one key: a DOM key name ("ArrowRight", "Enter", ...) or one character."""
        code, vk, text = _KEYS.get(key, (None, None, None))
        if code is None:
            if len(key) != 1:
                raise ValueError(f"unknown key {key!r}: use one character or one of {sorted(_KEYS)}")
            code = f"Key{key.upper()}" if key.isalpha() else f"Digit{key}" if key.isdigit() else ""
            vk, text = ord(key.upper()), key
        down: dict[str, Any] = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": code,
                                "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}
        if text:
            down.update(text=text, unmodifiedText=text)
        self.send("Input.dispatchKeyEvent", down)
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                             "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk})

    # -- screenshots -------------------------------------------------------------------------------
    def screenshot(self, path: str | os.PathLike | None = None, full_page: bool = False) -> bytes:
        """PNG bytes of the viewport (or the whole page); also written to ``path`` when given."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target_id})


#: DOM key -> (code, Windows virtual key code, text) for the non-character keys ``Page.press`` knows
_KEYS: dict[str, tuple[str, int, str | None]] = {
    "ArrowLeft": ("ArrowLeft", 37, None), "ArrowUp": ("ArrowUp", 38, None),
    "ArrowRight": ("ArrowRight", 39, None), "ArrowDown": ("ArrowDown", 40, None),
    "Home": ("Home", 36, None), "End": ("End", 35, None), "PageUp": ("PageUp", 33, None),
    "PageDown": ("PageDown", 34, None), "Tab": ("Tab", 9, None), "Escape": ("Escape", 27, None),
    "Backspace": ("Backspace", 8, None), "Delete": ("Delete", 46, None),
    "Enter": ("Enter", 13, "\r"), " ": ("Space", 32, " "),
}


def external_requests(page: Page, allow_local: bool = False) -> list[str]:
    """Requested URLs other than the page's own file:// URL, data:, blob: and about:blank.

    (blob: URLs name data the page itself made, e.g. a worker's script; they fetch nothing.)
    With ``allow_local`` also file:// URLs inside the page's directory are allowed.
    """
    own = page.url.split("#")[0]
    base = own.rsplit("/", 1)[0] + "/"
    out = []
    for url in page.requests:
        u = url.split("#")[0]
        if u == own or u.startswith(("data:", "blob:")) or u == "about:blank":
            continue
        if allow_local and u.startswith(base) and own.startswith("file://"):
            continue
        out.append(url)
    return out
