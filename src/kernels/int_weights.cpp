#include "kernels/int_weights.h"

#include <stdexcept>

#include <fmt/format.h>

#include "kernels/f16.h"
#include "kernels/quant_blocks.h"

namespace skim::kernels {
namespace {

// Q4_0/Q4_1 (bits 4) and Q5_0/Q5_1 (bits 5): element j in the low nibble of
// byte j, element j + 16 in the high one; Q5's fifth bits in qh.
void legacy_values(const uint8_t* qs, const uint8_t* qh, uint8_t* u) {
  uint32_t high = 0;
  if (qh != nullptr) __builtin_memcpy(&high, qh, 4);
  for (int j = 0; j < kQK / 2; ++j) {
    u[j] = static_cast<uint8_t>((qs[j] & 0xF) | (((high >> j) & 1) << 4));
    u[j + 16] = static_cast<uint8_t>((qs[j] >> 4) | (((high >> (j + 16)) & 1) << 4));
  }
}

template <class Block>
const Block* blocks(const void* row) {
  return static_cast<const Block*>(row);
}

}  // namespace

int int_block_size(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: return 32;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q6_K: return 16;
    default: return 0;
  }
}

int int_max_value(GgmlType type) {
  switch (type) {
    case GgmlType::Q2_K: return 3;
    case GgmlType::Q3_K: return 7;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q4_K: return 15;
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q5_K: return 31;
    case GgmlType::Q6_K: return 63;
    case GgmlType::Q8_0: return 255;
    default: return 0;
  }
}

