// Attention kernels for an AVX-512 CPU, float32, built at run time by
// paralleldecode/decoding/cpu_kernels.py (torch.utils.cpp_extension) and registered as the
// operators paralleldecode_cpu::step_attention and paralleldecode_cpu::prefill_attention.
//
// step_attention: the decoding step's attention, a few queries per key/value head against a
// long key/value buffer, with the engine's additive mask, in one pass over the keys
// (flash-decoding: scores, online softmax and the value product per block of keys, the keys
// split between threads and the parts merged by their maxima and sums).
// prefill_attention: a prefill pass's attention, causal or under an additive mask, the same
// per-tile loop over tiles of consecutive queries (a causal tile reads the keys up to its last
// query; a masked one skips the blocks its mask hides).
//
// Layout. The queries of the heads that share key/value head g are the rows of one tile
// (row r = p * Q + q for query head g * per + p and query q), held transposed and scaled,
// qt[d][row], so that a key's element is broadcast against 16, 32 or 48 rows at once; the
// block's scores are kept transposed too, st[key][row], so the softmax runs across rows in
// registers and the value product broadcasts a value's element against the same rows. A step
// tile of at most 8 rows (rows of one query: three heads fill 3 of 16 lanes) goes one row at
// a time instead (narrow_tile), the lanes running over keys and then over the head.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace {

constexpr int kBlock = 64;      // keys per block
constexpr int kAhead = 2;       // blocks prefetched ahead
constexpr int kMaxHead = 256;   // largest head size taken
constexpr int kNarrow = 8;      // most rows of a step tile taken one at a time (narrow_tile)

// Where the data ahead is prefetched to (the attention's next key/value blocks, the linear's
// next weights). A tile's own block (16 KiB of keys and 16 of values at a head size of 64)
// with its scores and queries fills a 32 KiB L1 already, so there the data ahead goes to L2:
// on the AMD EPYC VM (32 KiB L1) 30 layers of the article step's attention over cold buffers
// took 23.1 against 28.2 ms prefetched into L1, its linears at one row 13.9 against 15.0; on
// the Intel Xeon VM (48 KiB L1) the attention's blocks into L2 measured the same or slower,
// so a larger L1 keeps the prefetches there.
const bool kAheadToL2 = [] {
  const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
  return l1 > 0 && l1 <= 32 * 1024;
}();

inline void prefetch_ahead(const float* p) {
  if (kAheadToL2)
    _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1);
  else
    _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

// e^x for 16 floats: x = n ln2 + r, e^r by a degree-7 polynomial, 2^n by scalef. Below -87
// the result is 0, never a denormal (which costs a microcode assist per operation after it).
inline __m512 exp16(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(p, n));
}

// acc[u][v] += sum over i < n of a[u * a_row + i * a_step] * b[i * W + v * 16]: eight rows of a,
// an element at a time broadcast against NV vectors of b (the scores: rows are keys, i runs
// over the head; the value product: rows are head elements, i runs over the block's keys).
template <int NV>
inline void broadcast8(const float* a, int64_t a_row, int64_t a_step, const float* b, int n, __m512 (&acc)[8][NV]) {
  constexpr int W = NV * 16;
  for (int i = 0; i < n; ++i) {
    __m512 x[NV];
    for (int v = 0; v < NV; ++v) x[v] = _mm512_load_ps(b + i * W + v * 16);
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) {
      const __m512 y = _mm512_set1_ps(a[u * a_row + i * a_step]);
      for (int v = 0; v < NV; ++v) acc[u][v] = _mm512_fmadd_ps(y, x[v], acc[u][v]);
    }
  }
}

struct Span {
  const float* key;    // this key/value head's keys, key i at key + i * key_stride
  const float* value;
  int64_t key_stride, value_stride;
  const float* mask;   // this row's mask, query q and key i at mask + q * mask_q + i * mask_k;
  int64_t mask_q, mask_k;  // null: causal, query q of the tile at position first + q sees keys <= it
  int queries;         // Q: a tile row r is query r % Q
  int64_t first;       // causal only: the position of the tile's query 0
  int valid;           // the queries that exist (a last tile's may be fewer than Q): masks read
};

