#!/usr/bin/env python3
"""Writes reference dequantization vectors for tests/dequant_test.cpp.

For each ggml type it writes, into --out:
  <TYPE>.q    the quantized bytes (whole blocks)
  <TYPE>.f32  their dequantization by the PyPI `gguf` package (little-endian f32)

The quantized bytes are the quantization of random normal data where gguf-py
can quantize the type, followed by blocks of random bytes whose f16 scale fields
are overwritten with random finite values (so every bit pattern of the packed
quants is exercised, including types gguf-py cannot quantize). F16 covers every
non-NaN half value; BF16 and F32 cover random bit patterns (NaNs included:
their conversions are pure bit moves).
"""

import argparse
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

# f16 fields (byte offsets) inside one block, per type.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
QUANTIZABLE = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
BLOCK_BYTES = {T.Q4_0: 18, T.Q4_1: 20, T.Q5_0: 22, T.Q5_1: 24, T.Q8_0: 34,
               T.Q2_K: 84, T.Q3_K: 110, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}
BLOCK_ELEMS = {t: (32 if t in QUANTIZABLE else 256) for t in BLOCK_BYTES}


def random_f16_scales(rng, count):
    """Finite f16 values of both signs over a wide range, including zero and subnormals."""
    magnitude = np.exp2(rng.uniform(-26.0, 6.0, size=count))
    values = (magnitude * rng.choice([-1.0, 1.0], size=count)).astype(np.float16)
    values[rng.random(count) < 0.02] = 0.0
    return values


def quantized_blocks(qtype, rng, n_quantized_blocks, n_random_blocks):
    parts = []
    if qtype in QUANTIZABLE and n_quantized_blocks:
        data = rng.standard_normal(n_quantized_blocks * BLOCK_ELEMS[qtype]).astype(np.float32)
        data *= np.repeat(np.exp2(rng.uniform(-8, 4, size=n_quantized_blocks)), BLOCK_ELEMS[qtype]).astype(np.float32)
        parts.append(quants.quantize(data.reshape(1, -1), qtype).reshape(-1))
    raw = rng.integers(0, 256, size=(n_random_blocks, BLOCK_BYTES[qtype]), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        raw[:, offset:offset + 2] = random_f16_scales(rng, n_random_blocks).view(np.uint8).reshape(-1, 2)
    parts.append(raw.reshape(-1))
    return np.concatenate(parts)


def generate(qtype, rng):
    if qtype == T.F32:
        q = rng.integers(0, 2**32, size=4096, dtype=np.uint32).view(np.uint8)
    elif qtype == T.F16:
        halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
        finite_or_inf = ((halves & 0x7C00) != 0x7C00) | ((halves & 0x03FF) == 0)
        q = halves[finite_or_inf].view(np.uint8)
    elif qtype == T.BF16:
        q = rng.integers(0, 2**16, size=8192, dtype=np.uint32).astype(np.uint16).view(np.uint8)
    else:
        q = quantized_blocks(qtype, rng, n_quantized_blocks=512, n_random_blocks=512)
    ref = quants.dequantize(q.reshape(1, -1), qtype).astype(np.float32, copy=False).reshape(-1)
    return q, ref


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write <TYPE>.q and <TYPE>.f32 into")
    parser.add_argument("--types", default="F32,F16,BF16,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K",
                        help="comma-separated ggml type names")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.types.split(","):
        try:
            qtype = T[name]
        except KeyError:
            sys.exit(f"gen_quant_vectors.py: unknown ggml type name {name!r}")
        rng = np.random.default_rng([args.seed, int(qtype)])
        q, ref = generate(qtype, rng)
        with open(os.path.join(args.out, f"{name}.q"), "wb") as f:
            f.write(q.tobytes())
        with open(os.path.join(args.out, f"{name}.f32"), "wb") as f:
            f.write(ref.astype("<f4").tobytes())


if __name__ == "__main__":
    main()
