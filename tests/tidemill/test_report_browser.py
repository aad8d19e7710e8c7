"""The report in a real browser: headless Chromium (Debian's `chromium`, installed by
`make test`) loads the page over file://, with no console error, and shows every chart."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from websockets.sync.client import ClientConnection, connect

from tidemill.cli.query import report_page
from tidemill.config.load import TidemillConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make test` installs it (apt)"),
]


class DevTools:
    """The Chrome DevTools Protocol over one page's websocket: commands and the events
    that arrive meanwhile."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.events: list[dict[str, Any]] = []
        self._next = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        self.socket.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == self._next:
                assert "error" not in message, message
                return dict(message.get("result", {}))
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.socket.recv(timeout=deadline - time.monotonic())))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    assert CHROMIUM is not None
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1200,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = tmp_path / "chromium" / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as socket:
            yield DevTools(socket)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_report_loads_without_console_errors_and_shows_every_chart(
    browser: DevTools,
    elec_config: Callable[..., TidemillConfig],
    elec_csv: Callable[..., pl.DataFrame],
    tmp_path: Path,
) -> None:
    from tidemill.flows.engine.cycle import run_cycle
    from tidemill.flows.engine.runtime import Runtime

    config = elec_config(batch_rows=40)
    landing = Path(config.pipeline("elec").source.path).parent
    elec_csv(landing / "a.csv", 0, 200)
    (landing / "b.csv").write_text("id,ts,feat_1,feat_2,target\n900,2024-01-01T00:00:00Z,x,1,0\n")
    runtime = Runtime.open(config)
    try:
        while run_cycle(runtime, "elec", drain=True).status == "committed":
            pass
    finally:
        runtime.close()
    page = tmp_path / "report.html"
    page.write_text(report_page(config.state_dir, "elec"), encoding="utf-8")

    for domain in ("Page", "Runtime", "Log"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    shown = browser.call(
        "Runtime.evaluate",
        returnByValue=True,
        expression="""Array.from(document.images).map(i => ({
            alt: i.alt, done: i.complete, w: i.naturalWidth, h: i.naturalHeight,
            seen: i.getBoundingClientRect().width}))""",
    )["result"]["value"]
    assert [image["alt"] for image in shown] == [
        "prequential accuracy",
        "prequential log_loss",
        "rows per batch",
        "batch latency by step",
    ]
    assert all(i["done"] and i["w"] > 400 and i["h"] > 150 and i["seen"] > 400 for i in shown)
    text = browser.call(
        "Runtime.evaluate", returnByValue=True, expression="document.body.innerText"
    )["result"]["value"]
    assert "tidemill report: elec" in text and "is not a finite number" in text
    problems = [
        e
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert problems == []
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