// An additive mask's entry below this hides its key (the engine's masks hold the dtype's minimum).
constexpr float kHidden = -1e30f;

// Whether no query of the span sees any of keys [kb, kb + nk): the block adds nothing then and
// is skipped (another branch's slots, padding, a buffer's unfilled tail).
inline bool hidden_block(const Span& s, int64_t kb, int nk) {
  for (int q = 0; q < s.valid; ++q) {
    const float* mq = s.mask + q * s.mask_q + kb * s.mask_k;
    if (s.mask_k == 1) {
      for (int jj = 0; jj < nk; jj += 16) {
        const __mmask16 live = nk - jj >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (nk - jj)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(live, mq + jj);
        if (_mm512_mask_cmp_ps_mask(live, x, _mm512_set1_ps(kHidden), _CMP_NLT_UQ)) return false;
      }
    } else {
      for (int jj = 0; jj < nk; ++jj)
        if (!(mq[jj * s.mask_k] < kHidden)) return false;
    }
  }
  return true;
}

// Rows [r0, r0 + rows) of one tile of NV * 16 rows against keys [k0, k1). qt: (D, NV * 16)
// scaled queries. Leaves the unnormalised output transposed in out (D, NV * 16), the running
// maximum and sum of every row in max_out and sum_out (NV * 16 each).
template <int NV>
void tile(const float* qt, const Span& s, int r0, int rows, int64_t k0, int64_t k1, int D,
          float* out, float* max_out, float* sum_out) {
  constexpr int W = NV * 16;
  alignas(64) float st[kBlock * W];
  __m512 m[NV], l[NV];
  for (int v = 0; v < NV; ++v) { m[v] = _mm512_set1_ps(-INFINITY); l[v] = _mm512_setzero_ps(); }
  std::fill(out, out + D * W, 0.f);
  for (int64_t kb = k0; kb < k1; kb += kBlock) {
    const int nk = static_cast<int>(std::min<int64_t>(kBlock, k1 - kb));
    if (s.mask != nullptr && hidden_block(s, kb, nk)) continue;
    // scores st[j][r] = q_r . k_j, eight keys at a time
    int j = 0;
    for (; j + 8 <= nk; j += 8) {
      const float* kp = s.key + (kb + j) * s.key_stride;
      if (kb + kAhead * kBlock + j + 8 <= k1) {
        const float* pk = kp + kAhead * kBlock * s.key_stride;
        const float* pv = s.value + (kb + kAhead * kBlock + j) * s.value_stride;
        for (int u = 0; u < 8; ++u)
          for (int c = 0; c < D; c += 16) {
            prefetch_ahead(pk + u * s.key_stride + c);
            prefetch_ahead(pv + u * s.value_stride + c);
          }
      }
      __m512 acc[8][NV];
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u)
        for (int v = 0; v < NV; ++v) acc[u][v] = _mm512_setzero_ps();
      broadcast8<NV>(kp, s.key_stride, 1, qt, D, acc);
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u)
        for (int v = 0; v < NV; ++v) _mm512_store_ps(st + (j + u) * W + v * 16, acc[u][v]);
    }
    for (; j < nk; ++j) {
      const float* kp = s.key + (kb + j) * s.key_stride;
      __m512 acc[NV];
      for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
      for (int d = 0; d < D; ++d) {
        const __m512 k = _mm512_set1_ps(kp[d]);
        for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(k, _mm512_load_ps(qt + d * W + v * 16), acc[v]);
      }
      for (int v = 0; v < NV; ++v) _mm512_store_ps(st + j * W + v * 16, acc[v]);
    }
    // causal: a key after the tile's first query is hidden from the earlier queries
    if (s.mask == nullptr) {
      for (int jj = static_cast<int>(std::max<int64_t>(0, s.first + 1 - kb)); jj < nk; ++jj) {
        const int64_t hidden = kb + jj - s.first;  // queries q < hidden do not see key kb + jj
        for (int i = 0; i < rows; ++i)
          if ((r0 + i) % s.queries < hidden) st[jj * W + i] = -INFINITY;
      }
    }
    // the mask, added only for the queries whose mask is not all zero over this block
    for (int q = 0; s.mask != nullptr && q < s.valid; ++q) {
      const float* mq = s.mask + q * s.mask_q + kb * s.mask_k;
      bool zero = true;
      if (s.mask_k == 1) {  // a contiguous mask row: 16 keys per compare
        for (int jj = 0; jj < nk && zero; jj += 16) {
          const __mmask16 live = nk - jj >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (nk - jj)) - 1);
          zero = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(live, mq + jj), _mm512_setzero_ps(), _CMP_NEQ_UQ) == 0;
        }
      } else {
        for (int jj = 0; jj < nk && zero; ++jj) zero = mq[jj * s.mask_k] == 0.f;
      }
      if (zero) continue;
      for (int i = (q - r0 % s.queries + s.queries) % s.queries; i < rows; i += s.queries)
        for (int jj = 0; jj < nk; ++jj) st[jj * W + i] += mq[jj * s.mask_k];
    }
    // online softmax: the new maximum, the old part's scale, the block's weights and sums
    __m512 bm[NV], alpha[NV], sum[NV];
    for (int v = 0; v < NV; ++v) bm[v] = m[v];
    for (int jj = 0; jj < nk; ++jj)
      for (int v = 0; v < NV; ++v) bm[v] = _mm512_max_ps(bm[v], _mm512_load_ps(st + jj * W + v * 16));
    for (int v = 0; v < NV; ++v) {
      alpha[v] = exp16(_mm512_sub_ps(m[v], bm[v]));  // 0 on the first block (m is -inf)
      m[v] = bm[v];
      sum[v] = _mm512_setzero_ps();
    }
    for (int jj = 0; jj < nk; ++jj)
      for (int v = 0; v < NV; ++v) {
        const __m512 p = exp16(_mm512_sub_ps(_mm512_load_ps(st + jj * W + v * 16), m[v]));
        _mm512_store_ps(st + jj * W + v * 16, p);
        sum[v] = _mm512_add_ps(sum[v], p);
      }
    for (int v = 0; v < NV; ++v) l[v] = _mm512_fmadd_ps(l[v], alpha[v], sum[v]);
    // out[d][r] = out[d][r] * alpha_r + sum_j v_j[d] p_j[r], eight head elements at a time
    for (int d0 = 0; d0 < D; d0 += 8) {
      __m512 acc[8][NV];
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u)
        for (int v = 0; v < NV; ++v) acc[u][v] = _mm512_mul_ps(_mm512_load_ps(out + (d0 + u) * W + v * 16), alpha[v]);
      broadcast8<NV>(s.value + kb * s.value_stride + d0, 1, s.value_stride, st, nk, acc);
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u)
        for (int v = 0; v < NV; ++v) _mm512_store_ps(out + (d0 + u) * W + v * 16, acc[u][v]);
    }
  }
  for (int v = 0; v < NV; ++v) {
    _mm512_storeu_ps(max_out + v * 16, m[v]);
    _mm512_storeu_ps(sum_out + v * 16, l[v]);
  }
}