void unpack_int_row(GgmlType type, const void* row, int64_t k, uint8_t* u, float* scale, float* offset) {
  const int block = int_block_size(type);
  if (block == 0)
    throw std::invalid_argument(fmt::format("unpack_int_row: type id {} has no integer form", static_cast<uint32_t>(type)));
  switch (type) {
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < k / kQK; ++b, u += kQK) {
        const BlockQ4_0& x = blocks<BlockQ4_0>(row)[b];
        legacy_values(x.qs, nullptr, u);
        scale[b] = f16_to_f32(x.d);
        offset[b] = -8.0f * scale[b];
      }
      return;
    case GgmlType::Q4_1:
      for (int64_t b = 0; b < k / kQK; ++b, u += kQK) {
        const BlockQ4_1& x = blocks<BlockQ4_1>(row)[b];
        legacy_values(x.qs, nullptr, u);
        scale[b] = f16_to_f32(x.d);
        offset[b] = f16_to_f32(x.m);
      }
      return;
    case GgmlType::Q5_0:
      for (int64_t b = 0; b < k / kQK; ++b, u += kQK) {
        const BlockQ5_0& x = blocks<BlockQ5_0>(row)[b];
        legacy_values(x.qs, x.qh, u);
        scale[b] = f16_to_f32(x.d);
        offset[b] = -16.0f * scale[b];
      }
      return;
    case GgmlType::Q5_1:
      for (int64_t b = 0; b < k / kQK; ++b, u += kQK) {
        const BlockQ5_1& x = blocks<BlockQ5_1>(row)[b];
        legacy_values(x.qs, x.qh, u);
        scale[b] = f16_to_f32(x.d);
        offset[b] = f16_to_f32(x.m);
      }
      return;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < k / kQK; ++b, u += kQK) {
        const BlockQ8_0& x = blocks<BlockQ8_0>(row)[b];
        for (int j = 0; j < kQK; ++j) u[j] = static_cast<uint8_t>(x.qs[j] + 128);
        scale[b] = f16_to_f32(x.d);
        offset[b] = -128.0f * scale[b];
      }
      return;
    case GgmlType::Q2_K:
      for (int64_t sb = 0; sb < k / kQKK; ++sb) {
        const BlockQ2_K& x = blocks<BlockQ2_K>(row)[sb];
        const float d = f16_to_f32(x.d), dmin = f16_to_f32(x.dmin);
        int is = 0;
        for (int half = 0; half < 2; ++half)
          for (int shift = 0; shift < 8; shift += 2)
            for (int part = 0; part < 2; ++part, ++is, u += 16) {
              for (int l = 0; l < 16; ++l) u[l] = (x.qs[32 * half + 16 * part + l] >> shift) & 3;
              *scale++ = d * static_cast<float>(x.scales[is] & 0xF);
              *offset++ = -dmin * static_cast<float>(x.scales[is] >> 4);
            }
      }
      return;
    case GgmlType::Q3_K:
      for (int64_t sb = 0; sb < k / kQKK; ++sb, u += kQKK) {
        const BlockQ3_K& x = blocks<BlockQ3_K>(row)[sb];
        const float d = f16_to_f32(x.d);
        for (int j = 0; j < 16; ++j) {
          const int low = j < 8 ? x.scales[j] & 0xF : x.scales[j - 8] >> 4;
          const int high = (x.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
          *scale = d * static_cast<float>((low | (high << 4)) - 32);
          *offset++ = -4.0f * *scale++;
        }
        for (int e = 0; e < kQKK; ++e) {
          const int group = e / 128, shift = 2 * ((e % 128) / 32), l = e % 32;
          const int low = (x.qs[32 * group + l] >> shift) & 3;
          const int high = (x.hmask[l] >> (e / 32)) & 1;  // set: no -4 offset
          u[e] = static_cast<uint8_t>(low + 4 * high);
        }
      }
      return;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      for (int64_t sb = 0; sb < k / kQKK; ++sb) {
        const bool five = type == GgmlType::Q5_K;
        const uint16_t* dd = five ? &blocks<BlockQ5_K>(row)[sb].d : &blocks<BlockQ4_K>(row)[sb].d;
        const uint8_t* scales = five ? blocks<BlockQ5_K>(row)[sb].scales : blocks<BlockQ4_K>(row)[sb].scales;
        const uint8_t* qs = five ? blocks<BlockQ5_K>(row)[sb].qs : blocks<BlockQ4_K>(row)[sb].qs;
        const uint8_t* qh = five ? blocks<BlockQ5_K>(row)[sb].qh : nullptr;
        const float d = f16_to_f32(dd[0]), dmin = f16_to_f32(dd[1]);
        for (int sub = 0; sub < 8; ++sub, u += 32) {
          uint8_t sc, mn;
          k4_scale_min(sub, scales, &sc, &mn);
          const uint8_t* q = qs + 32 * (sub / 2);
          for (int l = 0; l < 32; ++l)
            u[l] = static_cast<uint8_t>(((q[l] >> (4 * (sub % 2))) & 0xF) | (qh ? ((qh[l] >> sub) & 1) << 4 : 0));
          *scale++ = d * static_cast<float>(sc);
          *offset++ = -dmin * static_cast<float>(mn);
        }
      }
      return;
    case GgmlType::Q6_K:
      for (int64_t sb = 0; sb < k / kQKK; ++sb) {
        const BlockQ6_K& x = blocks<BlockQ6_K>(row)[sb];
        const float d = f16_to_f32(x.d);
        for (int half = 0; half < 2; ++half, u += 128) {
          const uint8_t* ql = x.ql + 64 * half;
          const uint8_t* qh = x.qh + 32 * half;
          for (int e = 0; e < 128; ++e) {
            const int quarter = e / 32, l = e % 32;
            const int low = (ql[l + 32 * (quarter & 1)] >> (4 * (quarter >> 1))) & 0xF;
            u[e] = static_cast<uint8_t>(low | (((qh[l] >> (2 * quarter)) & 3) << 4));
          }
          for (int j = 0; j < 8; ++j) {
            *scale = d * static_cast<float>(x.scales[8 * half + j]);
            *offset++ = -32.0f * *scale++;
          }
        }
      }
      return;
    default: break;
  }
}

}  // namespace skim::kernels
