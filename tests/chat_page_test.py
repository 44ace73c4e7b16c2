#!/usr/bin/env python3
"""The chat page of `skim serve`, in headless Chromium (Debian's `chromium`),
driven over the DevTools protocol as a user would use it: the page loads and
names the model, a question about a pasted document gets a streamed answer
with its timings, and a second question on the same document shows the
cache hit.

    chat_page_test.py SKIM [--model MODEL] [unittest options]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import websocket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_test  # noqa: E402
from cli_test import cached_model  # noqa: E402

TEXT_FILE = "/usr/share/common-licenses/GPL-3"


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            raise RuntimeError("no chromium in PATH (scripts/setup installs Debian's chromium)")
        self.profile = tempfile.mkdtemp()
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        browser_ws = None
        deadline = time.time() + 60
        for line in self.proc.stderr:
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                browser_ws = m.group(1)
                break
            if time.time() > deadline:
                break
        if not browser_ws:
            raise RuntimeError("chromium did not start its DevTools endpoint")
        port = re.search(r":(\d+)/", browser_ws).group(1)
        import urllib.request
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self):
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


class ChatPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = server_test.Server("-np", 2, "-c", 8192)
        cls.browser = Browser()

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.server.stop()

    def ask(self, question):
        """Types the question, clicks Ask, waits for the answer; returns the newest turn's fields."""
        b = self.browser
        b.eval(f"document.getElementById('question').value = {json.dumps(question)}")
        b.eval("document.getElementById('ask').click()")
        b.wait_for("(() => { const t = document.querySelector('#turns .turn'); "
                   f"return t && t.querySelector('.q').textContent === {json.dumps(question)} && t.dataset.done; }})()")
        return b.eval("(() => { const t = document.querySelector('#turns .turn'); return {done: t.dataset.done, "
                      "cached: Number(t.dataset.cached), answer: t.querySelector('.a').textContent, "
                      "stats: t.querySelector('.stats').textContent}; })()")

    def test_questions_on_a_document_stream_answers_and_hit_the_cache(self):
        b = self.browser
        b.call("Page.enable")
        b.call("Page.navigate", url=self.server.url + "/")
        b.wait_for("document.readyState === 'complete' && document.getElementById('model').textContent.includes('slot')")
        self.assertIn(".gguf", b.eval("document.getElementById('model').textContent"))
        with open(TEXT_FILE, encoding="utf-8") as f:
            doc = f.read()[:6000]
        b.eval(f"document.getElementById('doc').value = {json.dumps(doc)}")
        b.eval("document.getElementById('max').value = 24")

        first = self.ask("What is this document about?")
        self.assertEqual(first["done"], "1", first)
        self.assertTrue(first["answer"].strip(), first)
        self.assertRegex(first["stats"], r"prefill [\d.]+ t/s.*decode \d+ tokens")
        self.assertEqual(first["cached"], 0, first)

        second = self.ask("Who may copy it?")
        self.assertEqual(second["done"], "1", second)
        self.assertTrue(second["answer"].strip(), second)
        self.assertGreater(second["cached"], 1000, second)  # the document's tokens came from the cache
        self.assertIn(f"({second['cached']} cached)", second["stats"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("skim")
    parser.add_argument("--model", default=None)
    args, rest = parser.parse_known_args()
    server_test.SKIM = os.path.abspath(args.skim)
    server_test.MODEL = args.model or cached_model()
    if not server_test.MODEL:
        sys.exit("chat_page_test: no cached SmolLM2-135M; run scripts/fetch-model smollm2-135m")
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)


if __name__ == "__main__":
    main()