// Lane j of the result: the sum of a[j]'s 16 lanes (a transposing reduction: pairs, then
// pairs of pairs within each 128-bit lane, then across the four 128-bit lanes).
inline __m512 sum16(const __m512 (&a)[16]) {
  __m512 b[8], c[4];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 e0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 e1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Tile rows too few to fill a register's lanes in tile() (five rows of one query over three
// query heads per key/value head fill 3 of 16): one row at a time against blocks of 16 keys,
// the lanes running over the keys for the scores (each key's product with the query summed
// across the head by sum16) and over the head for the value product. q: (rows, DV * 16)
// scaled queries, tile row r being query r % s.queries. Leaves the same part as tile(): the
// unnormalised output transposed in out (DV * 16, W), each row's maximum and sum in max_out
// and sum_out. Step tiles only (a mask is given).
template <int DV>
void narrow_tile(const float* q, const Span& s, int rows, int64_t k0, int64_t k1, int W,
                 float* out, float* max_out, float* sum_out) {
  constexpr int D = DV * 16, KB = 16;
  alignas(64) float o[kNarrow][D];
  alignas(64) float pj[KB];
  float m[kNarrow], l[kNarrow];
  for (int r = 0; r < rows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
    std::fill(o[r], o[r] + D, 0.f);
  }
  for (int64_t kb = k0; kb < k1; kb += KB) {
    const int nk = static_cast<int>(std::min<int64_t>(KB, k1 - kb));
    if (hidden_block(s, kb, nk)) continue;
    for (int64_t j = kb + 2 * KB; j < std::min(k1, kb + 3 * KB); ++j)
      for (int c = 0; c < D; c += 16) {
        prefetch_ahead(s.key + j * s.key_stride + c);
        prefetch_ahead(s.value + j * s.value_stride + c);
      }
    const __mmask16 live = nk == KB ? 0xFFFF : static_cast<__mmask16>((1u << nk) - 1);
    for (int r = 0; r < rows; ++r) {
      __m512 qv[DV], a[KB];
      for (int c = 0; c < DV; ++c) qv[c] = _mm512_load_ps(q + r * D + c * 16);
#pragma GCC unroll 16
      for (int j = 0; j < KB; ++j) {
        a[j] = _mm512_setzero_ps();
        if (j < nk) {
          const float* kp = s.key + (kb + j) * s.key_stride;
          for (int c = 0; c < DV; ++c) a[j] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kp + c * 16), a[j]);
        }
      }
      const float* mq = s.mask + (r % s.queries) * s.mask_q + kb * s.mask_k;
      __m512 mv;
      if (s.mask_k == 1) {
        mv = _mm512_maskz_loadu_ps(live, mq);
      } else {
        for (int j = 0; j < KB; ++j) pj[j] = j < nk ? mq[j * s.mask_k] : 0.f;
        mv = _mm512_load_ps(pj);
      }
      // keys past the span's end score -inf: weight 0
      const __m512 sc = _mm512_mask_blend_ps(live, _mm512_set1_ps(-INFINITY), _mm512_add_ps(sum16(a), mv));
      const float top = std::max(m[r], _mm512_reduce_max_ps(sc)), gap = m[r] - top;
      const float alpha = gap < -87.f || m[r] == -INFINITY ? 0.f : std::exp(gap);  // no denormals
      m[r] = top;
      const __m512 p = exp16(_mm512_sub_ps(sc, _mm512_set1_ps(top)));
      l[r] = l[r] * alpha + _mm512_reduce_add_ps(p);
      _mm512_store_ps(pj, p);
      __m512 acc[DV];
      const __m512 scale_old = _mm512_set1_ps(alpha);
      for (int c = 0; c < DV; ++c) acc[c] = _mm512_mul_ps(_mm512_load_ps(o[r] + c * 16), scale_old);
      for (int j = 0; j < nk; ++j) {
        const __m512 w = _mm512_set1_ps(pj[j]);
        const float* vp = s.value + (kb + j) * s.value_stride;
        for (int c = 0; c < DV; ++c) acc[c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vp + c * 16), acc[c]);
      }
      for (int c = 0; c < DV; ++c) _mm512_store_ps(o[r] + c * 16, acc[c]);
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int d = 0; d < D; ++d) out[d * W + r] = o[r][d];
    max_out[r] = m[r];
    sum_out[r] = l[r];
  }
}

