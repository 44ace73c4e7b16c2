"""skim serve's benchmarks (scripts/serve-bench is the entry point).

Both servers get the same token ids (tokenized once by skim's /tokenize), the
same slots, context and threads, and run one after the other on an otherwise
idle machine; every figure that compares them comes from one run.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def cpu_name():
    with open("/proc/cpuinfo") as f:
        m = re.search(r"model name\s*:\s*(.*)", f.read())
    return m.group(1) if m else "unknown CPU"


def cached_model(name="smollm2-135m"):
    directory = os.path.join(os.environ.get("SKIM_CACHE") or os.path.expanduser("~/.cache/skim"), "models", name)
    for f in sorted(os.listdir(directory)):
        if f.endswith(".gguf"):
            return os.path.join(directory, f)
    sys.exit(f"serve-bench: no cached {name}; run scripts/fetch-model {name}")


class Process:
    """A server process: on `port`, or on the port its log names (`ready`: a regex whose group 1 is the port)."""

    def __init__(self, argv, ready=None, port=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        self.log = []
        self.port = port
        if port is None:
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(ready, line)
                if m:
                    self.port = int(m.group(1))
                    break
            if self.port is None:
                raise RuntimeError(f"{argv[0]} did not start:\n" + "".join(self.log[-20:]))
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        wait_healthy(self.port)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_healthy(port, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, _ = request(port, "GET", "/health")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no healthy server on port {port}")


def request(port, method, path, body=None, timeout=3600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=None if body is None else json.dumps(body), headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, json.loads(data) if data else None


def stream_completion(port, body):
    """(time to first token in s, total s, generated text, usage or timings) of one streamed completion."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    if res.status != 200:
        raise RuntimeError(f"HTTP {res.status}: {res.read()[:300]}")
    first, text, timings = None, [], {}
    for raw in res:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
        for c in chunk.get("choices", []):
            if c.get("text"):
                first = first or time.perf_counter()
                text.append(c["text"])
        timings = chunk.get("timings", timings)
    conn.close()
    end = time.perf_counter()
    return (first or end) - start, end - start, "".join(text), timings


def skim_server(args, extra):
    return Process([args.skim, "serve", "-m", args.model, "--port", "0", "-t", str(args.threads), *extra],
                   r"listening on http://[^:]+:(\d+)")


def llama_server(args, port, extra):
    binary = subprocess.run([args.llama_server_builder], capture_output=True, text=True, check=True).stdout.split()[-1]
    return Process([binary, "-m", args.model, "--port", str(port), "-t", str(args.threads), "-tb", str(args.threads),
                    "--no-webui", *extra], port=port)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haystack_ids(args, port, n_tokens, offset_chars):
    with open(os.path.join(args.haystack, "austen.txt"), encoding="utf-8") as f:
        f.seek(0)
        text = f.read(offset_chars + n_tokens * 8)[offset_chars:]
    _, tok = request(port, "POST", "/tokenize", {"content": text, "add_special": False})
    ids = tok["tokens"]
    if len(ids) < n_tokens:
        sys.exit("serve-bench: the haystack text is too short")
    return ids[:n_tokens]


def reuse(args):
    """Prefix reuse: the same document, two questions; then another document takes
    the only slot, and a third question on the first comes from its kept prefix."""
    ctx = args.doc_tokens + 512
    server = skim_server(args, ["-np", "1", "-c", str(ctx)])
    try:
        doc = haystack_ids(args, server.port, args.doc_tokens, 200000)
        other = haystack_ids(args, server.port, args.doc_tokens, 400000)
        questions = ["\n\nQuestion: Who is the main character of this text?\nAnswer:",
                     "\n\nQuestion: Where does the story take place?\nAnswer:",
                     "\n\nQuestion: Who is speaking at the end?\nAnswer:"]
        q_ids = [request(server.port, "POST", "/tokenize", {"content": q})[1]["tokens"] for q in questions]
        body = lambda q, d=doc: {"prompt": d + q, "max_tokens": 16, "temperature": 0}
        rows = [("question 1 (cold)", *stream_completion(server.port, body(q_ids[0]))),
                ("question 2 (prefix reused)", *stream_completion(server.port, body(q_ids[1]))),
                ("another document takes the slot (cold)", *stream_completion(server.port, body(q_ids[0], other))),
                ("question 3 (kept prefix, --cache-ram)", *stream_completion(server.port, body(q_ids[2])))]
    finally:
        server.stop()
    # The second and third questions cold, each in a fresh server.
    cold = {}
    for i in (1, 2):
        server = skim_server(args, ["-np", "1", "-c", str(ctx)])
        try:
            cold[i] = stream_completion(server.port, body(q_ids[i]))
        finally:
            server.stop()
    ttft1 = rows[0][1]
    print(f"CPU: {cpu_name()}; model {os.path.basename(args.model)}, {args.threads} threads; documents {len(doc)} tokens")
    print("| request | prompt tokens | cached | time to first token (ms) | vs first |")
    print("|---|---:|---:|---:|---:|")
    for name, ttft, _, _, t in rows:
        print(f"| {name} | {t['prompt_n'] + t['cache_n']} | {t['cache_n']} | {ttft * 1000:.0f} | {ttft / ttft1:.3f} |")
    for i in (1, 2):
        print(f"| question {i + 1} (cold, fresh server) | {len(doc) + len(q_ids[i])} | 0 | {cold[i][0] * 1000:.0f} | "
              f"{cold[i][0] / ttft1:.2f} |")
    print(f"\nsecond answer with reuse == cold answer: {rows[1][3] == cold[1][2]} ({rows[1][3]!r})")
    print(f"third answer from the kept prefix == cold answer: {rows[3][3] == cold[2][2]} ({rows[3][3]!r})")


