#include "attention/estimate.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>

#include "kernels/attention_mass.h"
#include "kernels/kv_codec.h"

namespace skim::attention {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per-thread scratch that only grows (no allocation per call once warm).
float* scratch(int slot, size_t n) {
  thread_local std::vector<float> buffers[3];
  std::vector<float>& b = buffers[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

// e^x for 8 lanes (Cephes expf polynomial, ~1 ulp); x <= 0 here, below -87 gives 0.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.37626f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// out[i] += x[i]
inline void add_row(float* out, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_loadu_ps(x + i)));
  for (; i < n; ++i) out[i] += x[i];
}

}  // namespace

namespace {
float row_max(const float* x, int64_t n) {
  __m256 vm = _mm256_set1_ps(kNegInf);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
  float m = hmax8(vm);
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// x[i] = exp(x[i] - m); returns the sum.
float exp_shifted(float* x, int64_t n, float m) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 vs = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    _mm256_storeu_ps(x + i, e);
    vs = _mm256_add_ps(vs, e);
  }
  float sum = hsum8(vs);
  for (; i < n; ++i) sum += (x[i] = std::exp(x[i] - m));
  return sum;
}

// a[i] += c * x[i]; b[i] += c * x[i]
void add_scaled2(float* a, float* b, const float* x, int64_t n, float c) {
  const __m256 cv = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), cv);
    _mm256_storeu_ps(a + i, _mm256_add_ps(_mm256_loadu_ps(a + i), v));
    _mm256_storeu_ps(b + i, _mm256_add_ps(_mm256_loadu_ps(b + i), v));
  }
  for (; i < n; ++i) {
    a[i] += c * x[i];
    b[i] += c * x[i];
  }
}
}  // namespace

void single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void softmax_inplace(float* x, int64_t n) {
  const float m = row_max(x, n);
  if (m == kNegInf) {  // nothing finite: leave zeros
    std::fill(x, x + n, 0.0f);
    return;
  }
  const __m256 inv = _mm256_set1_ps(1.0f / exp_shifted(x, n, m));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  for (; i < n; ++i) x[i] *= _mm256_cvtss_f32(inv);
}

void KeysF32::load(const PlanRequest& r, int64_t pad) {
  pad = std::max<int64_t>(pad, 1);
  n_keys_ = r.n_keys();
  rows_ = (n_keys_ + pad - 1) / pad * pad;
  d_ = r.head_dim;
  n_heads_ = r.n_kv_heads;
  const size_t need = static_cast<size_t>(n_heads_) * rows_ * d_;
  if (data_.size() < need) data_.resize(need);
  const kernels::KvView& kv = r.kv;
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (n_keys_ + kChunk - 1) / kChunk;
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(double(n_heads_) * n_keys_ * d_))
  for (int32_t h = 0; h < n_heads_; ++h) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t j0 = c * kChunk, j1 = std::min(n_keys_, j0 + kChunk);
      kernels::read_k_rows(kv, h, j0, j1 - j0, d_, data_.data() + (static_cast<size_t>(h) * rows_ + j0) * d_);
    }
  }
  for (int32_t h = 0; h < n_heads_; ++h)
    std::fill(data_.data() + (static_cast<size_t>(h) * rows_ + n_keys_) * d_,
              data_.data() + static_cast<size_t>(h + 1) * rows_ * d_, 0.0f);
}