at::Tensor step_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& mask, double scale) {
  TORCH_CHECK(query.device().is_cpu() && key.device().is_cpu() && value.device().is_cpu() && mask.device().is_cpu(),
              "step_attention: CPU tensors only");
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat &&
              value.scalar_type() == at::kFloat && mask.scalar_type() == at::kFloat,
              "step_attention: float32 tensors only");
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4 && mask.dim() == 4,
              "step_attention: query (B, H, Q, D), key and value (B, G, L, D), mask (B, 1, Q, L)");
  const int64_t B = query.size(0), H = query.size(1), Q = query.size(2), D = query.size(3);
  const int64_t G = key.size(1), L = key.size(2);
  TORCH_CHECK(key.size(0) == B && value.sizes() == key.sizes() && key.size(3) == D && G > 0 && H % G == 0,
              "step_attention: key and value must be (B, G, L, D) with H a multiple of G");
  TORCH_CHECK(D % 16 == 0 && D <= kMaxHead, "step_attention: head size must be a multiple of 16, at most 256");
  TORCH_CHECK(key.stride(3) == 1 && value.stride(3) == 1, "step_attention: key and value need unit stride in D");
  TORCH_CHECK(mask.size(1) == 1 && mask.size(2) == Q && mask.size(3) == L && (mask.size(0) == B || mask.size(0) == 1),
              "step_attention: mask must be (B, 1, Q, L)");
  const int64_t per = H / G, R = per * Q;
  const int NV = R <= 16 ? 1 : 2;
  const int64_t W = NV * 16, tiles = (R + W - 1) / W;
  // Split the keys when there are too few tiles for the threads (spans of 256 keys at least).
  const int64_t threads = at::get_num_threads(), items = B * G * tiles;
  int64_t splits = 1;
  if (items < 2 * threads) splits = std::max<int64_t>(1, std::min((2 * threads + items - 1) / items, (L + 255) / 256));
  const int64_t span = (L + splits - 1) / splits, part_size = D * W + 2 * W;
  auto out = at::empty({B, Q, H, D}, query.options());
  auto parts = at::empty({items * splits, part_size}, query.options());
  const float* qp = query.data_ptr<float>();
  float* pp = parts.data_ptr<float>();
  const int64_t mb = mask.size(0) == 1 ? 0 : mask.stride(0);
  // Rows too few for the lanes go one at a time where the head size has a narrow_tile.
  const int narrow = R <= kNarrow && (D == 64 || D == 128) ? static_cast<int>(D / 16) : 0;
  at::parallel_for(0, items * splits, 1, [&](int64_t first, int64_t last) {
    alignas(64) float qt[kMaxHead * 32];
    alignas(64) float qr[kNarrow * kMaxHead];
    for (int64_t w = first; w < last; ++w) {
      const int64_t sp = w % splits, t = (w / splits) % tiles, g = (w / splits / tiles) % G, b = w / splits / tiles / G;
      const int r0 = static_cast<int>(t * W), rows = static_cast<int>(std::min<int64_t>(W, R - r0));
      if (narrow == 0) std::fill(qt, qt + D * W, 0.f);
      for (int i = 0; i < rows; ++i) {
        const int64_t r = r0 + i, h = g * per + r / Q, q = r % Q;
        const float* src = qp + b * query.stride(0) + h * query.stride(1) + q * query.stride(2);
        for (int64_t d = 0; d < D; ++d) {
          const float x = src[d * query.stride(3)] * static_cast<float>(scale);
          if (narrow == 0)
            qt[d * W + i] = x;
          else
            qr[i * D + d] = x;
        }
      }
      float* part = pp + w * part_size;
      const int64_t k0 = sp * span, k1 = std::min(L, k0 + span);
      if (k0 >= k1) {  // an empty span: weight 0 in the merge
        std::fill(part, part + part_size, 0.f);
        std::fill(part + D * W, part + D * W + W, -INFINITY);
        continue;
      }
      const Span s{key.data_ptr<float>() + b * key.stride(0) + g * key.stride(1),
                   value.data_ptr<float>() + b * value.stride(0) + g * value.stride(1),
                   key.stride(2), value.stride(2), mask.data_ptr<float>() + b * mb, mask.stride(2), mask.stride(3),
                   static_cast<int>(Q), 0, static_cast<int>(Q)};
      if (narrow == 4)
        narrow_tile<4>(qr, s, rows, k0, k1, static_cast<int>(W), part, part + D * W, part + D * W + W);
      else if (narrow == 8)
        narrow_tile<8>(qr, s, rows, k0, k1, static_cast<int>(W), part, part + D * W, part + D * W + W);
      else if (NV == 1)
        tile<1>(qt, s, r0, rows, k0, k1, static_cast<int>(D), part, part + D * W, part + D * W + W);
      else
        tile<2>(qt, s, r0, rows, k0, k1, static_cast<int>(D), part, part + D * W, part + D * W + W);
    }
  });
  float* op = out.data_ptr<float>();
  at::parallel_for(0, items, 1, [&](int64_t first, int64_t last) {
    float acc[kMaxHead];
    for (int64_t it = first; it < last; ++it) {
      const int64_t t = it % tiles, g = (it / tiles) % G, b = it / tiles / G;
      const int r0 = static_cast<int>(t * W), rows = static_cast<int>(std::min<int64_t>(W, R - r0));
      const float* base = pp + it * splits * part_size;
      for (int i = 0; i < rows; ++i) {
        float top = -INFINITY;
        for (int64_t sp = 0; sp < splits; ++sp) top = std::max(top, base[sp * part_size + D * W + i]);
        float den = 0.f;
        std::fill(acc, acc + D, 0.f);
        for (int64_t sp = 0; sp < splits; ++sp) {
          const float* part = base + sp * part_size;
          const float weight = part[D * W + i] == -INFINITY ? 0.f : std::exp(part[D * W + i] - top);
          if (weight == 0.f) continue;
          den += weight * part[D * W + W + i];
          for (int64_t d = 0; d < D; ++d) acc[d] += weight * part[d * W + i];
        }
        const int64_t r = r0 + i, h = g * per + r / Q, q = r % Q;
        float* o = op + ((b * Q + q) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = den > 0.f ? acc[d] / den : 0.f;  // 0: a query that saw no key
      }
    }
  });
  return out;
}

