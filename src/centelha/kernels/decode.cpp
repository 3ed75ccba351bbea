// decode.cpp: the small per-token operations of decoding, each as one call.
//
// Why: once the matrix products are fast (lowbit.cpp), a decode step of a 135M-parameter model
// spends most of its time in the ~25 small PyTorch operations per layer around them (norms,
// rotary embedding, cache writes, attention over the cache, the SwiGLU gate): a few
// microseconds each of dispatch for almost no arithmetic. These kernels do the same work in
// one call each:
//   attend_one  rotary embedding of the new query and key, the key and value written into the
//               cache, and the query's attention over its row of the cache: everything between
//               the QKV projection and the output projection, for one new token per row;
//   rms_norm    x / rms(x) · weight over the last dimension;
//   swiglu      silu(gate) · up, for the fused gate-and-up projection's output.
//
// They compute what `centelha.model` computes with PyTorch operations, in float32, in the same
// order where it is cheap to (the rotary embedding gives identical bits; sums over channels are
// reassociated and differ in the last bits). Each cache row has its own position, so rows of
// different lengths decode together; each (row, head) is computed by itself, so a row's result
// does not depend on the other rows in the batch.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Half.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

// ---------------------------------------------------------------------------------------------
// Vec: W float32 lanes, for the widest instruction set compiled for (-march=native): AVX-512,
// AVX2 + FMA, or one plain float. The kernels below are written once against it; lengths that
// are not a multiple of W finish with plain float loops.