void estimate_last_q(const PlanRequest& r, const KeysF32& keys, int64_t w, LastQEstimate& out) {
  if (keys.n_keys() != r.n_keys() || keys.n_heads() != r.n_kv_heads || keys.head_dim() != r.head_dim)
    throw std::logic_error("estimate_last_q: keys not loaded for this request");
  single_threaded_blas();
  w = std::clamp<int64_t>(w, 1, std::max<int64_t>(r.n_rows, 1));
  const int64_t n = r.n_keys(), d = r.head_dim, g = r.group();
  out.n_heads = r.n_q_heads;
  out.w = w;
  out.n_keys = n;
  out.slot_first = r.q_slot0() + r.n_rows - w;
  out.pos_first = r.q_pos0 + r.n_rows - w;
  // Diagonals are position offsets. Where the stored positions run without a
  // gap they are slot offsets too, and a diagonal sum is a shifted row add.
  const int32_t pos_begin = n > 0 ? r.kv.position(0, 0) : 0;
  const bool gapless = n == 0 || r.kv.position(0, n - 1) - pos_begin == n - 1;
  std::vector<int32_t> key_pos;
  if (!gapless)
    for (int64_t j = 0; j < n; ++j) key_pos.push_back(r.kv.position(0, j));
  out.n_offsets = gapless ? n : out.pos_first + w - pos_begin;
  out.vertical.assign(static_cast<size_t>(r.n_q_heads) * n, 0.0f);
  out.slash.assign(static_cast<size_t>(r.n_q_heads) * out.n_offsets, 0.0f);
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(double(r.n_q_heads) * w * n * d))
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    float* s = scratch(0, static_cast<size_t>(w * n));
    float* rev = scratch(1, static_cast<size_t>(n));
    std::fill(rev, rev + n, 0.0f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(w), static_cast<int>(n),
                static_cast<int>(d), r.scale, r.q_row(h, r.n_rows - w), static_cast<int>(r.q_row_stride),
                keys.head(static_cast<int32_t>(h / g)), static_cast<int>(d), 0.0f, s, static_cast<int>(n));
    float* vert = out.vertical.data() + static_cast<size_t>(h) * n;
    float* sl = out.slash.data() + static_cast<size_t>(h) * out.n_offsets;
    for (int64_t t = 0; t < w; ++t) {
      float* row = s + t * n;
      const int64_t visible = out.slot_first + t + 1;  // slots [0, the row's own]
      const float m = row_max(row, visible);
      const float inv = 1.0f / exp_shifted(row, visible, m);
      if (gapless) {
        // Offset o = slot - j; in reversed coordinates u = n-1-o = j + (w-1-t)
        // the diagonal sum is a shifted row add.
        add_scaled2(vert, rev + (w - 1 - t), row, visible, inv);
      } else {
        const int64_t pos = out.pos_first + t;
        for (int64_t j = 0; j < visible; ++j) {
          vert[j] += row[j] * inv;
          sl[pos - key_pos[static_cast<size_t>(j)]] += row[j] * inv;
        }
      }
    }
    if (gapless)
      for (int64_t o = 0; o < n; ++o) sl[o] = rev[n - 1 - o];
  }
}

int64_t BlockScores::last_slot(int64_t qb) const {
  return q_slot0 + std::min(n_rows, (qb + 1) * block) - 1;
}

void pool_keys(const KeysF32& keys, int64_t block, std::vector<float>& out) {
  const int64_t n = keys.n_keys(), d = keys.head_dim(), n_kb = (n + block - 1) / block;
  out.resize(static_cast<size_t>(keys.n_heads() * n_kb * d));
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(double(keys.n_heads()) * n * d))
  for (int32_t h = 0; h < keys.n_heads(); ++h) {
    for (int64_t c = 0; c < n_kb; ++c) {
      float* dst = out.data() + (static_cast<size_t>(h) * n_kb + c) * d;
      std::fill(dst, dst + d, 0.0f);
      const int64_t j0 = c * block, j1 = std::min(n, j0 + block);
      for (int64_t j = j0; j < j1; ++j) add_row(dst, keys.head(h) + j * d, d);
      const float inv = 1.0f / static_cast<float>(j1 - j0);
      for (int64_t k = 0; k < d; ++k) dst[k] *= inv;
    }
  }
}