// A prefill pass's attention, query i (of Lq) against keys 0..Lk-1. Without a mask it is
// causal: query i is at position Lk - Lq + i and sees keys up to its position. With an additive
// mask (B or 1, 1, Lq, Lk) it is the mask's: a block of keys the mask hides from every query of
// a tile is skipped. The queries of the heads that share a key/value head go in tiles of T
// consecutive positions (T * per rows, at most 48); a causal tile reads keys up to its last
// query only, so the causal half is skipped but for the tile's own T x T corner. Tiles are
// handed out longest first, one at a time. A query that sees no key gets zeros.
at::Tensor prefill_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                             const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(query.device().is_cpu() && key.device().is_cpu() && value.device().is_cpu(),
              "prefill_attention: CPU tensors only");
  TORCH_CHECK(query.scalar_type() == at::kFloat && key.scalar_type() == at::kFloat && value.scalar_type() == at::kFloat,
              "prefill_attention: float32 tensors only");
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4,
              "prefill_attention: query (B, H, Lq, D), key and value (B, G, Lk, D)");
  const int64_t B = query.size(0), H = query.size(1), Lq = query.size(2), D = query.size(3);
  const int64_t G = key.size(1), Lk = key.size(2);
  TORCH_CHECK(key.size(0) == B && value.sizes() == key.sizes() && key.size(3) == D && G > 0 && H % G == 0,
              "prefill_attention: key and value must be (B, G, Lk, D) with H a multiple of G");
  TORCH_CHECK(Lk >= Lq || mask.has_value(), "prefill_attention: fewer keys than queries (causal)");
  TORCH_CHECK(D % 16 == 0 && D <= kMaxHead, "prefill_attention: head size must be a multiple of 16, at most 256");
  TORCH_CHECK(key.stride(3) == 1 && value.stride(3) == 1, "prefill_attention: key and value need unit stride in D");
  const float* mp = nullptr;
  int64_t mb = 0, mq = 0, mk = 0;
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == at::kFloat, "prefill_attention: the mask must be float32 on the CPU");
    TORCH_CHECK(m.dim() == 4 && m.size(1) == 1 && m.size(2) == Lq && m.size(3) == Lk && (m.size(0) == B || m.size(0) == 1),
                "prefill_attention: mask must be (B, 1, Lq, Lk)");
    mp = m.data_ptr<float>();
    mb = m.size(0) == 1 ? 0 : m.stride(0);
    mq = m.stride(2);
    mk = m.stride(3);
  }
  const int64_t per = H / G;
  TORCH_CHECK(per <= 48, "prefill_attention: at most 48 query heads per key/value head");
  const int64_t T = 48 / per, R = per * T;
  const int NV = static_cast<int>((R + 15) / 16);
  const int64_t W = NV * 16, tiles = (Lq + T - 1) / T, items = B * G * tiles, offset = Lk - Lq;
  auto out = at::empty({B, Lq, H, D}, query.options());
  const float* qp = query.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads)
  {
    alignas(64) float qt[kMaxHead * 48];
    alignas(64) float acc[kMaxHead * 48 + 2 * 48];
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < items; ++w) {
      // longest first: the last tiles of every (b, g) read the most keys (causal)
      const int64_t t = tiles - 1 - w / (B * G), g = (w % (B * G)) % G, b = (w % (B * G)) / G;
      const int64_t q0 = t * T, nq = std::min<int64_t>(T, Lq - q0);
      std::fill(qt, qt + D * W, 0.f);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t h = g * per + r / T, q = q0 + r % T;
        if (q >= Lq) continue;
        const float* src = qp + b * query.stride(0) + h * query.stride(1) + q * query.stride(2);
        for (int64_t d = 0; d < D; ++d) qt[d * W + r] = src[d * query.stride(3)] * static_cast<float>(scale);
      }
      const Span s{key.data_ptr<float>() + b * key.stride(0) + g * key.stride(1),
                   value.data_ptr<float>() + b * value.stride(0) + g * value.stride(1),
                   key.stride(2), value.stride(2), mp ? mp + b * mb + q0 * mq : nullptr, mq, mk,
                   static_cast<int>(T), offset + q0, static_cast<int>(nq)};
      const int64_t k1 = mp ? Lk : offset + q0 + nq;
      if (NV == 1)
        tile<1>(qt, s, 0, static_cast<int>(R), 0, k1, static_cast<int>(D), acc, acc + D * W, acc + D * W + W);
      else if (NV == 2)
        tile<2>(qt, s, 0, static_cast<int>(R), 0, k1, static_cast<int>(D), acc, acc + D * W, acc + D * W + W);
      else
        tile<3>(qt, s, 0, static_cast<int>(R), 0, k1, static_cast<int>(D), acc, acc + D * W, acc + D * W + W);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t h = g * per + r / T, q = q0 + r % T;
        if (q >= Lq) continue;
        const float sum = acc[D * W + W + r], inv = sum > 0.f ? 1.f / sum : 0.f;
        float* o = op + ((b * Lq + q) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[d * W + r] * inv;
      }
    }
  }
  return out;
}

