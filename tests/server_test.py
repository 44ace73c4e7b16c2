#!/usr/bin/env python3
"""End-to-end tests of `skim serve`, driven as users drive it: with the
`openai` Python client and with raw HTTP for what a client library would not
send.

    server_test.py SKIM [--model MODEL] [unittest options]

SKIM is the built binary; MODEL the SmolLM2-135M GGUF (default: the cached
one of `scripts/fetch-model smollm2-135m`). Every test bounds its time; the
server runs on a free loopback port.
"""

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_test import cached_model  # noqa: E402

SKIM = None
MODEL = None
SLOTS = 8
SLOT_CTX = 2048
TEXT_FILE = "/usr/share/common-licenses/GPL-3"
# The tests compare greedy text exactly between cold and cached runs and
# between serve and run. With --attn-math auto a CPU with fast bf16 takes bf16
# for prefill tiles but f32 for decode-shaped ones, so the same row can be
# rounded differently depending on how much of the prompt was cached: one
# arithmetic for every row keeps such comparisons exact.
EXACT = ("--attn-math", "f32")


class Server:
    """A `skim serve` process on a free port; stderr is kept for failures."""

    def __init__(self, *extra):
        self.proc = subprocess.Popen(
            [SKIM, "serve", "-m", MODEL, "--port", "0", "-t", "2", *EXACT, *map(str, extra)],
            stderr=subprocess.PIPE, text=True, errors="replace")
        self.log = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("skim serve exited:\n" + "".join(self.log))
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError("skim serve did not start:\n" + "".join(self.log))
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, api_key="none", timeout=120):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, timeout=timeout, max_retries=0)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, parsed JSON or text) of one raw HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        res = conn.getresponse()
        raw = res.read().decode("utf-8", "replace")
        conn.close()
        try:
            return res.status, json.loads(raw)
        except json.JSONDecodeError:
            return res.status, raw

    def metrics(self):
        status, text = self.request("GET", "/metrics")
        assert status == 200
        return {k: float(v) for k, v in re.findall(r"^(skim_\w+) (\S+)$", text, re.M)}

    def stop(self):
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code


SERVER = None


def setUpModule():
    global SERVER
    SERVER = Server("-np", SLOTS, "-c", SLOTS * SLOT_CTX)


def tearDownModule():
    if SERVER:
        SERVER.stop()


def chat(client, content, max_tokens=24, **kw):
    return client.chat.completions.create(model="skim", messages=[{"role": "user", "content": content}],
                                          max_tokens=max_tokens, temperature=kw.pop("temperature", 0), **kw)


def document(n_chars):
    with open(TEXT_FILE, encoding="utf-8") as f:
        return f.read()[:n_chars]