void pool_queries(const PlanRequest& r, int64_t block, std::vector<float>& out) {
  const int64_t d = r.head_dim, n_qb = (r.n_rows + block - 1) / block;
  out.resize(static_cast<size_t>(r.n_q_heads * n_qb * d));
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(double(r.n_q_heads) * r.n_rows * d))
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    for (int64_t qb = 0; qb < n_qb; ++qb) {
      float* dst = out.data() + (static_cast<size_t>(h) * n_qb + qb) * d;
      std::fill(dst, dst + d, 0.0f);
      const int64_t i0 = qb * block, i1 = std::min(r.n_rows, i0 + block);
      for (int64_t i = i0; i < i1; ++i) add_row(dst, r.q_row(h, i), d);
      const float inv = 1.0f / static_cast<float>(i1 - i0);
      for (int64_t k = 0; k < d; ++k) dst[k] *= inv;
    }
  }
}

namespace {
void shape_scores(const PlanRequest& r, int64_t block, int64_t n_kb, BlockScores& out) {
  out.n_heads = r.n_q_heads;
  out.block = block;
  out.kblock = block;
  out.n_rows = r.n_rows;
  out.q_slot0 = r.q_slot0();
  out.n_qb = (r.n_rows + block - 1) / block;
  out.n_kb = n_kb;
  out.s.resize(static_cast<size_t>(out.n_heads * out.n_qb * out.n_kb));
}
}  // namespace

void estimate_pooled(const PlanRequest& r, const KeysF32& keys, int64_t block, float scale, bool softmax,
                     BlockScores& out) {
  if (block < 1) throw std::invalid_argument("estimate_pooled: block < 1");
  single_threaded_blas();
  thread_local std::vector<float> kb, qb;  // the caller's thread only
  pool_keys(keys, block, kb);
  pool_queries(r, block, qb);
  shape_scores(r, block, (r.n_keys() + block - 1) / block, out);
  const int64_t d = r.head_dim, g = r.group(), n_qb = out.n_qb, n_kb = out.n_kb;
  const float* kb_data = kb.data();
  const float* qb_data = qb.data();
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(double(r.n_q_heads) * n_qb * n_kb * d))
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    float* s = out.row(h, 0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n_qb), static_cast<int>(n_kb),
                static_cast<int>(d), scale, qb_data + static_cast<size_t>(h) * n_qb * d, static_cast<int>(d),
                kb_data + static_cast<size_t>(h / g) * n_kb * d, static_cast<int>(d), 0.0f, s,
                static_cast<int>(n_kb));
    for (int64_t q = 0; q < n_qb; ++q) {
      float* row = s + q * n_kb;
      const int64_t vis = out.visible(q);
      if (softmax) softmax_inplace(row, vis);
      std::fill(row + vis, row + n_kb, softmax ? 0.0f : kNegInf);
    }
  }
}