// The lane-wise operations, whose intrinsics differ between AVX-512 and AVX2 only in their
// width prefix (_mm512_add_ps, _mm256_add_ps): written once, for both widths.
#define VEC_LANEWISE(P)                                                                   \
  static Vec load(const float* p) { return {P##_loadu_ps(p)}; }                           \
  static Vec all(float x) { return {P##_set1_ps(x)}; }                                    \
  void store(float* p) const { P##_storeu_ps(p, v); }                                     \
  Vec operator+(Vec o) const { return {P##_add_ps(v, o.v)}; }                             \
  Vec operator-(Vec o) const { return {P##_sub_ps(v, o.v)}; }                             \
  Vec operator*(Vec o) const { return {P##_mul_ps(v, o.v)}; }                             \
  Vec operator/(Vec o) const { return {P##_div_ps(v, o.v)}; }                             \
  static Vec fma(Vec a, Vec b, Vec c) { return {P##_fmadd_ps(a.v, b.v, c.v)}; }           \
  static Vec max(Vec a, Vec b) { return {P##_max_ps(a.v, b.v)}; }                         \
  static Vec min(Vec a, Vec b) { return {P##_min_ps(a.v, b.v)}; }

#if defined(__AVX512F__)
struct Vec {
  static constexpr int W = 16;
  __m512 v;
  VEC_LANEWISE(_mm512)
  static Vec round(Vec a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT)}; }
  static Vec pow2(Vec y, Vec n) { return {_mm512_scalef_ps(y.v, n.v)}; }  // y · 2^n
  float sum() const { return _mm512_reduce_add_ps(v); }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Vec {
  static constexpr int W = 8;
  __m256 v;
  VEC_LANEWISE(_mm256)
  static Vec round(Vec a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static Vec pow2(Vec y, Vec n) {  // y · 2^n, n an integer in [-126, 127]: build 2^n's bits
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v),
                                                            _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(y.v, _mm256_castsi256_ps(bits))};
  }
  float sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
#else
struct Vec {
  static constexpr int W = 1;
  float v;
  static Vec load(const float* p) { return {*p}; }
  static Vec all(float x) { return {x}; }
  void store(float* p) const { *p = v; }
  Vec operator+(Vec o) const { return {v + o.v}; }
  Vec operator-(Vec o) const { return {v - o.v}; }
  Vec operator*(Vec o) const { return {v * o.v}; }
  Vec operator/(Vec o) const { return {v / o.v}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
  static Vec max(Vec a, Vec b) { return {std::max(a.v, b.v)}; }
  static Vec min(Vec a, Vec b) { return {std::min(a.v, b.v)}; }
  static Vec round(Vec a) { return {std::nearbyint(a.v)}; }
  static Vec pow2(Vec y, Vec n) { return {std::ldexp(y.v, static_cast<int>(n.v))}; }
  float sum() const { return v; }
};
#endif

// e^x as 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln(2)/2, e^r by Cephes' degree-6
// polynomial: ~1 ulp, in W lanes at once. x is clamped to where e^x is a normal float.
inline Vec exp(Vec x) {
  x = Vec::min(Vec::max(x, Vec::all(-87.0f)), Vec::all(88.0f));
  const Vec n = Vec::round(x * Vec::all(1.44269504088896341f));
  Vec r = Vec::fma(n, Vec::all(-0.693359375f), x);  // ln 2 in two parts: r stays exact
  r = Vec::fma(n, Vec::all(2.12194440e-4f), r);
  Vec p = Vec::all(1.9875691500e-4f);
  p = Vec::fma(p, r, Vec::all(1.3981999507e-3f));
  p = Vec::fma(p, r, Vec::all(8.3334519073e-3f));
  p = Vec::fma(p, r, Vec::all(4.1665795894e-2f));
  p = Vec::fma(p, r, Vec::all(1.6666665459e-1f));
  p = Vec::fma(p, r, Vec::all(5.0000001201e-1f));
  const Vec y = Vec::fma(p, r * r, r + Vec::all(1.0f));
  return Vec::pow2(y, n);
}

inline float exp(float x) {
  float lane[Vec::W] = {x};
  exp(Vec::load(lane)).store(lane);
  return lane[0];
}

float dot(const float* a, const float* b, int64_t n) {
  Vec acc = Vec::all(0.f);
  int64_t i = 0;
  for (; i + Vec::W <= n; i += Vec::W) acc = Vec::fma(Vec::load(a + i), Vec::load(b + i), acc);
  float sum = acc.sum();
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// out[i] += w · x[i]
void add_scaled(float* out, float w, const float* x, int64_t n) {
  const Vec wv = Vec::all(w);
  int64_t i = 0;
  for (; i + Vec::W <= n; i += Vec::W) Vec::fma(wv, Vec::load(x + i), Vec::load(out + i)).store(out + i);
  for (; i < n; ++i) out[i] += w * x[i];
}

// x[i] ← e^(x[i] − shift); returns the sum of the new values.
float exp_shifted(float* x, float shift, int64_t n) {
  const Vec sv = Vec::all(shift);
  Vec total = Vec::all(0.f);
  int64_t i = 0;
  for (; i + Vec::W <= n; i += Vec::W) {
    const Vec e = exp(Vec::load(x + i) - sv);
    e.store(x + i);
    total = total + e;
  }
  float sum = total.sum();
  for (; i < n; ++i) sum += (x[i] = exp(x[i] - shift));
  return sum;
}

// Pair (i, i + D/2) rotated by the position's angle: x·cos + roll(x, D/2)·signed_sin, the
// formula of model.apply_rope, evaluated in the same order (bit-identical results).
void rotate(const float* x, const float* cos, const float* ssin, int64_t D, float* out) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < D; ++i) {
    const float a = x[i] * cos[i];
    const float b = x[i < half ? i + half : i - half] * ssin[i];
    out[i] = a + b;
  }
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name,
              " must be a float32 CPU tensor");
}

// ---------------------------------------------------------------------------------------------
// Attention of one new token per row over the cache, float32 or float16 (half the bytes to read:
// past a few hundred positions, reading the cache is most of a decode step's attention).
//
// The work is split into tasks of (row, kv head, chunk of kChunk positions): each task reads its
// keys and values once for all the query heads of the group that shares them (grouped-query
// attention), and keeps a partial softmax (running max, sum, weighted values); the partials of
// a row are merged at the end ("flash decoding"). Chunks depend only on the row's own length,
// so a row's result is the same whatever else is in the batch and however many threads run.
constexpr int64_t kChunk = 128;

// n values of the cache as float32: float32 ones where they are, float16 ones widened into out.
const float* widen(const float* x, int64_t, float*) { return x; }
const float* widen(const at::Half* x, int64_t n, float* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
#endif
  for (; i < n; ++i) out[i] = static_cast<float>(x[i]);
  return out;
}

void narrow(const float* x, int64_t n, float* out) { std::copy(x, x + n, out); }
void narrow(const float* x, int64_t n, at::Half* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<at::Half>(x[i]);  // round to nearest
}

// scores[j] = q · k_j for n keys of D channels (rows of k). Four keys at a time: four
// independent chains of multiply-adds keep the vector units busy.
void scores_of(const float* q, const float* k, int64_t n, int64_t D, float* scores) {
  int64_t j = 0;
  if (D % Vec::W == 0) {
    for (; j + 4 <= n; j += 4) {
      const float* k0 = k + j * D;
      Vec a0 = Vec::all(0.f), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t d = 0; d < D; d += Vec::W) {
        const Vec qv = Vec::load(q + d);
        a0 = Vec::fma(qv, Vec::load(k0 + d), a0);
        a1 = Vec::fma(qv, Vec::load(k0 + D + d), a1);
        a2 = Vec::fma(qv, Vec::load(k0 + 2 * D + d), a2);
        a3 = Vec::fma(qv, Vec::load(k0 + 3 * D + d), a3);
      }
      scores[j] = a0.sum();
      scores[j + 1] = a1.sum();
      scores[j + 2] = a2.sum();
      scores[j + 3] = a3.sum();
    }
  }
  for (; j < n; ++j) scores[j] = dot(q, k + j * D, D);
}

// out[0…D) = Σ_j p[j] · v_j over n rows of v, accumulated in registers when D is 4 or 8
// vectors wide (head sizes 64 and 128 with AVX-512), else through memory.
template <int DW>
void weighted_sum_fixed(const float* p, const float* v, int64_t n, float* out) {
  constexpr int64_t D = DW * Vec::W;
  Vec acc[DW];
  for (int i = 0; i < DW; ++i) acc[i] = Vec::all(0.f);
  for (int64_t j = 0; j < n; ++j) {
    const Vec w = Vec::all(p[j]);
    for (int i = 0; i < DW; ++i) acc[i] = Vec::fma(w, Vec::load(v + j * D + i * Vec::W), acc[i]);
  }
  for (int i = 0; i < DW; ++i) acc[i].store(out + i * Vec::W);
}

void weighted_sum(const float* p, const float* v, int64_t n, int64_t D, float* out) {
  if (D == 4 * Vec::W) return weighted_sum_fixed<4>(p, v, n, out);
  if (D == 8 * Vec::W) return weighted_sum_fixed<8>(p, v, n, out);
  std::fill(out, out + D, 0.f);
  for (int64_t j = 0; j < n; ++j) add_scaled(out, p[j], v + j * D, D);
}

// Where one call's inputs are: qkv rows, rotary tables, shapes, and the layer's first cached
// element (cache offsets are those of a contiguous [rows, Hkv, S, D] block).
struct Rows {
  const float* qkv;
  const float* cos;
  const float* sin;
  int64_t cos_stride, sin_stride, B, n_head, n_kv_head, D, S, cache_offset;
};

template <typename T>
void attend(const Rows& r, const std::vector<int64_t>& pos, T* cache_k, T* cache_v, float* y) {
  const int64_t D = r.D, heads = r.n_head + 2 * r.n_kv_head, group = r.n_head / r.n_kv_head;
  const int64_t row_stride = r.n_kv_head * r.S * D, head_stride = r.S * D;
  T* kc = cache_k + r.cache_offset;
  T* vc = cache_v + r.cache_offset;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // Queries rotated and pre-scaled; the new keys (rotated) and values into the cache.
  std::vector<float> q(r.B * r.n_head * D), tmp(D);
  for (int64_t b = 0; b < r.B; ++b) {
    const float* row = r.qkv + b * heads * D;
    const float* cos = r.cos + b * r.cos_stride;
    const float* sin = r.sin + b * r.sin_stride;
    for (int64_t h = 0; h < heads; ++h) {
      const float* x = row + h * D;
      if (r.cos != nullptr && h < r.n_head + r.n_kv_head) {
        rotate(x, cos, sin, D, tmp.data());
      } else {
        std::copy(x, x + D, tmp.data());
      }
      if (h < r.n_head) {
        float* qh = q.data() + (b * r.n_head + h) * D;
        for (int64_t d = 0; d < D; ++d) qh[d] = tmp[d] * scale;
      } else {
        const bool is_key = h < r.n_head + r.n_kv_head;
        const int64_t kvh = is_key ? h - r.n_head : h - r.n_head - r.n_kv_head;
        T* dst = (is_key ? kc : vc) + b * row_stride + kvh * head_stride + pos[b] * D;
        narrow(tmp.data(), D, dst);
      }
    }
  }

  struct Task { int64_t b, kvh, j0, j1; };
  std::vector<Task> tasks;
  std::vector<int64_t> first_task(r.B);
  for (int64_t b = 0; b < r.B; ++b) {
    first_task[b] = static_cast<int64_t>(tasks.size());
    for (int64_t kvh = 0; kvh < r.n_kv_head; ++kvh)
      for (int64_t j0 = 0; j0 <= pos[b]; j0 += kChunk)
        tasks.push_back({b, kvh, j0, std::min(j0 + kChunk, pos[b] + 1)});
  }
  // Per task and query head of its group: max score, Σ e^(s − max), Σ e^(s − max) · v.
  const int64_t part = D + 2;
  std::vector<float> partials(tasks.size() * group * part);
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(group * kChunk), kbuf(kChunk * D), vbuf(kChunk * D);
    for (int64_t t = begin; t < end; ++t) {
      const Task& task = tasks[t];
      const int64_t n = task.j1 - task.j0;
      const T* keys = kc + task.b * row_stride + task.kvh * head_stride + task.j0 * D;
      const T* values = vc + task.b * row_stride + task.kvh * head_stride + task.j0 * D;
      const float* qg = q.data() + (task.b * r.n_head + task.kvh * group) * D;
      const float* k = widen(keys, n * D, kbuf.data());
      for (int64_t g = 0; g < group; ++g) scores_of(qg + g * D, k, n, D, scores.data() + g * kChunk);
      const float* v = widen(values, n * D, vbuf.data());
      float* out = partials.data() + t * group * part;
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores.data() + g * kChunk;
        const float top = *std::max_element(s, s + n);
        out[g * part] = top;
        out[g * part + 1] = exp_shifted(s, top, n);
        weighted_sum(s, v, n, D, out + g * part + 2);
      }
    }
  });

  // Merge each row's chunks: rescale every partial to the row's overall max.
  // A row's tasks are ordered by kv head, then chunk.
  for (int64_t b = 0; b < r.B; ++b) {
    const int64_t chunks = (pos[b] + kChunk) / kChunk;
    for (int64_t h = 0; h < r.n_head; ++h) {
      const int64_t kvh = h / group, g = h % group;
      const float* first = partials.data() + (first_task[b] + kvh * chunks) * group * part + g * part;
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) top = std::max(top, first[c * group * part]);
      float total = 0.f;
      float* o = y + (b * r.n_head + h) * D;
      std::fill(o, o + D, 0.f);
      for (int64_t c = 0; c < chunks; ++c) {
        const float* p = first + c * group * part;
        const float w = exp(p[0] - top);
        total += w * p[1];
        add_scaled(o, w, p + 2, D);
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  }
}

// qkv [B, H + 2·Hkv, D] (contiguous): the new token's projections, query heads first.
// cos, ssin [B or 1, D], or empty for models without rotary embedding.
// cache_k, cache_v [layers, rows, Hkv, S, D] (contiguous): the whole cache; this call uses
// layer `layer` and rows row0…row0+B-1 (taking the whole cache spares the caller a view per
// layer). positions int64 [B]: where each row's new token goes; it attends to 0…p.
// Returns [B, H·D].
at::Tensor attend_one(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& ssin,
                      const at::Tensor& cache_k, const at::Tensor& cache_v, int64_t layer,
                      int64_t row0, const at::Tensor& positions, int64_t n_head,
                      int64_t n_kv_head) {
  check_float(qkv, "qkv");
  TORCH_CHECK(cache_k.device().is_cpu() && cache_k.scalar_type() == cache_v.scalar_type() &&
                  (cache_k.scalar_type() == at::kFloat || cache_k.scalar_type() == at::kHalf),
              "the cache must be float32 or float16 on the CPU");
  TORCH_CHECK(qkv.dim() == 3 && qkv.is_contiguous(), "qkv must be contiguous [B, heads, D]");
  const int64_t B = qkv.size(0), D = qkv.size(2);
  TORCH_CHECK(n_kv_head > 0 && n_head % n_kv_head == 0 && qkv.size(1) == n_head + 2 * n_kv_head,
              "qkv has ", qkv.size(1), " heads, expected ", n_head, " + 2·", n_kv_head);
  TORCH_CHECK(D % 2 == 0, "head size must be even");
  TORCH_CHECK(cache_k.dim() == 5 && cache_k.is_contiguous() && cache_v.is_contiguous() &&
                  cache_k.sizes() == cache_v.sizes() && cache_k.size(2) == n_kv_head &&
                  cache_k.size(4) == D,
              "cache must be contiguous [layers, rows, kv heads, S, D], keys and values alike");
  TORCH_CHECK(layer >= 0 && layer < cache_k.size(0) && row0 >= 0 && row0 + B <= cache_k.size(1),
              "layer ", layer, " or rows ", row0, "…", row0 + B - 1, " outside the cache");
  const int64_t S = cache_k.size(3);
  TORCH_CHECK(positions.device().is_cpu() && positions.scalar_type() == at::kLong &&
                  positions.dim() == 1 && positions.size(0) == B,
              "positions must be int64 [B]");
  const bool rope = cos.numel() > 0;
  if (rope) {
    check_float(cos, "cos");
    check_float(ssin, "sin");
    TORCH_CHECK(cos.dim() == 2 && cos.sizes() == ssin.sizes() && cos.size(1) == D &&
                    (cos.size(0) == B || cos.size(0) == 1) && cos.stride(1) == 1 &&
                    ssin.stride(1) == 1,
                "cos and sin must be [B or 1, D]");
  }
  std::vector<int64_t> pos(B);
  const int64_t* p = positions.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(p[b] >= 0 && p[b] < S, "position ", p[b], " is outside the cache (", S, ")");
    pos[b] = p[b];
  }

  const float* cs = rope ? cos.data_ptr<float>() : nullptr;
  const float* sn = rope ? ssin.data_ptr<float>() : nullptr;
  const Rows rows{qkv.data_ptr<float>(), cs, sn, rope && cos.size(0) == B ? cos.stride(0) : 0,
                  rope && ssin.size(0) == B ? ssin.stride(0) : 0, B, n_head, n_kv_head, D, S,
                  (layer * cache_k.size(1) + row0) * n_kv_head * S * D};
  at::Tensor out = at::empty({B, n_head * D}, qkv.options());
  if (cache_k.scalar_type() == at::kHalf) {
    attend<at::Half>(rows, pos, cache_k.data_ptr<at::Half>(), cache_v.data_ptr<at::Half>(),
                     out.data_ptr<float>());
  } else {
    attend<float>(rows, pos, cache_k.data_ptr<float>(), cache_v.data_ptr<float>(),
                  out.data_ptr<float>());
  }
  return out;
}

// x [..., C] contiguous float32, weight [C]: x / sqrt(mean(x²) + eps) · weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_float(x, "x");
  check_float(weight, "weight");
  TORCH_CHECK(x.is_contiguous() && x.dim() >= 1, "x must be contiguous");
  const int64_t C = x.size(-1), rows = C > 0 ? x.numel() / C : 0;
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C && weight.is_contiguous(),
              "weight must be [", C, "]");
  at::Tensor out = at::empty_like(x);
  const float* in = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = in + r * C;
      const float inv = 1.0f / std::sqrt(dot(xr, xr, C) / C + static_cast<float>(eps));
      for (int64_t c = 0; c < C; ++c) o[r * C + c] = xr[c] * inv * w[c];
    }
  });
  return out;
}

// h [..., 2F] contiguous float32 (gate, then up) → silu(gate) · up [..., F].
at::Tensor swiglu(const at::Tensor& h) {
  check_float(h, "h");
  TORCH_CHECK(h.is_contiguous() && h.dim() >= 1 && h.size(-1) % 2 == 0,
              "h must be contiguous with an even last dimension");
  const int64_t F = h.size(-1) / 2, rows = F > 0 ? h.numel() / (2 * F) : 0;
  std::vector<int64_t> sizes(h.sizes().begin(), h.sizes().end());
  sizes.back() = F;
  at::Tensor out = at::empty(sizes, h.options());
  const float* in = h.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(F, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* gate = in + r * 2 * F;
      const float* up = gate + F;
      float* out_row = o + r * F;
      int64_t c = 0;
      for (; c + Vec::W <= F; c += Vec::W) {
        const Vec g = Vec::load(gate + c);
        const Vec silu = g / (Vec::all(1.0f) + exp(Vec::all(0.f) - g));
        (silu * Vec::load(up + c)).store(out_row + c);
      }
      for (; c < F; ++c) out_row[c] = gate[c] / (1.0f + exp(-gate[c])) * up[c];
    }
  });
  return out;
}

}  // namespace

// Called from lowbit.cpp's module definition: one extension, one build.
void add_decode_ops(pybind11::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("attend_one", &attend_one,
        "rotary + cache write + attention for one new token per row → [B, H·D]", nogil);
  m.def("rms_norm", &rms_norm, "x / rms(x) · weight over the last dimension", nogil);
  m.def("swiglu", &swiglu, "silu(gate) · up of [..., 2F] → [..., F]", nogil);
}
