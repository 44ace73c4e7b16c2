#!/usr/bin/env python3
"""End-to-end tests of the skim command line, run as a user runs it.

    cli_test.py SKIM [--model MODEL] [unittest options]

SKIM is the built binary; MODEL the SmolLM2-135M GGUF (default: where
`scripts/fetch-model smollm2-135m` caches it, as paths::model finds it). A
missing model fails every test with the command that fetches it: a skipped
test would read as a pass.

Good inputs must exit 0 with the right content, checked against the GGUF read
independently with the `gguf` package where possible. Bad inputs must exit
with a positive status (not a signal) and print exactly one line, starting
with "error:" and naming what was wrong.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

MODEL_NAME = "smollm2-135m"
TIMEOUT_S = 120  # per command; the slowest good case takes a few seconds
TEXT_FILE = "/usr/share/common-licenses/GPL-3"  # long English prose, as tests/test_support.h uses

SKIM = None
MODEL = None


def cached_model_dir():
    cache = os.environ.get("SKIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "skim")
    return os.path.join(cache, "models", MODEL_NAME)


def cached_model():
    """The .gguf in ${SKIM_CACHE:-~/.cache/skim}/models/NAME, as paths::model finds it."""
    directory = cached_model_dir()
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.endswith(".gguf"):
                return os.path.join(directory, name)
    return None


def skim(*args, timeout=TIMEOUT_S):
    return subprocess.run([SKIM, *map(str, args)], capture_output=True, text=True, errors="replace", timeout=timeout)


def model_metadata():
    from gguf import GGUFReader  # the venv's; imported late so a missing model is reported first

    reader = GGUFReader(MODEL)
    arch = reader.fields["general.architecture"].contents()
    return {
        "arch": arch,
        "name": reader.fields["general.name"].contents(),
        "layers": reader.fields[f"{arch}.block_count"].contents(),
        "embedding": reader.fields[f"{arch}.embedding_length"].contents(),
        "context": reader.fields[f"{arch}.context_length"].contents(),
        "tokens": reader.fields["tokenizer.ggml.tokens"].contents(),
        "add_bos": reader.fields["tokenizer.ggml.add_bos_token"].contents(),
        "bos": reader.fields["tokenizer.ggml.bos_token_id"].contents(),
        "n_tensors": len(reader.tensors),
    }


class ModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if MODEL is None:
            raise AssertionError(f"model {MODEL_NAME} is not in {cached_model_dir()}: run scripts/fetch-model {MODEL_NAME}")
        if not os.path.isfile(MODEL):
            raise AssertionError(f"model file {MODEL} does not exist")
        cls.tmp = tempfile.mkdtemp(prefix="skim-cli-test-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def write(self, name, data):
        path = os.path.join(self.tmp, name)
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        return path

    def assert_ok(self, result):
        self.assertEqual(result.returncode, 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")


class GoodInputs(ModelTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.meta = model_metadata()

    def test_help_exits_zero(self):
        for args in (["--help"], ["run", "--help"], ["eval", "--help"]):
            with self.subTest(args=args):
                r = skim(*args)
                self.assert_ok(r)
                self.assertIn("Options:", r.stdout)
        self.assertIn("--ctx-size", skim("run", "--help").stdout)

    def test_run_greedy_completes_a_fact(self):
        r = skim("run", "-m", MODEL, "-p", "The capital of France is", "-n", 8, "-c", 64, "--temp", 0)
        self.assert_ok(r)
        self.assertIn("Paris", r.stdout)
        self.assertRegex(r.stderr, r"prompt eval time = .* /\s+5 tokens")

    def test_run_prompt_cache_is_reused_and_refused_for_other_settings(self):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "prompt.kv")
            # One arithmetic for every row (server_test.EXACT says why): the texts are compared exactly.
            args = ("run", "-m", MODEL, "-f", TEXT_FILE, "-c", 8192, "-n", 6, "--temp", 0, "--no-progress",
                    "--attn-math", "f32", "--prompt-cache", cache)
            cold = skim(*args)
            self.assert_ok(cold)
            self.assertRegex(cold.stderr, r"prompt cache .*: \d+ tokens saved")
            warm = skim(*args)
            self.assert_ok(warm)
            self.assertEqual(warm.stdout, cold.stdout)
            m = re.search(r"prompt cache .*: (\d+) of (\d+) prompt tokens reused", warm.stderr)
            self.assertTrue(m, warm.stderr)
            self.assertGreater(int(m.group(1)), int(m.group(2)) - 10)
            other = skim(*args, "-ctk", "q8_0")
            self.assertEqual(other.returncode, 1)
            self.assertEqual(other.stderr.strip().splitlines()[-1][:6], "error:")
            self.assertIn("was written with kv", other.stderr)
            self.assertEqual(len([l for l in (other.stderr + other.stdout).splitlines() if l.strip()]), 1, other.stderr)

    def test_run_bf16_kv_completes_a_fact(self):
        r = skim("run", "-m", MODEL, "-p", "The capital of France is", "-n", 8, "-c", 64, "--temp", 0, "-ctk", "bf16", "-ctv", "bf16")
        self.assert_ok(r)
        self.assertIn("Paris", r.stdout)

    def test_run_parallel_continuations(self):
        # -np 3: three sequences after one shared prefill; seed s, s+1, s+2. Greedy: all three the same text.
        r = skim("run", "-m", MODEL, "-p", "The capital of France is", "-n", 8, "-c", 64, "--temp", 0, "-np", 3)
        self.assert_ok(r)
        texts = re.findall(r"--- sequence \d \(seed \d+, stop: \w+\) ---\n(.*)", r.stdout)
        self.assertEqual(len(texts), 3, r.stdout)
        self.assertEqual(len(set(texts)), 1, r.stdout)
        self.assertIn("Paris", texts[0])
        self.assertIn("3 sequences", r.stderr)
        sampled = skim("run", "-m", MODEL, "-p", "Once upon a time", "-n", 12, "-c", 64, "--temp", 0.9, "-s", 7, "-np", 3)
        self.assert_ok(sampled)
        self.assertIn("(seed 9, stop:", sampled.stdout)

    def test_batched_bench_table(self):
        r = skim("batched-bench", "-m", MODEL, "-npp", 32, "-ntg", 4, "-npl", "1,3", "--peer", "none")
        self.assert_ok(r)
        rows = [line for line in r.stdout.splitlines() if line.startswith("|") and "| skim |" in line]
        self.assertEqual(len(rows), 2, r.stdout)

    def test_run_prompt_file_until_end_of_context(self):
        # -n -1 is llama.cpp's "until end of generation": here the 24-token context ends it, or EOS.
        prompt = self.write("prompt.txt", "Once upon a time")
        r = skim("run", "-m", MODEL, "-f", prompt, "-n", -1, "-c", 24, "--temp", 0, "--ignore-eos")
        self.assert_ok(r)
        self.assertIn("stop: context", r.stderr)

    def test_run_seed_reproduces_sampling(self):
        # A fixed seed gives the same sampled text; -1 (llama.cpp's "random") is accepted.
        args = ["run", "-m", MODEL, "-p", "Once upon a time", "-n", 12, "-c", 64, "--temp", 0.9]
        first, second = skim(*args, "-s", 7), skim(*args, "-s", 7)
        self.assert_ok(first)
        self.assertEqual(first.stdout, second.stdout)
        self.assertIn("seed 7,", first.stderr)
        self.assert_ok(skim(*args, "-s", -1))

    def test_run_ctx_zero_is_the_models_context(self):
        r = skim("run", "-m", MODEL, "-p", "Hi", "-n", 1, "-c", 0, "--temp", 0)
        self.assert_ok(r)
        self.assertIn(f"context {self.meta['context']},", r.stderr)
        self.assertNotIn("warning", r.stderr)

    def test_run_ctx_beyond_training_warns(self):
        trained = self.meta["context"]
        r = skim("run", "-m", MODEL, "-p", "Hi", "-n", 1, "-c", 2 * trained, "--temp", 0)
        self.assert_ok(r)
        warnings = [line for line in r.stderr.splitlines() if "warning" in line]
        self.assertEqual(len(warnings), 1, r.stderr)
        self.assertIn(f"trained context of {trained}", warnings[0])
        # Dual chunk attention, or RoPE scaling that stretches the trained context that far: no warning.
        r = skim("run", "-m", MODEL, "-p", "Hi", "-n", 1, "-c", 2 * trained, "--temp", 0, "--dca", trained)
        self.assert_ok(r)
        self.assertNotIn("warning", r.stderr)
        r = skim("run", "-m", MODEL, "-p", "Hi", "-n", 1, "-c", 2 * trained, "--temp", 0,
                 "--rope-scaling", "yarn", "--rope-scale", 2)
        self.assert_ok(r)
        self.assertNotIn("warning", r.stderr)

    def test_info_reports_rope_scaling(self):
        r = skim("info", "-m", MODEL, "--rope-scaling", "yarn", "--rope-scale", 4)
        self.assert_ok(r)
        self.assertRegex(r.stdout, r"scaling yarn \(factor 4, original context %d, mscale 1\.1386\)" % self.meta["context"])

    def test_tokenize_matches_the_vocabulary(self):
        vocab = self.meta["tokens"]
        expected = [vocab.index(piece) for piece in ("The", "Ġcapital", "Ġof", "ĠFrance", "Ġis")]
        r = skim("tokenize", "-m", MODEL, "-p", "The capital of France is")
        self.assert_ok(r)
        self.assertEqual([int(x) for x in r.stdout.split()], expected)
        r = skim("tokenize", "-m", MODEL, "-p", "The capital of France is", "--add-special")
        self.assert_ok(r)
        self.assertEqual([int(x) for x in r.stdout.split()], ([self.meta["bos"]] if self.meta["add_bos"] else []) + expected)

    def test_tokenize_special_tokens_only_when_asked(self):
        special = self.meta["tokens"][1]  # <|im_start|>
        r = skim("tokenize", "-m", MODEL, "-p", special, "--parse-special")
        self.assert_ok(r)
        self.assertEqual(r.stdout.split(), ["1"])
        r = skim("tokenize", "-m", MODEL, "-p", special)
        self.assert_ok(r)
        self.assertGreater(len(r.stdout.split()), 1)

    def test_info_matches_the_gguf_metadata(self):
        r = skim("info", "-m", MODEL)
        self.assert_ok(r)
        fields = dict(re.findall(r"^([a-z -]+):\s+(.*)$", r.stdout, re.M))
        m = self.meta
        self.assertEqual(fields["architecture"], m["arch"])
        self.assertEqual(fields["name"], m["name"])
        self.assertEqual(fields["layers"], str(m["layers"]))
        self.assertEqual(fields["embedding"], str(m["embedding"]))
        self.assertEqual(fields["context length"], str(m["context"]))
        self.assertTrue(fields["vocabulary"].startswith(f"{len(m['tokens'])} "), fields["vocabulary"])
        self.assertIn(f" {m['n_tensors']} tensors", fields["size"])

    def test_info_lists_attention_methods_without_a_model(self):
        r = skim("info", "--attn")
        self.assert_ok(r)
        self.assertRegex(r.stdout, r"(?m)^dense\s")
        self.assertRegex(r.stdout, r"(?m)^streaming\s")

    def test_info_lists_kv_formats_and_policies_without_a_model(self):
        r = skim("info", "--kv")
        self.assert_ok(r)
        self.assertRegex(r.stdout, r"(?m)^q4_0\s+36\s+72\s")  # llama.cpp's block_q4_0: 18 bytes per 32 values
        self.assertRegex(r.stdout, r"(?m)^tq3\s")
        self.assertRegex(r.stdout, r"(?m)^snapkv\s")

    def test_run_with_a_policy_reports_the_rows_and_bytes_it_kept(self):
        prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
        r = skim("run", "-m", MODEL, "-p", prompt, "-n", 2, "--temp", 0, "--kv", "snapkv:keep=0.5", "-ctk", "q8_0", "-ctv", "q4_0")
        self.assert_ok(r)
        match = re.search(r"held for (\d+) of (\d+) tokens \(K q8_0, V q4_0, policy snapkv:keep=0.5\): ([0-9.]+)x less", r.stderr)
        self.assertIsNotNone(match, r.stderr)
        kept, seen, ratio = int(match.group(1)), int(match.group(2)), float(match.group(3))
        self.assertTrue(0.45 * seen <= kept <= 0.55 * seen + 2, (kept, seen))  # half the prompt, then the decoded tokens
        self.assertGreater(ratio, 4.0)  # half the rows, each about a third of f16's bytes

    def test_run_with_a_per_layer_budget_reports_the_rows_each_layer_kept(self):
        prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
        r = skim("run", "-m", MODEL, "-p", prompt, "-n", 2, "--temp", 0, "--kv", "pyramid:keep=0.5")
        self.assert_ok(r)
        match = re.search(r"held for (\d+) \(per layer (\d+)\.\.(\d+)\) of (\d+) tokens", r.stderr)
        self.assertIsNotNone(match, r.stderr)
        mean, fewest, most, seen = (int(g) for g in match.groups())
        self.assertTrue(fewest < mean < most, match.groups())  # budgets fall from the first layer to the last
        self.assertTrue(0.45 * seen <= mean <= 0.55 * seen + 2, (mean, seen))

    def test_perplexity_is_finite_and_sane(self):
        r = skim("perplexity", "-m", MODEL, "-f", TEXT_FILE, "-c", 128, "--chunks", 1)
        self.assert_ok(r)
        match = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", r.stdout)
        self.assertIsNotNone(match, r.stdout)
        ppl = float(match.group(1))
        self.assertTrue(math.isfinite(ppl) and 1.5 < ppl < 200, ppl)
        self.assertIn("1 windows of 128 tokens", r.stderr)

    def test_bench_prints_its_table(self):
        for gemm, math in (("int8", "f32"), ("f32", "bf16"), ("bf16", "f32")):
            r = skim("bench", "-m", MODEL, "--peer", "none", "-p", 64, "-n", 8, "-r", 1, "--gemm", gemm,
                     "--attn-math", math, "--profile")
            self.assert_ok(r)
            self.assertIn(f"prefill GEMM {gemm}, attention {math}", r.stdout)
            lines = r.stdout.splitlines()
            header = lines.index("| model | engine | attn | threads | test | t/s | vs dense | density | plan ms "
                                 "| attn ms | peak RSS MiB |")
            table = lines[header + 2:lines.index("", header)]
            rows = {cells[4]: float(cells[5].split()[0])
                    for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}
            self.assertEqual(sorted(rows), ["pp64", "tg8"])
            self.assertTrue(all(rate > 0 for rate in rows.values()), rows)
            # The profile's shares of each test's forward passes add up.
            profile = lines[lines.index("| test | attn | forward ms | weight GEMMs | attention | of it planning "
                                        "| KV store | norms, RoPE, other |") + 2:]
            self.assertEqual(len(profile), 2, r.stdout)
            for line in profile:
                cells = [c.strip() for c in line.strip("|").split("|")]
                total = float(cells[2])
                parts = [float(cells[i].split()[0]) for i in (3, 4, 6, 7)]
                self.assertGreater(total, 0, line)
                # Each of the five cells is rounded to 0.1 ms: their sum may be off by 5 x 0.05.
                self.assertAlmostEqual(sum(parts), total, delta=0.05 * (len(parts) + 1) + 1e-9, msg=line)
                self.assertTrue(all(p >= 0 for p in parts[:3]), line)

    def test_eval_passkey_writes_results(self):
        out = os.path.join(self.tmp, "eval")
        r = skim("eval", "-m", MODEL, "--tasks", "passkey", "--lengths", 512, "--samples", 1, "--depths", 50,
                 "--no-plots", "--out", out)
        self.assert_ok(r)
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
        self.assertEqual(len(results["records"]), 1, results)
        record = results["records"][0]
        self.assertEqual((record["task"], record["length"], record["method"]), ("passkey", 512, "dense"))
        with open(os.path.join(out, "summary.json")) as f:
            json.load(f)
        self.assertIn("passkey", r.stdout)  # report.md, also printed

    def test_calibrate_writes_json(self):
        out = os.path.join(self.tmp, "calibration.json")
        r = skim("calibrate", "-m", MODEL, "-f", TEXT_FILE, "--len", 256, "--ubatch-size", 128, "-o", out, "-q")
        self.assert_ok(r)
        with open(out) as f:
            calibration = json.load(f)
        self.assertEqual(calibration["tokens"], 256)
        self.assertEqual(calibration["layers"], self.meta["layers"])
        self.assertEqual(len(calibration["minference"]["heads"]), self.meta["layers"] * calibration["heads"])
        self.assertIn(f"wrote {out}", r.stdout)
        # Routing: one entry per layer, and the spec to use printed.
        r = skim("calibrate", "-m", MODEL, "-f", TEXT_FILE, "--len", 256, "--ubatch-size", 128, "-o", out, "-q",
                 "--route", "s2o:target=0.9,min_len=0")
        self.assert_ok(r)
        with open(out) as f:
            route = json.load(f)["route"]
        self.assertEqual(len(route["layers"]), self.meta["layers"])
        self.assertIn("--attn s2o:target=0.9,min_len=0", r.stdout)


class BadInputs(ModelTest):
    """Every mistake: a positive exit status, one line "error: ..." naming the problem."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        with open(MODEL, "rb") as f:
            model = f.read()
        cls.files = {}
        for name, data in {"head1000.gguf": model[:1000], "half.gguf": model[: len(model) // 2],
                           "random.gguf": os.urandom(4096), "empty.gguf": b"", "prompt.txt": b"Hello"}.items():
            cls.files[name] = os.path.join(cls.tmp, name)
            with open(cls.files[name], "wb") as f:
                f.write(data)
        cls.files["dir"] = os.path.join(cls.tmp, "a-directory")
        os.mkdir(cls.files["dir"])

    def assert_one_error_line(self, args, names):
        result = skim(*args)
        output = result.stderr + result.stdout
        context = f"skim {' '.join(map(str, args))}\nexit {result.returncode}\n{output}"
        # Negative: killed by a signal; 128+N: a shell's way of saying the same.
        self.assertTrue(0 < result.returncode < 128, context)
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, context)
        self.assertTrue(lines[0].startswith("error: "), context)
        self.assertIn(names, lines[0], context)

    def check(self, cases):
        for args, names in cases:
            with self.subTest(args=" ".join(map(str, args))):
                self.assert_one_error_line(args, names)

    def test_eval_refuses_a_broken_fidelity_file_before_running(self):
        out = os.path.join(self.tmp, "eval-broken")
        os.makedirs(out)
        with open(os.path.join(out, "fidelity.json"), "w") as f:
            f.write('{"n_layer": 30, "n_he')  # cut short, as a killed writer leaves it
        self.assert_one_error_line(["eval", "-m", MODEL, "--tasks", "passkey", "--lengths", 512, "--samples", 1,
                                    "--no-plots", "--out", out], "cannot resume from")
        self.assertFalse(os.path.exists(os.path.join(out, "results.json")))

    def test_missing_peer_names_its_setup_script(self):
        env = dict(os.environ, SKIM_OPENVINO=os.path.join(self.tmp, "absent"),
                   SKIM_IK_LLAMA_CPP=os.path.join(self.tmp, "absent"))
        for peer, script in (("openvino", "scripts/setup-openvino"), ("ik_llama", "scripts/build-ik-llama-cpp")):
            with self.subTest(peer=peer):
                r = subprocess.run([SKIM, "bench", "-m", MODEL, "-p", "16", "-n", "0", "-r", "1", "--peer", peer],
                                   capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S, env=env)
                self.assertNotEqual(r.returncode, 0, r.stderr)
                last = r.stderr.strip().splitlines()[-1]
                self.assertTrue(last.startswith("error:") and script in last, r.stderr)

    def test_unreadable_text_files(self):
        missing = os.path.join(self.tmp, "no-such-prompt.txt")
        under_a_file = os.path.join(self.files["prompt.txt"], "x")
        self.check([
            (["run", "-m", MODEL, "-f", missing], missing),
            (["run", "-m", MODEL, "-f", self.files["dir"]], self.files["dir"]),
            (["run", "-m", MODEL, "-f", under_a_file], under_a_file),
            (["tokenize", "-m", MODEL, "-f", missing], missing),
            (["perplexity", "-m", MODEL, "-f", missing], missing),
            (["perplexity", "-m", MODEL], "--file is required"),
            (["bench", "-m", MODEL, "--peer", "none", "-f", missing], missing),
            (["calibrate", "-m", MODEL, "-f", self.files["dir"]], self.files["dir"]),
        ])

    def test_bad_serve_flags(self):
        self.check([
            (["serve", "-m", MODEL, "--port", 70000], "--port"),
            (["serve", "-m", MODEL, "-b", 4], "--batch-size"),
            (["serve", "-m", MODEL, "-np", 0], "--parallel"),
            (["serve", "-m", MODEL, "--kv-dir", os.path.join(self.tmp, "absent")], "--kv-dir"),
            (["serve", "-m", MODEL, "--slot-save-path", self.files["prompt.txt"]], "--slot-save-path"),
            (["serve", "-m", MODEL, "--attn", "nosuch"], "nosuch"),
            (["serve", "-m", MODEL, "--host", "203.0.113.7", "--port", 0], "cannot listen"),
            (["serve", "-m", MODEL, "-c", 4, "-np", 8], "-c 4"),
            (["run", "-m", MODEL, "-p", "Hi", "--prompt-cache", self.files["random.gguf"]], "not a cache file"),
            (["run", "-m", MODEL, "-p", "Hi", "-np", 2, "--prompt-cache", os.path.join(self.tmp, "c.kv")], "--parallel"),
            (["run", "-m", MODEL, "-p", "Hi", "--kv", "snapkv:keep=0.5", "--prompt-cache", os.path.join(self.tmp, "c.kv")],
             "--kv policy"),
            (["run", "-m", MODEL, "-p", "Hi", "--kv", "zipvl:tau=2"], "tau"),
            (["run", "-m", MODEL, "-p", "Hi", "--kv", "pyramid:beta=0.5"], "beta"),
        ])

    def test_bad_model_files(self):
        missing = os.path.join(self.tmp, "no-such-model.gguf")
        self.check([
            (["run", "-m", missing, "-p", "Hi"], missing),
            (["info", "-m", self.files["dir"]], self.files["dir"]),
            (["info", "-m", self.files["head1000.gguf"]], "truncated"),
            (["run", "-m", self.files["half.gguf"], "-p", "Hi"], self.files["half.gguf"]),
            (["tokenize", "-m", self.files["random.gguf"], "-p", "Hi"], "not a GGUF file"),
            (["perplexity", "-m", self.files["empty.gguf"], "-f", TEXT_FILE], "empty"),
        ])

    def test_context_sizes(self):
        self.check([
            (["run", "-m", MODEL, "-c", 32, "-p", "The capital of France is Paris. " * 20], "the context holds 32"),
            (["run", "-m", MODEL, "-p", "Hi", "-c", -5], "--ctx-size: -5"),
            (["run", "-m", MODEL, "-p", "Hi", "-c", 99999999999], "--ctx-size: 99999999999"),
            (["run", "-m", MODEL, "-p", "Hi", "-c", "abc"], "--ctx-size: 'abc'"),
            # Within -c's range but far beyond memory: refused before allocating.
            (["run", "-m", MODEL, "-p", "Hi", "-c", 1 << 24], "KV cache"),
            (["perplexity", "-m", MODEL, "-f", TEXT_FILE, "-c", 0], "--ctx-size: 0"),
            (["perplexity", "-m", MODEL, "-f", TEXT_FILE, "-c", 2], "window of 2 tokens"),
            (["perplexity", "-m", MODEL, "-f", self.files["prompt.txt"], "-c", 128], "the text has"),
        ])

    def test_numbers_out_of_range(self):
        self.check([
            (["run", "-m", MODEL, "-p", "Hi", "-n", -3], "--n-predict: -3"),
            (["run", "-m", MODEL, "-p", "Hi", "-t", -1], "--threads: -1"),
            (["info", "-m", MODEL, "-t", 100000], "--threads: 100000"),
            (["run", "-m", MODEL, "-p", "Hi", "--temp", -1], "--temp: -1"),
            (["run", "-m", MODEL, "-p", "Hi", "--top-p", 2], "--top-p: 2"),
            (["run", "-m", MODEL, "-p", "Hi", "--top-k", -1], "--top-k: -1"),
            (["run", "-m", MODEL, "-p", "Hi", "--min-p", 2], "--min-p: 2"),
            (["run", "-m", MODEL, "-p", "Hi", "-s", -2], "--seed: -2"),
            (["run", "-m", MODEL, "-p", "Hi", "-np", 0], "--parallel: 0"),
            (["run", "-m", MODEL, "-p", "Hi", "-ctk", "q4"], "KV cache type 'q4'"),
            (["run", "-m", MODEL, "-p", "Hi", "--kv", "nosuch"], "KV policy 'nosuch'"),
            (["run", "-m", MODEL, "-p", "Hi", "--kv", "snapkv:keep=2"], "keep=2 is outside"),
            (["run", "-m", MODEL, "-p", "Hi", "--kv-f16-layers", "x"], "'x' is not a layer index"),
            (["run", "-m", MODEL, "-p", "Hi", "--kv-f16-layers", "99"], "f16 KV layer 99"),
            (["eval", "-m", MODEL, "--out", self.tmp, "--kv", "nosuch:keep=0.5"], "KV policy 'nosuch'"),
            (["batched-bench", "-m", MODEL, "--peer", "none", "-npl", "x"], "'x' is not a token count"),
            (["batched-bench", "-m", MODEL, "--peer", "none", "-npp", 0], "each need a count"),
            (["perplexity", "-m", MODEL, "-f", TEXT_FILE, "--chunks", -1], "--chunks: -1"),
            (["run", "-m", MODEL, "-p", "Hi", "-ub", 0], "--ubatch-size: 0"),
            (["bench", "-m", MODEL, "--peer", "none", "-ub", 0], "--ubatch-size: 0"),
            (["bench", "-m", MODEL, "--peer", "none", "-p", 99999999999], "99999999999"),
            (["bench", "-m", MODEL, "--peer", "none", "-r", 0], "--repetitions: 0"),
            (["eval", "-m", MODEL, "--out", self.tmp, "--samples", 0], "--samples: 0"),
            (["calibrate", "-m", MODEL, "--len", 10], "--len: 10"),
            (["calibrate", "-m", MODEL, "--len", 256, "--route", "nosuch"], "unknown attention method 'nosuch'"),
            (["calibrate", "-m", MODEL, "--route", "s2o", "--route-density", 2], "--route-density: 2"),
            (["run", "-m", MODEL, "-p", "Hi", "--attn", "power:target=0.9"], "target= needs a method"),
            (["run", "-m", MODEL, "-p", "Hi", "--attn", "s2o:dense_layers=99"], "dense_layers=99"),
            (["run", "-m", MODEL, "-p", "Hi", "--rope-scaling", "ntk"], "--rope-scaling"),
            (["run", "-m", MODEL, "-p", "Hi", "--rope-scale", 0], "--rope-scale: 0"),
            (["perplexity", "-m", MODEL, "-f", TEXT_FILE, "--yarn-orig-ctx", 0], "--yarn-orig-ctx: 0"),
            (["serve", "-m", MODEL, "--yarn-ext-factor", -1], "--yarn-ext-factor: -1"),
            (["run", "-m", MODEL, "-p", "Hi", "--dca", -1], "--dca: -1"),
            (["run", "-m", MODEL, "-p", "Hi", "--dca", 1 << 20], "dual chunk attention"),
            (["run", "-m", MODEL, "-p", "Hi", "--dca", 512, "--dca-local", 512], "dual chunk attention"),
            (["run", "-m", MODEL, "-p", "Hi", "--dca", 512, "--kv", "snapkv:keep=0.5"], "dual chunk attention"),
        ])

    def test_attention_specs(self):
        self.check([
            (["run", "-m", MODEL, "-p", "Hi", "--attn", "nosuch"], "nosuch"),
            (["run", "-m", MODEL, "-p", "Hi", "--attn", "streaming:foo=1"], "foo"),
            (["run", "-m", MODEL, "-p", "Hi", "--attn", "streaming:sink=abc"], "abc"),
            (["bench", "-m", MODEL, "--peer", "none", "--attn", "nosuch"], "nosuch"),
            (["eval", "-m", MODEL, "--out", self.tmp, "--attn", "nosuch"], "nosuch"),
        ])

    def test_eval_lengths(self):
        self.check([
            (["eval", "-m", MODEL, "--out", self.tmp, "--lengths", value], f"'{value}'")
            for value in ("abc", "0", "-1k")
        ] + [(["eval", "-m", MODEL, "--out", self.tmp, "--lengths", "1k,99999k"], "--lengths")])

    def test_command_line_shape(self):
        self.check([
            (["nosuch"], "nosuch"),
            (["run", "-m", MODEL, "-p", "Hi", "--bogus"], "--bogus"),
            ([], "subcommand"),
            (["run", "-m", MODEL], "-p TEXT or -f FILE"),
            (["bench", "-m", MODEL, "--peer", "bogus"], "--peer"),
            (["bench", "-m", MODEL, "--peer", "llama.cpp,llama.cpp"], "--peer"),
            (["bench", "-m", MODEL, "--gemm", "int4"], "--gemm"),
            (["run", "-m", MODEL, "-p", "Hi", "--gemm", "fp8"], "--gemm"),
            (["run", "-m", MODEL, "-p", "Hi", "--attn-math", "f16"], "--attn-math"),
            (["serve", "-m", MODEL, "--cache-ram", "-5"], "--cache-ram"),
            (["eval", "-m", MODEL], "--out is required"),
        ])


def main():
    global SKIM, MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("skim", nargs="?", default=os.environ.get("SKIM_BIN"), help="the skim binary (or $SKIM_BIN)")
    parser.add_argument("--model", default=os.environ.get("SKIM_TEST_MODEL"),
                        help=f"the {MODEL_NAME} GGUF (or $SKIM_TEST_MODEL; default: the cached one)")
    args, unittest_args = parser.parse_known_args()
    if not args.skim:
        parser.error("give the skim binary")
    SKIM = os.path.abspath(args.skim)
    MODEL = args.model or cached_model()
    unittest.main(argv=[sys.argv[0], *unittest_args])


if __name__ == "__main__":
    main()