void estimate_antidiag(const PlanRequest& r, const KeysF32& keys, int64_t stride, int64_t block, BlockScores& out) {
  if (stride < 1 || block < stride || block % stride != 0)
    throw std::invalid_argument("estimate_antidiag: stride must divide block");
  if (keys.rows() % stride != 0 || keys.n_keys() != r.n_keys())
    throw std::logic_error("estimate_antidiag: keys not loaded with pad = stride for this request");
  single_threaded_blas();
  const int64_t n = r.n_keys(), d = r.head_dim, g = r.group(), sd = stride * d;
  const int64_t n_kg = keys.rows() / stride, per_block = block / stride;
  shape_scores(r, block, (n + block - 1) / block, out);
  std::fill(out.s.begin(), out.s.end(), 0.0f);
  // Panels of query groups share one GEMM (and one packing of the keys); a
  // panel is whole query blocks, so panels write disjoint rows of `out`. A
  // panel's GEMM runs to its last row's keys: panels of P rows after q_pos0
  // earlier keys waste about P / (2 (q_pos0 + P)) of it above the diagonal, so
  // they grow with q_pos0 (at most ~10% waste), from 256 to 1024 rows.
  const int64_t panel_rows =
      std::max<int64_t>(block, std::clamp<int64_t>(r.q_slot0() / 4, 256, 1024) / block * block);
  const int64_t n_panels = (r.n_rows + panel_rows - 1) / panel_rows;
  const float alpha = r.scale / static_cast<float>(stride);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) \
    if (worth_threads(double(r.n_q_heads) * r.n_rows * n * d / stride))
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    for (int64_t p = 0; p < n_panels; ++p) {
      const int64_t row0 = p * panel_rows, row1 = std::min(r.n_rows, row0 + panel_rows);
      const int64_t g0 = row0 / stride, g1 = (row1 + stride - 1) / stride;  // query groups [g0, g1)
      const int64_t m = g1 - g0;
      // Key groups visible to the panel's last group.
      const int64_t kg_end = std::min(n_kg, (r.q_slot0() + row1 - 1) / stride + 1);
      float* qt = scratch(0, static_cast<size_t>(m * sd));
      float* s = scratch(1, static_cast<size_t>(m * kg_end));
      for (int64_t a = 0; a < m; ++a) {
        for (int64_t t = 0; t < stride; ++t) {
          const int64_t src = (g0 + a) * stride + stride - 1 - t;
          float* dst = qt + a * sd + t * d;
          if (src < r.n_rows)
            std::memcpy(dst, r.q_row(h, src), sizeof(float) * d);
          else
            std::fill(dst, dst + d, 0.0f);
        }
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(kg_end),
                  static_cast<int>(sd), alpha, qt, static_cast<int>(sd), keys.head(static_cast<int32_t>(h / g)),
                  static_cast<int>(sd), 0.0f, s, static_cast<int>(kg_end));
      for (int64_t a = 0; a < m; ++a) {
        const int64_t last_row = std::min(r.n_rows, (g0 + a + 1) * stride) - 1;
        const int64_t vis = std::min(kg_end, (r.q_slot0() + last_row) / stride + 1);
        float* row = s + a * kg_end;
        softmax_inplace(row, vis);
        float* e = out.row(h, (g0 + a) / per_block);
        for (int64_t c = 0; c * per_block < vis; ++c) {
          const int64_t b1 = std::min(vis, (c + 1) * per_block);
          float sum = 0.0f;
          for (int64_t b = c * per_block; b < b1; ++b) sum += row[b];
          e[c] += sum;
        }
      }
    }
  }
}

void normalize_rows(BlockScores& s) {
  for (int32_t h = 0; h < s.n_heads; ++h)
    for (int64_t qb = 0; qb < s.n_qb; ++qb) {
      float* row = s.row(h, qb);
      const int64_t vis = s.visible(qb);
      double sum = 0;
      for (int64_t c = 0; c < vis; ++c) sum += row[c];
      if (sum > 0)
        for (int64_t c = 0; c < vis; ++c) row[c] = static_cast<float>(row[c] / sum);
    }
}

