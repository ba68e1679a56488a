"""A minimal W3C WebDriver client over HTTP, with the standard library only: the system's chromedriver drives headless
Chromium (Debian: apt-get install chromium chromium-driver). Enough to load a page, click, select text with the
mouse, type, read the page and take a screenshot; nothing is downloaded."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


def find_browser() -> tuple[str, str] | None:
    """(chromedriver, chromium) on the PATH, or None."""
    driver = shutil.which("chromedriver")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    return (driver, browser) if driver and browser else None


class Browser:
    def __init__(self, driver: str, browser: str, log: Path, size: tuple[int, int] = (1280, 900)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        with log.open("ab") as f:
            self.proc = subprocess.Popen([driver, f"--port={port}"], stdout=f, stderr=subprocess.STDOUT)
        t = time.time()
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.time() - t > 30 or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError(f"chromedriver did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        args.append(f"--window-size={size[0]},{size[1]}")
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": browser, "args": args}}
        try:
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        except BaseException:
            self.proc.kill()
            raise

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data, {"Content-Type": "application/json"}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            value = json.loads(e.read()).get("value", {})
            raise RuntimeError(f"webdriver {method} {path}: {value.get('error')}: {value.get('message')}") from None

    def call(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self.call("POST", "/elements", {"using": "css selector", "value": css})]

    def find(self, css: str, timeout: float = 10) -> str:
        """The first element matching `css`, waited for."""
        t = time.time()
        while not (found := self.find_all(css)):
            if time.time() - t > timeout:
                raise AssertionError(f"no {css} on the page after {timeout} s")
            time.sleep(0.1)
        return found[0]

    def click(self, el: str) -> None:
        self.call("POST", f"/element/{el}/click", {})

    def type(self, el: str, text: str) -> None:
        self.call("POST", f"/element/{el}/value", {"text": text})

    def text(self, el: str) -> str:
        return self.call("GET", f"/element/{el}/text")

    def run(self, script: str, *args):
        """Run JavaScript in the page: `return ...` gives a value back."""
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def select_with_mouse(self, first: str, last: str) -> None:
        """Press the mouse at the left edge of element `first`, drag to the right edge of `last`, release: the
        user's selection of the text between (offsets are from each element's centre)."""
        w1 = self.call("GET", f"/element/{first}/rect")["width"]
        w2 = self.call("GET", f"/element/{last}/rect")["width"]
        start = {"type": "pointerMove", "duration": 0, "origin": {ELEMENT: first}, "x": -int(w1 / 2) + 1, "y": 0}
        end = {"type": "pointerMove", "duration": 100, "origin": {ELEMENT: last}, "x": int(w2 / 2) - 1, "y": 0}
        steps = [start, {"type": "pointerDown", "button": 0}, end, {"type": "pointerUp", "button": 0}]
        mouse = {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": steps}
        self.call("POST", "/actions", {"actions": [mouse]})

    def press(self, key: str) -> None:
        """A key pressed and released (keyboard shortcuts of the page)."""
        keys = [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]
        self.call("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": keys}]})

    def wait(self, condition, timeout: float = 20, what: str = "the page"):
        t = time.time()
        while not (value := condition()):
            if time.time() - t > timeout:
                raise AssertionError(f"{what}: still not there after {timeout} s")
            time.sleep(0.1)
        return value

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("GET", "/screenshot")))

    def quit(self) -> None:
        try:
            self.call("DELETE", "")
        except (OSError, RuntimeError):
            pass
        self.proc.kill()
        self.proc.wait(timeout=30)
