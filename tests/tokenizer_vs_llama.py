#!/usr/bin/env python3
"""Compare skim's tokenizer with llama.cpp's on a corpus, document by document.

    tests/tokenizer_vs_llama.py [--model PATH]... [--corpus DIR] [--skim CMD] [--peer PATH]

Every document of the corpus (default: built by scripts/make-tokenizer-corpus
into ${SKIM_CACHE:-$HOME/.cache/skim}/tokenizer-corpus) is tokenized by skim
and by `skim-peer tokenize` (llama.cpp) with parse_special off and on, and the
id sequences are compared. Prints, per model and mode, the share of identical
documents (overall and per category) and the first differences; with
--add-special also checks BOS/EOS handling; --pre-variants also compares
vocabulary-only copies of the SmolLM2 vocabulary relabelled with other
pre-tokenizers (llama-bpe, default, gpt-2, qwen2, starcoder, dbrx), which
exercises every splitting pass skim implements. Exit status 1 if any
document differs.

Models default to SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B (byte-level BPE)
and Gemma 3 270M (SentencePiece), located with scripts/fetch-model; the peer
to the llama.cpp build the C++ tests use. `--skim` is the command that
tokenizes for skim; it gets `MODEL [--add-special] [--parse-special] --each
FILE...` appended and must print PATH<TAB>ids per file (tests/tokenize_driver
does; default: the first of build*/tokenize_driver found).
"""

import argparse
import concurrent.futures
import glob
import os
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # per tokenizer process: a hung one fails the run