void estimate_sampled(const PlanRequest& r, const KeysF32& keys, int64_t stride, int64_t kblock, BlockScores& out,
                      BlockScores* peak) {
  if (stride < 1) throw std::invalid_argument("estimate_sampled: stride < 1");
  if (kblock < 1 || kTileRows % kblock != 0) throw std::invalid_argument("estimate_sampled: kblock must divide 64");
  if (keys.n_keys() != r.n_keys() || keys.n_heads() != r.n_kv_heads || keys.head_dim() != r.head_dim)
    throw std::logic_error("estimate_sampled: keys not loaded for this request");
  constexpr int64_t B = kTileRows;
  const int64_t n = r.n_keys(), d = r.head_dim, g = r.group();
  shape_scores(r, B, (n + kblock - 1) / kblock, out);
  out.kblock = kblock;
  std::fill(out.s.begin(), out.s.end(), 0.0f);
  if (peak) {
    *peak = out;  // shape and zeros
  }
  // Each KV head's keys transposed once for all its query heads and blocks.
  thread_local std::vector<float> transposed;
  const size_t per_head = kernels::transposed_key_floats(n, static_cast<int32_t>(d));
  transposed.resize(per_head * static_cast<size_t>(r.n_kv_heads));
  float* const kt = transposed.data();  // the calling thread's: thread_local names another vector in each worker
  const bool threads = worth_threads(double(r.n_q_heads) * r.n_rows * n * d / stride);
#pragma omp parallel for schedule(static) if (threads)
  for (int32_t kv = 0; kv < r.n_kv_heads; ++kv)
    kernels::transpose_key_blocks(keys.head(kv), n, static_cast<int32_t>(d), kt + kv * per_head);
  const int64_t n_qb = out.n_qb, n_kb = out.n_kb;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (threads)
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    for (int64_t qb = 0; qb < n_qb; ++qb) {
      const int64_t i0 = qb * B, i1 = std::min(r.n_rows, i0 + B);
      int32_t rows[B + 1];
      int64_t visible[B + 1];
      int32_t m = 0;
      for (int64_t i = i0 + stride - 1; i < i1; i += stride) rows[m++] = static_cast<int32_t>(i);
      if (m == 0 || rows[m - 1] != i1 - 1) rows[m++] = static_cast<int32_t>(i1 - 1);
      float* qs = scratch(0, static_cast<size_t>(m * d));
      float* mass = scratch(1, static_cast<size_t>(m * n_kb));
      for (int32_t a = 0; a < m; ++a) {
        const float* q = r.q_row(h, rows[a]);
        for (int64_t e = 0; e < d; ++e) qs[a * d + e] = r.scale * q[e];
        visible[a] = r.q_slot0() + rows[a] + 1;  // slots [0, the row's own]
      }
      kernels::key_block_mass(qs, m, visible, kt + (h / g) * per_head, static_cast<int32_t>(d), kblock,
                              mass, n_kb);
      float* e = out.row(h, qb);
      float* top = peak ? peak->row(h, qb) : nullptr;
      const float share = 1.0f / static_cast<float>(m);
      for (int32_t a = 0; a < m; ++a) {
        const float* row = mass + a * n_kb;
        for (int64_t c = 0; c * kblock < visible[a]; ++c) {
          e[c] += row[c] * share;
          if (top) top[c] = std::max(top[c], row[c]);
        }
      }
    }
  }
}

}  // namespace skim::attention

namespace skim::attention {

void top_k(const float* x, int64_t n, int64_t k, std::vector<int32_t>& out) {
  out.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  if (k < n) {
    const auto larger = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
    std::nth_element(out.begin(), out.begin() + std::max<int64_t>(k, 0), out.end(), larger);
    out.resize(static_cast<size_t>(std::max<int64_t>(k, 0)));
    std::sort(out.begin(), out.end());
  }
}

int64_t coverage_count(const float* x, int64_t n, double frac, std::vector<float>& tmp) {
  if (frac >= 1.0) return n;
  tmp.assign(x, x + n);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += tmp[static_cast<size_t>(i)];
  double need = frac * total;
  int64_t count = 0;
  auto lo = tmp.begin(), hi = tmp.end();
  // Quickselect on mass: the values > pivot either cover what is still needed
  // (recurse into them) or are all taken, then as many pivot-valued entries as
  // needed, then the rest below the pivot.
  while (need > 0 && lo != hi) {
    const auto mid = lo + (hi - lo) / 2;
    const float pivot = std::max(std::min(*lo, *mid), std::min(std::max(*lo, *mid), *(hi - 1)));
    const auto gt_end = std::partition(lo, hi, [pivot](float v) { return v > pivot; });
    double sum_gt = 0;
    for (auto it = lo; it != gt_end; ++it) sum_gt += *it;
    if (need <= sum_gt) {
      hi = gt_end;
      continue;
    }
    need -= sum_gt;
    count += gt_end - lo;
    const auto eq_end = std::partition(gt_end, hi, [pivot](float v) { return v == pivot; });
    const int64_t n_eq = eq_end - gt_end;
    if (pivot > 0 && need <= pivot * static_cast<double>(n_eq))
      return count + std::min<int64_t>(n_eq, static_cast<int64_t>(std::ceil(need / pivot)));
    need -= pivot * static_cast<double>(n_eq);
    count += n_eq;
    lo = eq_end;
  }
  return count;
}

}  // namespace skim::attention