// few_linear: y (M, N) = x (M, K) w^T (+ bias) for the few rows of a decoding step, over the
// weight packed by pack_linear into blocks of 16 outputs, (ceil(N / 16), K, 16), each block's
// 16 weights of one input element contiguous. A row's input element is broadcast against the
// weights of up to 64 outputs, so every weight is read once per call whatever M is and no sum
// crosses lanes; up to six rows at a time, the next six reading the same blocks from the
// cache. The threads split the output blocks.
at::Tensor pack_linear(const at::Tensor& weight) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 2,
              "pack_linear: a float32 (N, K) CPU weight");
  const int64_t N = weight.size(0), K = weight.size(1), blocks = (N + 15) / 16;
  auto w = weight.contiguous();
  if (blocks * 16 != N) w = at::constant_pad_nd(w, {0, 0, 0, blocks * 16 - N});
  return w.view({blocks, 16, K}).transpose(1, 2).contiguous();
}

template <int MR, int NB>
inline void linear_tile(const float* x, int64_t K, const float* w, float* y, int64_t N, int64_t n0,
                        const float* bias) {
  __m512 acc[NB][MR];
  for (int b = 0; b < NB; ++b)
    for (int m = 0; m < MR; ++m) acc[b][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 wv[NB];
    for (int b = 0; b < NB; ++b) {
      const float* wk = w + (b * K + k) * 16;
      prefetch_ahead(wk + 32 * 16);
      wv[b] = _mm512_load_ps(wk);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m * K + k]);
      for (int b = 0; b < NB; ++b) acc[b][m] = _mm512_fmadd_ps(wv[b], xv, acc[b][m]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t n = n0 + b * 16;
    const __mmask16 live = N - n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (N - n)) - 1);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(live, bias + n) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) _mm512_mask_storeu_ps(y + m * N + n, live, _mm512_add_ps(acc[b][m], bv));
  }
}

