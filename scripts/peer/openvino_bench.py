"""OpenVINO GenAI as a `skim bench` peer: prefill and decode rates on the same GGUF.

Installed next to the peer's venv by scripts/setup-openvino and run by `skim bench --peer openvino`:

    python openvino_bench.py MODEL.gguf --prompts 512,8192 --gens 128 --threads 2 --reps 2 [--no-warmup]
                             [--attn dense,xattention,trishape]

Prints one JSON array in llama-bench's fields (n_prompt, n_gen, avg_ts, stddev_ts) plus "attn".
Prompts are random token ids, a fresh draw for every run so that OpenVINO's prefix cache never
answers from an earlier one. pp N: N / time to first token (one new token). tg N: 1 / the mean
time per output token over N tokens after a 32-token prompt. Sparse modes are OpenVINO's own
(SchedulerConfig.sparse_attention_config) at their defaults.
"""
import argparse
import json
import statistics
import sys

import numpy as np
import openvino as ov
import openvino_genai as genai


def pipeline(model, threads, attn):
    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    if attn != "dense":
        scheduler.use_sparse_attention = True
        scheduler.sparse_attention_config.mode = getattr(genai.SparseAttentionMode, attn.upper())
    return genai.LLMPipeline(model, "CPU", scheduler_config=scheduler, INFERENCE_NUM_THREADS=threads)


def run(pipe, rng, n_prompt, n_gen):
    """Seconds to the first token and mean seconds per later token."""
    ids = rng.integers(100, 30000, size=(1, n_prompt)).astype(np.int64)
    config = genai.GenerationConfig()
    config.max_new_tokens = max(1, n_gen + (1 if n_gen else 0))
    config.ignore_eos = True
    metrics = pipe.generate(genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config).perf_metrics
    return metrics.get_ttft().mean / 1000.0, metrics.get_tpot().mean / 1000.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--prompts", default="512")
    parser.add_argument("--gens", default="128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--attn", default="dense")
    args = parser.parse_args()
    counts = lambda s: [int(x) for x in s.split(",") if x and int(x) > 0]
    rng = np.random.default_rng(1234)
    rows = []
    for attn in args.attn.split(","):
        pipe = pipeline(args.model, args.threads, attn)
        tests = [(n, 0) for n in counts(args.prompts)] + ([(32, n) for n in counts(args.gens)] if attn == "dense" else [])
        for n_prompt, n_gen in tests:
            rates = []
            for rep in range(args.reps + (0 if args.no_warmup else 1)):
                ttft, tpot = run(pipe, rng, n_prompt, n_gen)
                if rep > 0 or args.no_warmup:
                    rates.append(n_prompt / ttft if n_gen == 0 else 1.0 / tpot)
            rows.append({"attn": attn, "n_prompt": n_prompt if n_gen == 0 else 0, "n_gen": n_gen,
                         "avg_ts": statistics.mean(rates),
                         "stddev_ts": statistics.stdev(rates) if len(rates) > 1 else 0.0})
            print(f"openvino {attn} pp{n_prompt} tg{n_gen}: {rows[-1]['avg_ts']:.2f} t/s", file=sys.stderr)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