def persist(args):
    """skim run --prompt-cache: a cold prefill vs reading the saved cache, per KV format."""
    import tempfile
    with open(os.path.join(args.haystack, "austen.txt"), encoding="utf-8") as f:
        text = f.read(300000)[200000:200000 + args.doc_tokens * 4]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        doc = os.path.join(tmp, "doc.txt")
        with open(doc, "w", encoding="utf-8") as f:
            f.write(text)
        for kv in args.kv_types.split(","):
            cache = os.path.join(tmp, f"{kv}.kv")
            argv = [args.skim, "run", "-m", args.model, "-f", doc, "-c", str(args.doc_tokens + 512), "-n", "8", "--temp", "0",
                    "-t", str(args.threads), "--no-progress", "-ctk", kv, "-ctv", kv, "--prompt-cache", cache]
            runs = [subprocess.run(argv, capture_output=True, text=True, check=True) for _ in range(2)]
            ttft = [float(re.search(r"time to first token =\s*([\d.]+) ms", r.stderr).group(1)) for r in runs]
            m = re.search(r"(\d+) of (\d+) prompt tokens reused .* read in (\d+) ms", runs[1].stderr)
            read_ms = float(m.group(3))
            rows.append((kv, int(m.group(2)), int(m.group(1)), ttft[0], read_ms, ttft[1], os.path.getsize(cache),
                         runs[0].stdout == runs[1].stdout))
    print(f"CPU: {cpu_name()}; model {os.path.basename(args.model)}, {args.threads} threads")
    print("| K/V pages | prompt tokens | reused | cold prefill to first token (ms) | read cache (ms) | then first token (ms) | "
          "speedup | file size (MiB) | same answer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kv, n, reused, cold, read, warm, size, same in rows:
        print(f"| {kv} | {n} | {reused} | {cold:.0f} | {read:.0f} | {warm:.0f} | {cold / (read + warm):.1f}x | "
              f"{size / 1048576:.1f} | {same} |")


def throughput(args):
    clients = [int(c) for c in args.clients.split(",")]
    ctx = args.np * (args.prompt_tokens + args.gen_tokens + 64)
    tok_server = skim_server(args, ["-np", "1", "-c", "4096"])
    try:
        prompts = [haystack_ids(args, tok_server.port, args.prompt_tokens, 10000 + 20000 * i) for i in range(max(clients))]
    finally:
        tok_server.stop()

    def load(port, n):
        body = lambda i: {"prompt": prompts[i], "max_tokens": args.gen_tokens, "temperature": 0, "ignore_eos": True}
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(lambda i: stream_completion(port, body(i)), range(n)))
        wall = time.perf_counter() - start
        ttfts = sorted(r[0] for r in results)
        p = lambda q: ttfts[min(len(ttfts) - 1, int(round(q * (len(ttfts) - 1))))]
        return {"gen_tps": n * args.gen_tokens / wall, "all_tps": n * (args.prompt_tokens + args.gen_tokens) / wall,
                "p50": p(0.5), "p99": p(0.99), "wall": wall}

    rows = []
    for rep in range(args.repeat):
        for engine in ("skim", "llama-server"):
            if engine == "skim":
                server = skim_server(args, ["-np", str(args.np), "-c", str(ctx)])
            else:
                server = llama_server(args, free_port(), ["-np", str(args.np), "-c", str(ctx)])
            try:
                for n in clients:
                    load(server.port, min(n, 2))  # warm-up
                    r = load(server.port, n)
                    rows.append((rep, engine, n, r))
                    print(f"[serve-bench] {engine} {n} clients: {r['gen_tps']:.1f} generated t/s, "
                          f"p50 TTFT {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms", file=sys.stderr)
            finally:
                server.stop()
    print(f"CPU: {cpu_name()}; model {os.path.basename(args.model)}, {args.threads} threads, -np {args.np}, -c {ctx}; "
          f"{args.prompt_tokens}-token prompts, {args.gen_tokens} generated tokens each (ignore_eos), greedy")
    print("| clients | run | skim gen t/s | llama-server gen t/s | ratio | skim p50 / p99 TTFT (s) | "
          "llama-server p50 / p99 TTFT (s) |")
    print("|---:|---:|---:|---:|---:|---|---|")
    for rep in range(args.repeat):
        for n in clients:
            s = next(r for (k, e, c, r) in rows if k == rep and e == "skim" and c == n)
            l = next(r for (k, e, c, r) in rows if k == rep and e == "llama-server" and c == n)
            print(f"| {n} | {rep + 1} | {s['gen_tps']:.1f} | {l['gen_tps']:.1f} | {s['gen_tps'] / l['gen_tps']:.2f}x | "
                  f"{s['p50']:.2f} / {s['p99']:.2f} | {l['p50']:.2f} / {l['p99']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["reuse", "persist", "throughput"])
    parser.add_argument("--skim", required=True)
    parser.add_argument("--llama-server-builder", required=True)
    parser.add_argument("--haystack", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--doc-tokens", type=int, default=8000)
    parser.add_argument("--clients", default="8,16")
    parser.add_argument("--np", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--kv-types", default="f16,q8_0,q4_0")
    args = parser.parse_args()
    args.model = args.model or cached_model()
    {"reuse": reuse, "persist": persist, "throughput": throughput}[args.what](args)


if __name__ == "__main__":
    main()
