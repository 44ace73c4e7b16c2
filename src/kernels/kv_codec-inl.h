// Per-target part of the KV codecs (Highway): rows of a KV format widened to
// f32. Included by every translation unit that reads K/V under foreach_target
// (kv_codec.cpp, attention_tile.cpp), so there is one codec per format.
#if defined(SKIM_KERNELS_KV_CODEC_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SKIM_KERNELS_KV_CODEC_INL_H_
#undef SKIM_KERNELS_KV_CODEC_INL_H_
#else
#define SKIM_KERNELS_KV_CODEC_INL_H_
#endif

#include <cstring>

#include "hwy/highway.h"
#include "kernels/f16.h"
#include "kernels/kv_view.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// d values (a multiple of the f32 vector length) of a row of `type` at src, as f32.
template <class DF>
HWY_INLINE void DecodeKvRow(DF df, const void* HWY_RESTRICT src, KvDType type, int32_t d, float* HWY_RESTRICT dst) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  if (type == KvDType::F16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    const auto* s = static_cast<const hwy::float16_t*>(src);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, s + c)), df, dst + c);
  } else if (type == KvDType::BF16) {
    const hn::Rebind<hwy::bfloat16_t, DF> db;
    const auto* s = static_cast<const hwy::bfloat16_t*>(src);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(db, s + c)), df, dst + c);
  } else if (type == KvDType::Q8_0) {
    const hn::Rebind<int32_t, DF> di;
    const hn::Rebind<int8_t, DF> d8;
    const auto* block = static_cast<const uint8_t*>(src);
    for (int32_t b = 0; b < d; b += kQ8_0Block, block += kQ8_0Block + 2) {
      uint16_t scale;
      std::memcpy(&scale, block, sizeof scale);
      const auto vscale = hn::Set(df, f16_to_f32(scale));
      const auto* q = reinterpret_cast<const int8_t*>(block + 2);
      for (int32_t c = 0; c < kQ8_0Block; c += N)
        hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q + c))), vscale), df, dst + b + c);
    }
  } else {
    const auto* s = static_cast<const float*>(src);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::LoadU(df, s + c), df, dst + c);
  }
}

// The inverse, for writers of the cache: d f32 values stored as `type`.
template <class DF>
HWY_INLINE void EncodeKvRow(DF df, const float* HWY_RESTRICT src, KvDType type, int32_t d, void* HWY_RESTRICT dst) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  if (type == KvDType::F16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    auto* o = static_cast<hwy::float16_t*>(dst);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, src + c)), dh, o + c);
  } else if (type == KvDType::BF16) {
    const hn::Rebind<hwy::bfloat16_t, DF> db;
    auto* o = static_cast<hwy::bfloat16_t*>(dst);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::DemoteTo(db, hn::LoadU(df, src + c)), db, o + c);
  } else if (type == KvDType::Q8_0) {
    // As ggml's quantize_row_q8_0: d = absmax / 127 per block, stored as f16;
    // values round to nearest with the f32 d.
    const hn::Rebind<int8_t, DF> d8;
    auto* block = static_cast<uint8_t*>(dst);
    for (int32_t b = 0; b < d; b += kQ8_0Block, block += kQ8_0Block + 2) {
      auto amax = hn::Zero(df);
      for (int32_t c = 0; c < kQ8_0Block; c += N) amax = hn::Max(amax, hn::Abs(hn::LoadU(df, src + b + c)));
      const float scale = hn::GetLane(hn::MaxOfLanes(df, amax)) / 127.0f;
      const uint16_t half = f32_to_f16(scale);
      std::memcpy(block, &half, sizeof half);
      const auto inv = hn::Set(df, scale > 0.0f ? 1.0f / scale : 0.0f);
      auto* q = reinterpret_cast<int8_t*>(block + 2);
      for (int32_t c = 0; c < kQ8_0Block; c += N)
        hn::StoreU(hn::DemoteTo(d8, hn::NearestInt(hn::Mul(hn::LoadU(df, src + b + c), inv))), d8, q + c);
    }
  } else {
    auto* o = static_cast<float*>(dst);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::LoadU(df, src + c), df, o + c);
  }
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SKIM_KERNELS_KV_CODEC_INL_H_
