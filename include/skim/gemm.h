// Arithmetic of the prefill weight GEMMs (process-wide): what --gemm accepts.
#pragma once

#include <string>
#include <vector>

namespace skim {

// "int8" (the default): activations rounded to int8 per 32 elements, integer
// multiply-adds with the quantized weights (VNNI where the CPU has it);
// "bf16": activations and dequantized weights rounded to bf16, f32 sums
// (AVX512-BF16 dot products where the CPU has them, emulated elsewhere);
// "f32": weights dequantized to f32, f32 FMAs. F32/F16 weights always take
// f32 (BF16 ones too under int8). Decode (a few rows) uses its integer GEMV
// either way.
const std::vector<std::string>& gemm_paths();
// Throws std::invalid_argument for a name not in gemm_paths(). Not thread-safe:
// call it before running a model.
void set_gemm(const std::string& name);
std::string gemm();

// Arithmetic of the attention kernel's prefill (process-wide): what
// --attn-math accepts. "f32" (the library's default), "bf16": Q, K, P and V
// rounded to bf16 with f32 sums, on AVX512-BF16 dot products where the CPU
// has them, or "auto" (the tools' default): bf16 where those dot products
// measure at least kBf16AttentionMinSpeedup times the f32 FMA's multiply-add
// rate, f32 elsewhere (emulated or slow bf16 is slower than f32).
constexpr double kBf16AttentionMinSpeedup = 1.5;
const std::vector<std::string>& attention_math_names();
// Throws std::invalid_argument for a name not in attention_math_names().
void set_attention_math(const std::string& name);
// "f32" or "bf16", and after "auto" why, e.g. "bf16 (auto: bf16 dot 2.0x the FMA)".
std::string attention_math();

// The SIMD target run-time dispatch runs here (Highway's name, e.g. AVX3_DL:
// AVX-512 with VNNI) and the CPU's model name, for benchmark headers.
std::string simd_target();
std::string cpu_name();

}  // namespace skim
