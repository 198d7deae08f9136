"""What the Python tests share for running `sluice` itself: the binary, a child process whose
stdout is kept as it comes, polling, and the demo with a `sluice serve --token` beside it.

Needs the `sluice` binary (SLUICE_BIN, default $CARGO_TARGET_DIR/debug/sluice).
"""
import contextlib
import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import pytest

TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or pathlib.Path.home() / ".cache/sluice/target")
SLUICE = os.environ.get("SLUICE_BIN") or str(TARGET / "debug" / "sluice")
# How long a pipeline may take to start and show something (it starts from nothing).
PATIENCE = 60


class Process:
    """A `sluice` child whose stdout is kept (and copied to a log) as it comes. The caller's
    broker and token settings are not passed on: each test says what it runs against."""

    def __init__(self, args, log):
        self.log = log
        self.lines = []
        env = {k: v for k, v in os.environ.items() if k not in ("SLUICE_BROKERS", "SLUICE_TOKEN")}
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen([SLUICE, *args], stdout=subprocess.PIPE, stderr=open(log, "ab"),
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        with open(self.log, "a") as copy:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                copy.write(f"[stdout] {line}")
                copy.flush()

    def line(self, pattern, timeout=PATIENCE):
        """The first stdout line matching `pattern` (its match), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            assert self.proc.poll() is None, f"{self.log.name} exited: {self.tail()}"
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s: {self.tail()}")

    def tail(self, n=40):
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(what, check, timeout=PATIENCE):
    """Polls `check` until it returns something truthy; fails naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def demo_and_token_server(work, logs, token, demo_args):
    """`sluice demo` (its in-process Kafka, no token) in `work`, and `sluice serve --token
    token` over the demo's Kafka and lake, logging into `logs`: their URLs, stopped after."""
    demo = Process(["demo", "--dir", str(work / "demo"), "--bind", "127.0.0.1:0", "--plain", *demo_args],
                   logs / "demo.log")
    served = None
    try:
        demo_url = demo.line(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
        job_file, brokers, lake = demo.line(r"sluice verify --job (\S+) --brokers (\S+) --lake (\S+)").groups()
        served = Process(["serve", "--job", job_file, "--brokers", brokers, "--lake", lake,
                          "--bind", "127.0.0.1:0", "--token", token], logs / "serve.log")
        token_url = served.line(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
        yield demo_url, token_url
    finally:
        for process in (served, demo):
            if process:
                process.stop()


def sluice_run(*args, timeout=300):
    """`sluice args...` to completion, asserting exit 0 (its stdout and stderr in the failure):
    its stdout. Like `Process`, the caller's broker and token settings are not passed on."""
    env = {k: v for k, v in os.environ.items() if k not in ("SLUICE_BROKERS", "SLUICE_TOKEN")}
    done = subprocess.run([SLUICE, *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=timeout)
    assert done.returncode == 0, (
        f"sluice {' '.join(map(str, args))} exited {done.returncode}:\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}")
    return done.stdout


# Debian's chromium; Playwright never downloads a browser.
CHROMIUM = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")


def launch_chromium(playwright):
    """Headless chromium from a `sync_playwright()` handle (without its sandbox as root, where
    chromium refuses to start with it)."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


@pytest.fixture(scope="module")
def browser():
    """Headless chromium for a test module (import it into the module to use it)."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, request):
    """A fresh `WatchedPage`, its screenshots in the test module's `ARTIFACTS`."""
    opened = WatchedPage(browser, request.module.ARTIFACTS)
    yield opened
    opened.close()


class WatchedPage:
    """A fresh browser context and page recording every console error, page error, failed
    request and HTTP error response, with full-page screenshots into `artifacts`."""

    def __init__(self, browser, artifacts, viewport=None):
        self.artifacts = pathlib.Path(artifacts)
        self.context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.problems = []
        self.responses = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: self.responses.append(r))

    def attribute(self, selector, name):
        element = self.page.query_selector(selector)
        return element.get_attribute(name) if element else None

    def number(self, selector, name):
        value = self.attribute(selector, name)
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    def http_errors(self):
        return [(r.status, r.url) for r in self.responses if r.status >= 400]

    def assert_clean(self):
        assert self.problems == [], self.problems
        assert self.http_errors() == [], self.http_errors()

    def shot(self, name, selector=None):
        """A screenshot `<name>.png`: the whole page, or the element `selector` matches."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = str(self.artifacts / f"{name}.png")
        if selector:
            self.page.locator(selector).screenshot(path=path)
        else:
            self.page.screenshot(path=path, full_page=True)

    def close(self):
        self.context.close()
