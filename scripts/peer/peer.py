"""Python access to the llama.cpp reference engine ("the peer") for skim's tests.

    import sys; sys.path.insert(0, "scripts/peer"); import peer
    model = peer.fetch_model("smollm2-135m")
    ids = peer.tokenize(model, "prompt.txt", add_special=False, parse_special=False)
    reference = peer.logits(model, ids, threads=2)      # np.ndarray float32 [n, vocab]

The first call builds llama.cpp via scripts/build-llama-cpp (slow once, then
cached under ${SKIM_CACHE:-$HOME/.cache/skim}).
"""

import functools
import os
import struct
import subprocess
import tempfile

import numpy as np

_SCRIPTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOGITS_MAGIC = b"SKLG"
_LOGITS_HEADER = struct.Struct("<4sII")


class PeerError(RuntimeError):
    """A peer tool failed or produced malformed output."""


def _run(command, what):
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-20:])
        raise PeerError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{tail}")
    return result.stdout


def _last_line(output, what):
    lines = output.strip().splitlines()
    if not lines:
        raise PeerError(f"{what} printed nothing on stdout")
    return lines[-1]


@functools.lru_cache(maxsize=None)
def prefix():
    """Install prefix of the pinned llama.cpp build (builds it on first use)."""
    script = os.path.join(_SCRIPTS_DIR, "build-llama-cpp")
    return _last_line(_run([script], "build-llama-cpp"), "build-llama-cpp")


def tool(name):
    """Path of a program installed in the peer prefix, e.g. tool('llama-bench')."""
    path = os.path.join(prefix(), "bin", name)
    if not os.access(path, os.X_OK):
        raise PeerError(f"{name} is not installed in {prefix()}/bin (see BUILD_INFO there)")
    return path


@functools.lru_cache(maxsize=None)
def fetch_model(name):
    """Path of the .gguf for a model name known to scripts/fetch-model (fetches it once)."""
    script = os.path.join(_SCRIPTS_DIR, "fetch-model")
    return _last_line(_run([script, name], f"fetch-model {name}"), f"fetch-model {name}")


def _check_model(model):
    if not os.path.isfile(model):
        raise PeerError(f"model file not found: {model}")


def tokenize(model, text_path, add_special=False, parse_special=False):
    """Token ids llama.cpp produces for the bytes of text_path."""
    _check_model(model)
    if not os.path.isfile(text_path):
        raise PeerError(f"text file not found: {text_path}")
    command = [tool("skim-peer"), "tokenize", model, text_path]
    if add_special:
        command.append("--add-special")
    if parse_special:
        command.append("--parse-special")
    output = _run(command, "skim-peer tokenize")
    try:
        return [int(line) for line in output.split()]
    except ValueError as error:
        raise PeerError(f"skim-peer tokenize printed a non-integer line: {error}") from None


def read_logits(path):
    """Reads a skim-peer logits file into float32 [n_tokens, n_vocab]."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header = stream.read(_LOGITS_HEADER.size)
        if len(header) != _LOGITS_HEADER.size:
            raise PeerError(f"{path}: too short for a logits header")
        magic, n_tokens, n_vocab = _LOGITS_HEADER.unpack(header)
        if magic != _LOGITS_MAGIC:
            raise PeerError(f"{path}: bad magic {magic!r}, expected {_LOGITS_MAGIC!r}")
        expected = _LOGITS_HEADER.size + 4 * n_tokens * n_vocab
        if size != expected:
            raise PeerError(f"{path}: {size} bytes, but [{n_tokens} x {n_vocab}] float32 logits need {expected}")
        data = np.fromfile(stream, dtype="<f4", count=n_tokens * n_vocab)
    return data.reshape(n_tokens, n_vocab).astype(np.float32, copy=False)


def logits(model, ids, threads=None, kv_type="f16", flash_attn=False, ubatch=None):
    """llama.cpp's logits for every position of the token sequence `ids`.

    kv_type "f16" is llama.cpp's default KV cache; "f32" removes that rounding
    when comparing against an engine that keeps K/V in float32.
    """
    _check_model(model)
    ids = [int(i) for i in ids]
    if not ids:
        raise PeerError("logits needs at least one token id")
    if any(i < 0 for i in ids):
        raise PeerError("token ids must be non-negative")
    with tempfile.TemporaryDirectory(prefix="skim-peer-") as tmp:
        tokens_path = os.path.join(tmp, "tokens.txt")
        out_path = os.path.join(tmp, "logits.bin")
        with open(tokens_path, "w") as stream:
            stream.write("\n".join(map(str, ids)) + "\n")
        command = [tool("skim-peer"), "logits", model, tokens_path, out_path, "--kv-type", kv_type]
        if threads is not None:
            command += ["--threads", str(int(threads))]
        if ubatch is not None:
            command += ["--ubatch", str(int(ubatch))]
        if flash_attn:
            command.append("--flash-attn")
        _run(command, "skim-peer logits")
        result = read_logits(out_path)
    if result.shape[0] != len(ids):
        raise PeerError(f"skim-peer returned {result.shape[0]} rows for {len(ids)} tokens")
    return result