template <int MR>
inline void linear_rows(const float* x, int64_t K, const float* wp, float* y, int64_t N, int64_t b0, int64_t b1,
                        const float* bias) {
  int64_t b = b0;
  for (; b + 4 <= b1; b += 4) linear_tile<MR, 4>(x, K, wp + b * K * 16, y, N, b * 16, bias);
  for (; b < b1; ++b) linear_tile<MR, 1>(x, K, wp + b * K * 16, y, N, b * 16, bias);
}

at::Tensor few_linear(const at::Tensor& input, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                      int64_t N) {
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == at::kFloat && packed.scalar_type() == at::kFloat,
              "few_linear: float32 CPU tensors only");
  const int64_t K = input.size(-1), blocks = (N + 15) / 16;
  TORCH_CHECK(packed.dim() == 3 && packed.size(0) == blocks && packed.size(1) == K && packed.size(2) == 16 &&
              packed.is_contiguous(), "few_linear: the weight must come from pack_linear, (ceil(N / 16), K, 16)");
  const float* bp = nullptr;
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == N, "few_linear: a float32 bias of N elements");
    bp = b.data_ptr<float>();
  }
  const at::Tensor x = input.reshape({-1, K}).contiguous();
  const int64_t M = x.size(0);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = N;
  auto y = at::empty(shape, input.options());
  if (M == 0) return y;
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, blocks, (blocks + threads - 1) / threads, [&](int64_t b0, int64_t b1) {
    // blocks of 4 x 16 outputs, each read by every group of up to six rows in turn
    for (int64_t g0 = b0; g0 < b1; g0 += 4) {
      const int64_t g1 = std::min(b1, g0 + 4);
      for (int64_t m0 = 0; m0 < M; m0 += 6) {
        const float* xm = xp + m0 * K;
        float* ym = yp + m0 * N;
        switch (std::min<int64_t>(6, M - m0)) {
          case 1: linear_rows<1>(xm, K, wp, ym, N, g0, g1, bp); break;
          case 2: linear_rows<2>(xm, K, wp, ym, N, g0, g1, bp); break;
          case 3: linear_rows<3>(xm, K, wp, ym, N, g0, g1, bp); break;
          case 4: linear_rows<4>(xm, K, wp, ym, N, g0, g1, bp); break;
          case 5: linear_rows<5>(xm, K, wp, ym, N, g0, g1, bp); break;
          default: linear_rows<6>(xm, K, wp, ym, N, g0, g1, bp); break;
        }
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(paralleldecode_cpu, m) {
  m.def("step_attention(Tensor query, Tensor key, Tensor value, Tensor mask, float scale) -> Tensor");
  m.def("prefill_attention(Tensor query, Tensor key, Tensor value, Tensor? mask, float scale) -> Tensor");
  m.def("pack_linear(Tensor weight) -> Tensor");
  m.def("few_linear(Tensor input, Tensor packed, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(paralleldecode_cpu, CPU, m) {
  m.impl("step_attention", &step_attention);
  m.impl("prefill_attention", &prefill_attention);
  m.impl("pack_linear", &pack_linear);
  m.impl("few_linear", &few_linear);
}