class Api(unittest.TestCase):
    def setUp(self):
        self.client = SERVER.client()

    def test_health_and_models(self):
        self.assertEqual(SERVER.request("GET", "/health"), (200, {"status": "ok"}))
        models = self.client.models.list().data
        self.assertEqual(len(models), 1)
        self.assertTrue(models[0].id.endswith(".gguf"))

    def test_chat_greedy_answer_is_skim_runs(self):
        question = "Name three colors of the rainbow."
        got = chat(self.client, question, max_tokens=32)
        run = subprocess.run([SKIM, "run", "-m", MODEL, "-t", "2", *EXACT, "--chat", "-p", question, "--temp", "0", "-n", "32"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(got.choices[0].message.content, run.stdout[:-1])  # skim run ends with a newline
        self.assertEqual(got.choices[0].message.role, "assistant")

    def test_stream_equals_non_stream_with_usage(self):
        kw = dict(model="skim", prompt="Once upon a time", max_tokens=20, temperature=0)
        whole = self.client.completions.create(**kw)
        chunks = list(self.client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].text)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finish, [whole.choices[0].finish_reason])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)

        streamed_chat = list(chat(self.client, "Say hello.", stream=True))
        self.assertEqual(streamed_chat[0].choices[0].delta.role, "assistant")
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in streamed_chat),
                         chat(self.client, "Say hello.").choices[0].message.content)

    def test_usage_counts_match_the_tokenizer(self):
        prompt = "The quick brown fox jumps over the lazy dog."
        status, tok = SERVER.request("POST", "/tokenize", {"content": prompt, "add_special": True})
        self.assertEqual(status, 200)
        r = self.client.completions.create(model="skim", prompt=prompt, max_tokens=12, temperature=0, logprobs=0)
        self.assertEqual(r.usage.prompt_tokens, len(tok["tokens"]))
        self.assertEqual(r.usage.completion_tokens, len(r.choices[0].logprobs.tokens))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertEqual("".join(r.choices[0].logprobs.tokens), r.choices[0].text)
        status, detok = SERVER.request("POST", "/detokenize", {"tokens": tok["tokens"]})
        self.assertEqual((status, detok["content"]), (200, prompt))

    def test_stop_strings_end_the_text_before_them(self):
        full = chat(self.client, "Count from one to ten in words.", max_tokens=40).choices[0].message.content
        words = full.split()
        self.assertGreater(len(words), 4, full)
        stop = words[3]
        cut = chat(self.client, "Count from one to ten in words.", max_tokens=40, stop=[stop, "\x00never"])
        self.assertEqual(cut.choices[0].message.content, full[:full.index(stop)])
        self.assertEqual(cut.choices[0].finish_reason, "stop")

    def test_seeded_sampling_is_reproducible(self):
        kw = dict(model="skim", prompt="My favourite animal is", max_tokens=24, temperature=1.0, top_p=1.0)
        texts = [self.client.completions.create(seed=s, **kw).choices[0].text for s in (7, 7, 8, 9)]
        self.assertEqual(texts[0], texts[1])
        self.assertTrue(texts[0] != texts[2] or texts[0] != texts[3], texts)

    def test_logprobs_are_log_probabilities(self):
        r = chat(self.client, "What is two plus two?", max_tokens=8, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for entry in content:
            self.assertLessEqual(entry.logprob, 0.0)
            tops = [t.logprob for t in entry.top_logprobs]
            self.assertEqual(len(tops), 3)
            self.assertEqual(tops, sorted(tops, reverse=True))
            self.assertEqual(entry.top_logprobs[0].token, entry.token)  # greedy: the most likely one
            self.assertAlmostEqual(entry.logprob, tops[0], places=5)
            self.assertLessEqual(sum(2.718281828 ** t for t in tops), 1.0 + 1e-5)

    def test_prefix_reuse_gives_the_cold_answer(self):
        doc = document(5000)
        questions = ["What is this text about?", "Who may copy this document?"]
        first = chat(self.client, f"{doc}\n\nQuestion: {questions[0]}", max_tokens=16)
        second = chat(self.client, f"{doc}\n\nQuestion: {questions[1]}", max_tokens=16)
        cached = second.usage.prompt_tokens_details.cached_tokens
        self.assertGreater(cached, 0.9 * first.usage.prompt_tokens, second.usage)
        run = subprocess.run([SKIM, "run", "-m", MODEL, "-t", "2", *EXACT, "--chat", "-p", f"{doc}\n\nQuestion: {questions[1]}",
                              "--temp", "0", "-n", "16", "--no-progress"], capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(second.choices[0].message.content, run.stdout[:-1])

    def test_attention_method_per_request(self):
        doc = document(20000)[12000:19000]
        sparse = chat(self.client, f"{doc}\n\nSummarize.", max_tokens=4, extra_body={"attn": "streaming:sink=64,local=256"})
        self.assertEqual(sparse.model_extra["timings"]["attention"], "streaming:sink=64,local=256")
        # Rows computed by another method are not shared: the dense request prefills the document again.
        dense = chat(self.client, f"{doc}\n\nSummarize briefly.", max_tokens=4)
        self.assertEqual(dense.model_extra["timings"]["attention"], "dense")
        self.assertLess(dense.usage.prompt_tokens_details.cached_tokens, 100)
        again = chat(self.client, f"{doc}\n\nSummarize.", max_tokens=4, extra_body={"attn": "streaming:sink=64,local=256"})
        self.assertGreater(again.usage.prompt_tokens_details.cached_tokens, 1000)
        self.assertEqual(again.choices[0].message.content, sparse.choices[0].message.content)
        status, body = SERVER.request("POST", "/v1/completions", {"prompt": "hi", "attn": "nosuch"})
        self.assertEqual(status, 400, body)
        self.assertIn("nosuch", body["error"]["message"])

    def test_kv_policy_per_request(self):
        doc = document(30000)[21000:27000]
        r = chat(self.client, f"{doc}\n\nSummarize.", max_tokens=4, extra_body={"kv": "snapkv:keep=0.5"})
        timings = r.model_extra["timings"]
        self.assertEqual(timings["kv"], "f16/f16, snapkv:keep=0.5")
        self.assertLess(timings["kv_rows"], 0.6 * r.usage.prompt_tokens)
        plain = chat(self.client, f"{doc}\n\nSummarize.", max_tokens=4)
        self.assertEqual(plain.model_extra["timings"]["kv_rows"], plain.usage.prompt_tokens + 3)
        for bad in ("nosuch", "snapkv:keep=7", 3):
            status, body = SERVER.request("POST", "/v1/completions", {"prompt": "hi", "kv": bad})
            self.assertEqual(status, 400, body)

    def test_kv_types_per_request(self):
        question = "Name three colours."
        r = chat(self.client, question, max_tokens=12, extra_body={"cache_type_k": "q8_0", "cache_type_v": "q4_0"})
        self.assertEqual(r.model_extra["timings"]["kv"], "q8_0/q4_0")
        run = subprocess.run([SKIM, "run", "-m", MODEL, "-t", "2", *EXACT, "--chat", "-p", question, "--temp", "0", "-n", "12",
                              "-ctk", "q8_0", "-ctv", "q4_0", "-ub", "512"], capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(r.choices[0].message.content, run.stdout[:-1])  # skim run ends with a newline
        self.assertEqual(chat(self.client, question, max_tokens=2).model_extra["timings"]["kv"], "f16/f16")
        for bad in ({"cache_type_k": "q3_x"}, {"cache_type_v": 4}, {"cache_type_k": "tq3", "cache_type_v": "nosuch"}):
            status, body = SERVER.request("POST", "/v1/completions", {"prompt": "hi", **bad})
            self.assertEqual(status, 400, body)
            self.assertIn("message", body["error"])

    def test_concurrent_clients_get_their_single_client_answers(self):
        prompts = [f"Write a sentence about the number {i}." for i in range(8)]
        alone = [chat(self.client, p, max_tokens=16).choices[0].message.content for p in prompts]
        failures = []

        def client_session(c):
            client = SERVER.client()
            out = []
            for k in range(4):
                i = (c + k) % len(prompts)
                try:
                    out.append((i, chat(client, prompts[i], max_tokens=16).choices[0].message.content))
                except Exception as e:  # counted, not raised: every failure is reported
                    failures.append(repr(e))
            return out

        start = time.time()
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = [r for rs in pool.map(client_session, range(32)) for r in rs]
        self.assertEqual(failures, [])
        self.assertEqual(len(results), 128)
        mismatched = [(i, text) for i, text in results if text != alone[i]]
        self.assertEqual(mismatched, [])
        self.assertLess(time.time() - start, 300)


class Robustness(unittest.TestCase):
    def assertError(self, status, body, code):
        self.assertEqual(status, code, body)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(body["error"]["code"], code)
        self.assertTrue(body["error"]["message"])

    def test_bad_requests_get_4xx_and_the_server_goes_on(self):
        cases = [
            ("POST", "/v1/chat/completions", b"{not json", 400),
            ("POST", "/v1/chat/completions", b"[1, 2]", 400),
            ("POST", "/v1/chat/completions", {"messages": "hello"}, 400),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, 400),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400),
            ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400),
            ("POST", "/v1/completions", {"prompt": ""}, 400),
            ("POST", "/v1/completions", {"prompt": [1, 2, 10 ** 9]}, 400),
            ("POST", "/v1/completions", {"prompt": "word " * 3000}, 400),  # over a slot's 2048 tokens
            ("POST", "/v1/completions", b"x" * (33 << 20), 413),
            ("POST", "/tokenize", {"content": 5}, 400),
            ("POST", "/detokenize", {"tokens": [-1]}, 400),
            ("GET", "/v1/nothing", None, 404),
        ]
        for method, path, body, code in cases:
            with self.subTest(path=path, body=str(body)[:60]):
                status, reply = SERVER.request(method, path, body)
                self.assertError(status, reply, code)
        r = chat(SERVER.client(), "Still there?", max_tokens=4)
        self.assertEqual(r.usage.completion_tokens, 4)

    def test_client_leaving_mid_stream_frees_its_slot(self):
        before = SERVER.metrics()
        conn = http.client.HTTPConnection("127.0.0.1", SERVER.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "Tell a long story.", "max_tokens": 1500, "ignore_eos": True, "stream": True}),
            headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        self.assertTrue(res.readline().startswith(b"data: "))
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            m = SERVER.metrics()
            if m["skim_requests_processing"] == 0 and m["skim_requests_cancelled_total"] > before["skim_requests_cancelled_total"]:
                break
            time.sleep(0.2)
        self.assertEqual(m["skim_requests_processing"], 0)
        self.assertEqual(m["skim_requests_cancelled_total"], before["skim_requests_cancelled_total"] + 1)
        self.assertLess(m["skim_tokens_predicted_total"] - before["skim_tokens_predicted_total"], 1500)

    def test_api_key(self):
        server = Server("--api-key", "sekrit")
        try:
            self.assertEqual(server.request("GET", "/health")[0], 200)
            status, body = server.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
            self.assertError(status, body, 401)
            with self.assertRaises(openai.AuthenticationError):
                server.client(api_key="wrong").completions.create(model="skim", prompt="hi", max_tokens=2)
            r = server.client(api_key="sekrit").completions.create(model="skim", prompt="hi", max_tokens=2)
            self.assertEqual(r.usage.completion_tokens, 2)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_slot_cache_saved_and_restored_across_a_restart(self):
        with tempfile.TemporaryDirectory() as kv_dir:
            prompt = document(3000) + "\n\nQuestion: what is this text?"
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0}
            server = Server("--slot-save-path", kv_dir)
            try:
                status, first = server.request("POST", "/v1/chat/completions", body)
                self.assertEqual(status, 200, first)
                status, saved = server.request("POST", "/slots/0?action=save", {"filename": "doc.kv"})
                self.assertEqual(status, 200, saved)
                self.assertGreater(saved["n_saved"], first["usage"]["prompt_tokens"] - 1)
                self.assertEqual(saved["n_written"], os.path.getsize(os.path.join(kv_dir, "doc.kv")))
                for name, code in [("../doc.kv", 400), (".hidden", 400), ("a/b", 400)]:
                    self.assertError(*server.request("POST", "/slots/0?action=save", {"filename": name}), code)
                self.assertError(*server.request("POST", "/slots/0?action=restore", {"filename": "none.kv"}), 404)
                self.assertError(*server.request("POST", "/slots/7?action=save", {"filename": "x.kv"}), 400)
                self.assertError(*server.request("POST", "/slots/0?action=fly", {"filename": "x.kv"}), 400)
            finally:
                self.assertEqual(server.stop(), 0)
            with open(os.path.join(kv_dir, "junk.kv"), "wb") as f:
                f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"\x00" * 64)
            server = Server("--slot-save-path", kv_dir)
            try:
                self.assertError(*server.request("POST", "/slots/0?action=restore", {"filename": "junk.kv"}), 400)
                status, restored = server.request("POST", "/slots/0?action=restore", {"filename": "doc.kv"})
                self.assertEqual((status, restored["n_restored"]), (200, saved["n_saved"]), restored)
                status, again = server.request("POST", "/v1/chat/completions", body)
                self.assertEqual(status, 200, again)
                self.assertGreater(again["usage"]["prompt_tokens_details"]["cached_tokens"], 0.9 * first["usage"]["prompt_tokens"])
                self.assertEqual(again["choices"][0]["message"]["content"], first["choices"][0]["message"]["content"])
            finally:
                self.assertEqual(server.stop(), 0)
        self.assertError(*SERVER.request("POST", "/slots/0?action=save", {"filename": "x.kv"}), 501)

    def test_kv_dir_keeps_prefixes_and_sessions_across_slots_and_restarts(self):
        text = document(30000)
        docs = [text[:7000], text[10000:17000]]
        ask = lambda doc, q, **kw: {"messages": [{"role": "user", "content": f"{doc}\n\nQuestion: {q}"}],
                                    "max_tokens": 8, "temperature": 0, **kw}
        with tempfile.TemporaryDirectory() as kv_dir:
            server = Server("-np", 1, "-c", 4096, "--kv-dir", kv_dir, "--cache-ram", 0)  # the disk tier alone
            try:
                status, cold = server.request("POST", "/v1/chat/completions", ask(docs[0], "what is it?"))
                self.assertEqual(status, 200, cold)
                server.request("POST", "/v1/chat/completions", ask(docs[1], "what is it?"))  # takes the only slot
                self.assertEqual(len([f for f in os.listdir(kv_dir) if f.startswith("prefix-")]), 1)
                status, warm = server.request("POST", "/v1/chat/completions", ask(docs[0], "what is it?"))
                self.assertGreater(warm["usage"]["prompt_tokens_details"]["cached_tokens"],
                                   0.9 * cold["usage"]["prompt_tokens"], warm["usage"])
                self.assertEqual(warm["choices"][0]["message"]["content"], cold["choices"][0]["message"]["content"])
                self.assertEqual(server.metrics()["skim_cache_disk_hits_total"], 1)
                status, _ = server.request("POST", "/v1/chat/completions", ask(text[20000:24000], "hi", session="agent-7"))
                self.assertEqual(status, 200)
                self.assertTrue(os.path.exists(os.path.join(kv_dir, "session-agent-7.kv")))
                for bad in ("../x", "a/b", "", 5):
                    self.assertError(*server.request("POST", "/v1/chat/completions", ask("x", "y", session=bad)), 400)
            finally:
                self.assertEqual(server.stop(), 0)
            server = Server("-np", 1, "-c", 4096, "--kv-dir", kv_dir, "--cache-ram", 0)  # a restart keeps the files
            try:
                status, again = server.request("POST", "/v1/chat/completions", ask(docs[1], "what is it?"))
                self.assertGreater(again["usage"]["prompt_tokens_details"]["cached_tokens"], 1000, again["usage"])
                status, agent = server.request("POST", "/v1/chat/completions", ask(text[20000:24000], "and?", session="agent-7"))
                self.assertGreater(agent["usage"]["prompt_tokens_details"]["cached_tokens"], 500, agent["usage"])
                self.assertEqual(server.metrics()["skim_cache_disk_hits_total"], 2)
            finally:
                self.assertEqual(server.stop(), 0)
        self.assertError(*SERVER.request("POST", "/v1/chat/completions", ask("x", "y", session="s1")), 400)

    def test_prefixes_stay_in_memory_after_their_slot_moves_on(self):
        text = document(30000)
        docs = [text[:6000], text[10000:16000]]
        ask = lambda doc, q: {"messages": [{"role": "user", "content": f"{doc}\n\nQuestion: {q}"}], "max_tokens": 8,
                              "temperature": 0}
        server = Server("-np", 1, "-c", 4096, "--cache-ram", 64)
        try:
            status, cold = server.request("POST", "/v1/chat/completions", ask(docs[0], "who is it about?"))
            self.assertEqual(status, 200, cold)
            server.request("POST", "/v1/chat/completions", ask(docs[1], "what is it?"))  # takes the only slot
            status, warm = server.request("POST", "/v1/chat/completions", ask(docs[0], "who is it about?"))
            self.assertGreater(warm["usage"]["prompt_tokens_details"]["cached_tokens"],
                               cold["usage"]["prompt_tokens"] - 80, warm["usage"])  # all whole pages
            self.assertEqual(warm["choices"][0]["message"]["content"], cold["choices"][0]["message"]["content"])
            metrics = server.metrics()
            self.assertEqual(metrics["skim_cache_memory_hits_total"], 1)
            self.assertEqual(metrics["skim_cache_kept_prefixes"], 2)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_kv_dir_size_drops_the_least_recently_used_files(self):
        text = document(30000)
        docs = [text[i * 7000:i * 7000 + 6000] for i in range(4)]
        ask = lambda doc: {"messages": [{"role": "user", "content": f"{doc}\n\nQuestion: what?"}], "max_tokens": 2,
                           "temperature": 0}
        with tempfile.TemporaryDirectory() as kv_dir:
            server = Server("-np", 1, "-c", 4096, "--kv-dir", kv_dir, "--kv-dir-size", 40, "--cache-ram", 0)
            try:
                for doc in docs:  # each takes the slot: the previous prefix (~35 MiB of f16 rows) goes to the folder
                    self.assertEqual(server.request("POST", "/v1/chat/completions", ask(doc))[0], 200)
                sizes = [os.path.getsize(os.path.join(kv_dir, f)) for f in os.listdir(kv_dir)]
                self.assertEqual(len(sizes), 1, sizes)
                self.assertLessEqual(sum(sizes), 40 << 20)
                status, newest = server.request("POST", "/v1/chat/completions", ask(docs[2]))  # docs[3] goes out
                self.assertGreater(newest["usage"]["prompt_tokens_details"]["cached_tokens"], 1000)  # kept
                status, oldest = server.request("POST", "/v1/chat/completions", ask(docs[0]))
                self.assertLess(oldest["usage"]["prompt_tokens_details"]["cached_tokens"], 100)  # dropped
            finally:
                self.assertEqual(server.stop(), 0)

    def test_two_servers_share_a_kv_dir(self):
        doc = document(30000)[3000:9000]
        body = lambda q: {"messages": [{"role": "user", "content": f"{doc}\n\nQuestion: {q}"}], "max_tokens": 4,
                          "temperature": 0, "session": "shared-1"}
        with tempfile.TemporaryDirectory() as kv_dir:
            a, b = Server("-np", 1, "--kv-dir", kv_dir), Server("-np", 1, "--kv-dir", kv_dir)
            try:
                self.assertEqual(a.request("POST", "/v1/chat/completions", body("what is it?"))[0], 200)
                status, reply = b.request("POST", "/v1/chat/completions", body("who wrote it?"))  # written after b started
                self.assertEqual(status, 200, reply)
                self.assertGreater(reply["usage"]["prompt_tokens_details"]["cached_tokens"], 1000, reply["usage"])
            finally:
                self.assertEqual(a.stop(), 0)
                self.assertEqual(b.stop(), 0)

    def test_the_chat_page_is_served(self):
        with urllib.request.urlopen(SERVER.url + "/", timeout=30) as r:
            page = r.read().decode()
        self.assertIn("v1/chat/completions", page)

    def test_a_port_in_use_is_one_error_line(self):
        run = subprocess.run([SKIM, "serve", "-m", MODEL, "--port", str(SERVER.port)], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(run.returncode, 1)
        lines = run.stderr.strip().splitlines()
        self.assertTrue(lines[-1].startswith("error: cannot listen on"), run.stderr)
        self.assertFalse(any(line.startswith("error:") for line in lines[:-1]), run.stderr)


def main():
    global SKIM, MODEL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("skim")
    parser.add_argument("--model", default=None)
    args, rest = parser.parse_known_args()
    SKIM = os.path.abspath(args.skim)
    MODEL = args.model or cached_model()
    if not MODEL:
        sys.exit("server_test: no cached SmolLM2-135M; run scripts/fetch-model smollm2-135m")
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)


if __name__ == "__main__":
    main()