def cache_root():
    return os.environ.get("SKIM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "skim"))


def default_models():
    models = []
    for name in ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"):
        try:
            out = subprocess.run([os.path.join(ROOT, "scripts/fetch-model"), name], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"error: could not fetch {name}: {e}")
        models.append(out[-1])
    return models


def default_peer():
    """skim-peer where the C++ tests look for it (include/skim/paths.h: $SKIM_LLAMA_CPP
    or the cache's llama.cpp-VERSION)."""
    prefix = os.environ.get("SKIM_LLAMA_CPP")
    if not prefix:
        header = open(os.path.join(ROOT, "include/skim/paths.h")).read()
        version = re.search(r'kPeerVersion = "([^"]+)"', header).group(1)
        prefix = os.path.join(cache_root(), f"llama.cpp-{version}")
    return os.path.join(prefix, "bin", "skim-peer")


def default_skim():
    for path in sorted(glob.glob(os.path.join(ROOT, "build*/tokenize_driver"))):
        if os.access(path, os.X_OK):
            return path
    return None


VARIANT_PRES = ["llama-bpe", "default", "gpt-2", "qwen2", "starcoder", "dbrx"]


def make_pre_variants(source):
    """Vocabulary-only GGUFs: `source`'s metadata with tokenizer.ggml.pre replaced.
    For llama-bpe, add_bos_token is dropped so that the pre-tokenizer's default applies."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter  # the venv's gguf package

    out_dir = os.path.join(cache_root(), "tokenizer-variants")
    os.makedirs(out_dir, exist_ok=True)
    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    stem = os.path.splitext(os.path.basename(source))[0]
    paths = []
    for pre in VARIANT_PRES:
        path = os.path.join(out_dir, f"{stem}-vocab-{pre}.gguf")
        paths.append(path)
        if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(source):
            continue
        writer = GGUFWriter(path + ".tmp", arch)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            if pre == "llama-bpe" and key == "tokenizer.ggml.add_bos_token":
                continue
            value = pre if key == "tokenizer.ggml.pre" else field.contents()
            vtype = field.types[0]
            sub_type = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
            writer.add_key_value(key, value, vtype, sub_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(path + ".tmp", path)
    return paths


def skim_tokenize(cmd, model, files, add_special, parse_special):
    """Runs CMD MODEL [flags] --each FILE... in batches; {path: ids}."""
    flags = (["--add-special"] if add_special else []) + (["--parse-special"] if parse_special else [])
    result = {}
    batch = 200  # keep command lines short
    for i in range(0, len(files), batch):
        out = subprocess.run(shlex.split(cmd) + [model] + flags + ["--each"] + files[i:i + batch], check=True,
                             capture_output=True, timeout=TIMEOUT_S).stdout.decode()
        for line in out.splitlines():
            path, _, ids = line.partition("\t")
            result[path] = [int(x) for x in ids.split()]
    return result


def peer_tokenize(peer, model, path, add_special, parse_special):
    flags = (["--add-special"] if add_special else []) + (["--parse-special"] if parse_special else [])
    proc = subprocess.run([peer, "tokenize", model, path] + flags, capture_output=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        return None, proc.stderr.decode(errors="replace").strip()[-300:]
    return [int(x) for x in proc.stdout.split()], None


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="GGUF model (repeatable)")
    ap.add_argument("--corpus", help="corpus directory (default: build one)")
    ap.add_argument("--skim", default=default_skim(), help="skim tokenize command")
    ap.add_argument("--peer", default=default_peer())
    ap.add_argument("--peer-each", action="store_true",
                    help="the peer accepts `tokenize MODEL [flags] --each FILE...` (one load for all documents)")
    ap.add_argument("--add-special", action="store_true", help="also compare with add_special on")
    ap.add_argument("--pre-variants", action="store_true",
                    help="also compare SmolLM2's vocabulary under other pre-tokenizers")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--show", type=int, default=5, help="differences to print per model and mode")
    args = ap.parse_args()

    if not args.skim:
        sys.exit("error: no skim tokenizer command (build tests/tokenize_driver or pass --skim)")
    if not os.access(args.peer, os.X_OK):
        sys.exit(f"error: llama.cpp peer {args.peer} not found (run scripts/build-llama-cpp)")
    corpus = args.corpus
    if not corpus:
        corpus = subprocess.run([os.path.join(ROOT, "scripts/make-tokenizer-corpus")], check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
    files = sorted(glob.glob(os.path.join(corpus, "*.txt")))
    if not files:
        sys.exit(f"error: no documents in {corpus}")
    category = {f: os.path.basename(f)[5:-4] for f in files}
    total_bytes = sum(os.path.getsize(f) for f in files)
    models = args.model or default_models()
    if not models:
        sys.exit("error: no models (pass --model)")
    if args.pre_variants:
        smol = [m for m in models if "SmolLM2" in os.path.basename(m)]
        if not smol:
            sys.exit("error: --pre-variants needs the SmolLM2 model among the models")
        models = models + make_pre_variants(smol[0])
    print(f"corpus: {corpus}: {len(files)} documents, {total_bytes} bytes")

    modes = [(False, False), (False, True)] + ([(True, False), (True, True)] if args.add_special else [])
    all_identical = True
    for model in models:
        for add_special, parse_special in modes:
            label = f"{os.path.basename(model)} add_special={int(add_special)} parse_special={int(parse_special)}"
            t0 = time.time()
            ours = skim_tokenize(args.skim, model, files, add_special, parse_special)
            t_skim = time.time() - t0
            t0 = time.time()
            if args.peer_each:
                theirs = {f: (ids, None) for f, ids in skim_tokenize(
                    shlex.quote(args.peer) + " tokenize", model, files, add_special, parse_special).items()}
                for f in files:
                    theirs.setdefault(f, (None, "no output for this document"))
            else:
                with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                    theirs = dict(zip(files, pool.map(
                        lambda f: peer_tokenize(args.peer, model, f, add_special, parse_special), files)))
            t_peer = time.time() - t0
            per_cat = defaultdict(lambda: [0, 0])
            diffs, errors, same = [], [], 0
            for f in files:
                ref, err = theirs[f]
                per_cat[category[f]][1] += 1
                if err is not None:
                    errors.append((f, err))
                    continue
                if ours.get(f) == ref:
                    same += 1
                    per_cat[category[f]][0] += 1
                else:
                    diffs.append(f)
            compared = len(files) - len(errors)
            pct = 100.0 * same / compared if compared else 0.0
            print(f"\n{label}: {same}/{compared} identical documents ({pct:.2f}%), "
                  f"{len(errors)} peer errors; skim {t_skim:.1f}s, llama.cpp {t_peer:.1f}s")
            bad_cats = {c: v for c, v in per_cat.items() if v[0] != v[1]}
            for c, (s, n) in sorted(bad_cats.items()):
                print(f"  category {c}: {s}/{n} identical")
            for f, err in errors[: args.show]:
                print(f"  peer failed on {os.path.basename(f)}: {err}")
            for f in diffs[: args.show]:
                a, b = ours.get(f, []), theirs[f][0]
                i = first_difference(a, b)
                print(f"  {os.path.basename(f)}: first difference at token {i}: "
                      f"skim {a[max(0, i - 3):i + 5]} vs llama.cpp {b[max(0, i - 3):i + 5]} (lengths {len(a)}/{len(b)})")
            # A document the peer did not tokenize is a failure too: a silent
            # peer must not pass as "0/0 identical".
            if diffs or errors or compared == 0:
                all_identical = False
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
