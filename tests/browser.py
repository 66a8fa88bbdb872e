"""Open a page in headless Chromium (Debian's ``/usr/bin/chromium``) and report what a reader's browser did.

No browser-driving package: Chromium is started with ``--remote-debugging-pipe`` and spoken to in the
DevTools protocol over its pipe (file descriptors 3 and 4, one JSON message per NUL-terminated frame).
:func:`open_page` loads a ``file://`` page at a given window width, waits for its load event, and returns a
:class:`PageCheck`: every ``<img>`` with whether it loaded (``naturalWidth``), the script exceptions, the
console errors and failed loads, the headings in page order, and screenshots (the first screen and the
whole page). ``.ci/run`` installs Chromium; :data:`MISSING` is the reason a test gives when it is absent.

Run as a script it screenshots a page: ``python -m tests.browser PAGE.html OUT_PREFIX``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("CLEANCURATE_CHROMIUM", "/usr/bin/chromium")
MISSING = f"browser test did not run: {CHROMIUM} not found; .ci/run installs it"
#: no network, no first-run work, no background connections (this machine's network is closed)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars")


def available() -> bool:
    return os.access(CHROMIUM, os.X_OK)


@dataclass
class PageCheck:
    url: str
    images: list[dict] = field(default_factory=list)  # src (cut), complete, naturalWidth
    exceptions: list[str] = field(default_factory=list)  # uncaught script errors
    console_errors: list[str] = field(default_factory=list)  # console.error and the browser's own error log
    failed_loads: list[str] = field(default_factory=list)  # resources that did not load
    headings: list[tuple[str, str]] = field(default_factory=list)  # (tag, text), in page order
    title: str = ""
    width: int = 0  # the page's layout width at the window size used
    screenshot: Path | None = None  # the first screen
    full_screenshot: Path | None = None  # the whole page

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not i["complete"] or i["naturalWidth"] <= 0]

    @property
    def errors(self) -> list[str]:
        return self.exceptions + self.console_errors + self.failed_loads


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe."""

    def __init__(self, proc, write_fd: int, read_fd: int):
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf, self.next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self.receive(timeout)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError(f"no answer from Chromium within {timeout:.0f}s (exit code {self.proc.poll()})")
            ready, _, _ = select.select([self.r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its debugging pipe")
                self.buf += chunk
        frame, self.buf = self.buf.split(b"\0", 1)
        return json.loads(frame)

    def wait_for(self, method: str, timeout: float) -> dict:
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self.receive(max(0.1, deadline - time.monotonic()))
            if m.get("method") == method:
                return m
            self.events.append(m)


_PROBE = """(() => ({
  images: Array.from(document.images).map(i => ({src: (i.getAttribute('src') || '').slice(0, 80),
                                                 complete: i.complete, naturalWidth: i.naturalWidth})),
  headings: Array.from(document.querySelectorAll('h1,h2,h3')).map(h => [h.tagName.toLowerCase(),
                                                                       h.textContent.trim()]),
  title: document.title,
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
}))()"""


def _above_9(fd: int) -> int:
    """``fd`` moved to a descriptor number of at least 10."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def open_page(page: Path, shots: Path | None = None, width: int = 1280, height: int = 900,
              timeout: float = 60.0) -> PageCheck:
    """Load ``page`` in headless Chromium at ``width`` x ``height`` CSS pixels; with ``shots`` (a path
    prefix), write ``<shots>.png`` (the first screen) and ``<shots>-full.png`` (the whole page)."""
    url = Path(page).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="cleancurate-chromium-")
    to_r, to_w = os.pipe()  # we write commands, Chromium reads them on fd 3
    from_r, from_w = os.pipe()  # Chromium answers on fd 4
    to_r, from_w = _above_9(to_r), _above_9(from_w)  # so placing them on 3 and 4 cannot overwrite one another
    # bash (dash takes one-digit descriptors only) puts the two ends on fds 3 and 4 and becomes Chromium
    cmd = ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-', CHROMIUM, *FLAGS,
           f"--user-data-dir={profile}", f"--window-size={width},{height}", "--remote-debugging-pipe",
           "about:blank"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(to_r, from_w))
    os.close(to_r)
    os.close(from_w)
    cdp = _Pipe(proc, to_w, from_r)
    check = PageCheck(url=url)
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        s = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable", session=s)
        cdp.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=s)
        cdp.send("Page.navigate", {"url": url}, session=s)
        cdp.wait_for("Page.loadEventFired", timeout)
        probe = cdp.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=s)
        value = probe["result"]["value"]
        check.images, check.title, check.width = value["images"], value["title"], value["width"]
        check.headings = [tuple(h) for h in value["headings"]]
        if shots is not None:
            shots.parent.mkdir(parents=True, exist_ok=True)
            first = cdp.send("Page.captureScreenshot", {"format": "png"}, session=s)
            check.screenshot = shots.with_name(shots.name + ".png")
            check.screenshot.write_bytes(base64.b64decode(first["data"]))
            full = cdp.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": min(int(value["height"]), 16000), "scale": 1}},
                session=s, timeout=timeout)
            check.full_screenshot = shots.with_name(shots.name + "-full.png")
            check.full_screenshot.write_bytes(base64.b64decode(full["data"]))
        for m in cdp.events:
            p = m.get("params", {})
            if m.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                check.exceptions.append(d.get("exception", {}).get("description") or d.get("text", ""))
            elif m.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                check.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                     for a in p.get("args", [])))
            elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                check.console_errors.append(p["entry"].get("text", ""))
            elif m.get("method") == "Network.loadingFailed":
                check.failed_loads.append(f"{p.get('errorText')} ({p.get('requestId')})")
        try:
            cdp.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError):
            pass
    finally:
        os.close(to_w)
        os.close(from_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
    return check


def main(argv: list[str]) -> int:
    page, prefix = Path(argv[0]), Path(argv[1])
    check = open_page(page, prefix, width=int(argv[2]) if len(argv) > 2 else 1280)
    print(json.dumps({"title": check.title, "width": check.width, "headings": check.headings,
                      "broken_images": check.broken_images, "errors": check.errors,
                      "screenshot": str(check.screenshot), "full_screenshot": str(check.full_screenshot)}, indent=1))
    return 1 if check.broken_images or check.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
