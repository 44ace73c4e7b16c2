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
  } else if (type == KvDType::Q8) {
    const hn::Rebind<int32_t, DF> di;
    const hn::Rebind<int8_t, DF> d8;
    float scale;
    std::memcpy(&scale, src, sizeof scale);
    const auto vscale = hn::Set(df, scale);
    const auto* q = static_cast<const int8_t*>(src) + sizeof(float);
    for (int32_t c = 0; c < d; c += N)
      hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q + c))), vscale), df, dst + c);
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
  } else if (type == KvDType::Q8) {
    // Per-row absmax scale; values round to nearest in [-127, 127].
    const hn::Rebind<int32_t, DF> di;
    const hn::Rebind<int8_t, DF> d8;
    auto amax = hn::Zero(df);
    for (int32_t c = 0; c < d; c += N) amax = hn::Max(amax, hn::Abs(hn::LoadU(df, src + c)));
    const float max_abs = hn::GetLane(hn::MaxOfLanes(df, amax));
    const float scale = max_abs / 127.0f;
    std::memcpy(dst, &scale, sizeof scale);
    const auto inv = hn::Set(df, scale > 0.0f ? 1.0f / scale : 0.0f);
    auto* q = static_cast<int8_t*>(dst) + sizeof(float);
    for (int32_t c = 0; c < d; c += N)
      hn::StoreU(hn::DemoteTo(d8, hn::NearestInt(hn::Mul(hn::LoadU(df, src + c), inv))), d8, q + c);
  } else {
    auto* o = static_cast<float*>(dst);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::LoadU(df, src + c), df, o + c);
  }
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SKIM_KERNELS_KV_CODEC_INL_H_
