// lowbit.cpp: centelha's low-bit matrix-vector kernels (a PyTorch C++ extension).
//
// What it computes: y = x · Wᵀ for float32 activations x [M, K] (M small: decode) and a weight
// W [N, K] stored in blocks of 32 consecutive input features of one output row:
//   Q8: qweight int8 [N, K],     scales fp16 [N, K/32]:                w = scale · q
//   Q4: qweight uint8 [N, K/2],  scales and mins fp16 [N, K/32]:       w = scale · q + min,
//       q in 0..15; byte j (0..15) of a block holds q[j] in its low nibble and q[j+16] in its
//       high one: GGUF's Q4_0/Q4_1 order, so those files load by copying bytes.
//
// How: each 32-block of each activation row is quantized to int8 with one float scale
// (symmetric, scale = max|x| / 127). A block's contribution is then one integer dot product of
// 32 int8 pairs, scaled once: scale_w · scale_x · Σ q_w q_x, plus for Q4 min · scale_x · Σ q_x
// (the activation block's sum, computed once per call, not once per weight row).
// Integer dot products are what x86 does fastest per byte, and they need one unsigned operand:
//   - Q4: the nibbles are the unsigned side, activations the signed one;
//   - Q8 on AVX2 (maddubs + madd): the "sign trick", |x| against w carrying x's sign;
//     |x| ≤ 127 and |w| ≤ 127 keep maddubs' int16 pair sums from saturating, which is why
//     Q8 weights of -128 are not allowed (the Python loader clamps them to -127);
//   - Q8 with VNNI (dpbusd, no int16 stage): w + 128 against x, minus 128 · Σx per block.
// With AVX-512 VNNI two blocks go through one 512-bit register. Decode reads every weight once
// per token, so bytes per weight set the speed: 8.5 bits (Q8) or 5 bits (Q4: 4 + fp16 scale and
// min per 32) against fp32's 32.
//
// Threads: output rows are split with at::parallel_for, i.e. torch's own OpenMP pool, which
// follows torch.set_num_threads. at::parallel_for is a header template whose `#pragma omp`
// only takes effect when this file is compiled with -fopenmp (the loader does so); on Linux the
// extension's libgomp.so.1 then binds to the copy torch already loaded. A second OpenMP
// runtime would bring a second set of spinning threads fighting torch's for the same cores.
//
// Layout of the work: each thread takes its output rows four at a time, and a "tile" kernel
// multiplies 4 weight rows by 1 activation row (decode), 2 by 2, or 1 by up to 4, so that
// there are always ~4 independent accumulator chains and loads are shared.
//
// Instruction sets are chosen at compile time (-march=native by default): AVX-512 VNNI, AVX-VNNI,
// AVX2 + FMA + F16C, or the portable scalar loops, which compute the same sums.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CENTELHA_AVX2 1
#include <immintrin.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define CENTELHA_AVX512 1  // two blocks per 512-bit register, 512-bit dpbusd
#define CENTELHA_VNNI 1
#elif defined(__AVXVNNI__)
#define CENTELHA_VNNI 1  // 256-bit dpbusd, VEX-encoded
#endif
#endif

namespace {

constexpr int64_t kBlock = 32;          // weights (and activations) per block
constexpr int64_t kGroup = 8;           // blocks whose scales are handled as one vector
constexpr int64_t kGrainBytes = 32768;  // less weight than this per thread: don't split

inline float half_to_float(uint16_t bits) {
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// ---------------------------------------------------------------------------------------------
// Activations quantized to int8 per 32-block: what every weight row is multiplied by.
struct Activations {
  int64_t rows = 0, K = 0, KB = 0;
  int8_t* q = nullptr;     // [rows, K] int8 values
  int8_t* qabs = nullptr;  // [rows, K] |q|: the unsigned side of AVX2's Q8 sign trick
  float* scale = nullptr;  // [rows, KB] block scales
  float* ssum = nullptr;   // [rows, KB] scale · Σ q: multiplies Q4's per-block min
  std::vector<float> owned;  // storage for calls too large for the reused scratch
};

#ifdef CENTELHA_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline __m256 load_halves(const uint16_t* p) {  // 8 fp16 → 8 float32
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Σ u·s over 32 (unsigned, signed) byte pairs, as 8 int32 partial sums.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
  // maddubs adds pairs into int16: |u·s + u·s| ≤ 2·255·127 would saturate, which is why the
  // callers keep one side ≤ 127 (Q8: |x|; Q4: nibbles ≤ 15).
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// A Q8 weight block made ready for dot_u8s8 against activations.
//  - VNNI: dpbusd has no int16 stage, so w + 128 (unsigned) can meet x directly; the extra
//    128·Σx is subtracted once per row from the activations' block sums (see q8_row).
//  - AVX2: kept as is; q8_dot applies the sign trick.
inline __m256i q8_prepare(const int8_t* w) {
#ifdef CENTELHA_VNNI
  return _mm256_xor_si256(load256(w), _mm256_set1_epi8(static_cast<char>(0x80)));
#else
  return load256(w);
#endif
}

inline __m256i q8_dot(__m256i w, const int8_t* xq, const int8_t* xa) {
#ifdef CENTELHA_VNNI
  (void)xa;
  return dot_u8s8(w, load256(xq));
#else
  return dot_u8s8(load256(xa), _mm256_sign_epi8(w, load256(xq)));  // Σ |x| · (w · sign x)
#endif
}

// The 32 nibbles of one Q4 block as 32 bytes in weight order: the 16 bytes go to both 128-bit
// lanes and the upper lane is shifted right by 4 (its high nibbles are q[16..31]).
inline __m256i unpack_nibbles(const uint8_t* p) {
  const __m256i both =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i shifted = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));
  return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

#ifdef CENTELHA_AVX512
inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// Two consecutive Q4 blocks (32 bytes) as 64 weight bytes: lanes [b lo, b hi, b+1 lo, b+1 hi].
inline __m512i unpack_nibbles_pair(const uint8_t* p) {
  const __m512i v = _mm512_zextsi256_si512(load256(p));
  const __m512i lanes = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(1, 1, 0, 0));  // [b, b, b+1, b+1]
  const __m512i shifted = _mm512_srlv_epi64(lanes, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
  return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F));
}

#endif

void quantize_block(const float* x, int8_t* q, int8_t* qabs, float* scale, float* ssum) {
  const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
  const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 a =
      _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                    _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
  const float amax = hmax(a);
  const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // ties to even
  __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), kRound));
  __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), kRound));
  __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), kRound));
  __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), kRound));
  const int32_t sum =
      hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
  // int32 → int8 by two saturating packs; they interleave 128-bit lanes, the permute undoes it.
  i0 = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), i0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(qabs), _mm256_abs_epi8(i0));
  *scale = amax / 127.0f;
  *ssum = *scale * static_cast<float>(sum);
}
#else
void quantize_block(const float* x, int8_t* q, int8_t* qabs, float* scale, float* ssum) {
  float amax = 0.0f;
  for (int64_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
  int32_t sum = 0;
  for (int64_t j = 0; j < kBlock; ++j) {
    const int32_t v = static_cast<int32_t>(std::nearbyint(x[j] * id));  // ties to even
    q[j] = static_cast<int8_t>(v);
    qabs[j] = static_cast<int8_t>(v < 0 ? -v : v);
    sum += v;
  }
  *scale = amax / 127.0f;
  *ssum = *scale * static_cast<float>(sum);
}
#endif

Activations quantize_activations(const at::Tensor& x) {
  Activations a;
  a.K = x.size(-1);
  a.rows = x.numel() / a.K;
  a.KB = a.K / kBlock;
  // One buffer: the float scales, then the int8 values. A decode call's few kilobytes are
  // reused from call to call (per calling thread: the GIL is released while kernels run).
  constexpr size_t kReuseFloats = size_t{1} << 20;
  const size_t floats = 2 * a.rows * a.KB + (2 * a.rows * a.K + 3) / 4;
  thread_local std::vector<float> scratch;
  float* base;
  if (floats <= kReuseFloats) {
    if (scratch.size() < floats) scratch.resize(floats);
    base = scratch.data();
  } else {
    a.owned.resize(floats);
    base = a.owned.data();
  }
  a.scale = base;
  a.ssum = base + a.rows * a.KB;
  a.q = reinterpret_cast<int8_t*>(base + 2 * a.rows * a.KB);
  a.qabs = a.q + a.rows * a.K;
  const float* xp = x.data_ptr<float>();
  // Threads only pay off for long prompts; a decode row is a few dozen blocks.
  at::parallel_for(0, a.rows * a.KB, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      quantize_block(xp + i * kBlock, a.q + i * kBlock, a.qabs + i * kBlock, a.scale + i,
                     a.ssum + i);
    }
  });
  return a;
}

// ---------------------------------------------------------------------------------------------
// unroll<N>(f) calls f(0), ..., f(N-1) with compile-time indices. The accumulator arrays are
// only ever indexed by such constants, so the compiler keeps them in registers; a plain loop
// indexed by j % U left them in memory (a store and a reload on every multiply-add).
template <typename F, int... I>
[[gnu::always_inline]] inline void unroll_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
[[gnu::always_inline]] inline void unroll(F&& f) {
  unroll_impl(f, std::make_integer_sequence<int, N>{});
}

// Tile kernels: NR consecutive weight rows × R activation rows (NR · R ≤ 4) → NR · R sums.
//
// Blocks go by groups of 8: the group's 8 fp16 weight scales become one float vector, times
// the activations' 8 block scales, so each block then costs one multiply-add of its int32
// partial sums by a broadcast scale. Several weight rows at once (decode: 4 rows × 1 token)
// share the activation loads, give the multiply-adds independent chains to overlap (each waits
// ~4 cycles for its previous one), and share one final horizontal sum.
//
// The block formats differ only in a few steps, given by these two policies:
//   block/pair:  a block (two blocks) of weights as unsigned bytes ready for the dot product;
//   kOffset:     the per-block correction, kOffset · h[b] · scale_x · Σx, where h is the
//                format's second fp16 array: Q4's min (kOffset 1), or with VNNI Q8's own scale
//                (kOffset -128: the bytes fed to dpbusd were w + 128).
#ifdef CENTELHA_AVX2
struct Q8Format {
  static constexpr int64_t kBytes = kBlock;  // bytes per block
#ifdef CENTELHA_VNNI
  static constexpr float kOffset = -128.0f;
#else
  static constexpr float kOffset = 0.0f;
#endif
  static __m256i block(const uint8_t* p) { return q8_prepare(reinterpret_cast<const int8_t*>(p)); }
  static __m256i dot(__m256i w, const int8_t* xq, const int8_t* xa) { return q8_dot(w, xq, xa); }
#ifdef CENTELHA_AVX512
  static __m512i pair(const uint8_t* p) {
    return _mm512_xor_si512(load512(p), _mm512_set1_epi8(static_cast<char>(0x80)));
  }
#endif
};

struct Q4Format {
  static constexpr int64_t kBytes = kBlock / 2;
  static constexpr float kOffset = 1.0f;
  static __m256i block(const uint8_t* p) { return unpack_nibbles(p); }
  static __m256i dot(__m256i w, const int8_t* xq, const int8_t*) {
    return dot_u8s8(w, load256(xq));
  }
#ifdef CENTELHA_AVX512
  static __m512i pair(const uint8_t* p) { return unpack_nibbles_pair(p); }
#endif
};

// Decode streams the weights from memory once. The tiles read 4 rows side by side, which
// hides the stream from the hardware prefetcher, so the next tiles' bytes are requested ahead.
constexpr int64_t kPrefetchTiles = 2;
inline void prefetch(const uint8_t* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

// Four horizontal sums at once: [Σv0, Σv1, Σv2, Σv3].
inline __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

#ifdef CENTELHA_AVX512
inline __m256 fold(__m512 v) {  // 16 lanes → 8 lanes with the same total
  const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return _mm256_add_ps(_mm512_castps512_ps256(v), high);
}
#endif

// Weights w (row stride `wstride` bytes) with scales ws and offset halves wo (row stride KB)
// times activation rows m0.. of `a`; y[n * R + r] receives weight row n · activation row r.
template <typename Format, int NR, int R>
void tile(const uint8_t* w, int64_t wstride, const uint16_t* ws, const uint16_t* wo,
          const Activations& a, int64_t m0, float* y) {
  const int64_t K = a.K, KB = a.KB;
  const int8_t* xq = a.q + m0 * K;
  const int8_t* xa = a.qabs + m0 * K;
  constexpr bool kHasOffset = Format::kOffset != 0.0f;
  __m256 acc[NR][R];  // float partial sums, one block at a time
  __m256 off[NR][R];  // Σ_b h[b] · scale_x · Σx, 8 blocks per lane group
#ifdef CENTELHA_AVX512
  __m512 acc2[NR][R];  // float partial sums, two blocks at a time
#endif
  unroll<NR>([&](auto n) [[gnu::always_inline]] {
    unroll<R>([&](auto r) [[gnu::always_inline]] {
      acc[n][r] = off[n][r] = _mm256_setzero_ps();
#ifdef CENTELHA_AVX512
      acc2[n][r] = _mm512_setzero_ps();
#endif
    });
  });
  const float* xs = a.scale + m0 * KB;
  const float* ss = a.ssum + m0 * KB;
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  // Rows shorter than one group (tiny models): scales copied to zero-padded 8-wide buffers.
  // (Filled only then: zeroing them on every call costs more than a short row's products.)
  alignas(32) uint16_t sbuf[NR][kGroup], obuf[NR][kGroup];
  alignas(32) float xbuf[R][kGroup], sumbuf[R][kGroup];
  if (KB < kGroup) {
    for (int i = 0; i < kGroup; ++i) {
      const bool in = i < KB;
      for (int n = 0; n < NR; ++n) {
        sbuf[n][i] = in ? ws[n * KB + i] : 0;
        obuf[n][i] = in ? wo[n * KB + i] : 0;
      }
      for (int r = 0; r < R; ++r) {
        xbuf[r][i] = in ? xs[r * KB + i] : 0.0f;
        sumbuf[r][i] = in ? ss[r * KB + i] : 0.0f;
      }
    }
  }
  for (int64_t g = 0; g < KB; g += kGroup) {
    // This group's blocks g .. g+nb-1 have their scales in lanes lane0 .. lane0+nb-1 of the
    // 8-wide vectors read at sg/og (weights, row stride hstride), xsg/ssg (activations, row
    // stride xstride). The last group of a row reads the row's last 8 scales (in bounds)
    // and uses its top lanes; `keep` drops the lanes already counted from the offsets.
    const int nb = static_cast<int>(std::min<int64_t>(kGroup, KB - g));
    int lane0 = 0;
    __m256 keep = all;
    const uint16_t *sg = ws + g, *og = wo + g;
    const float *xsg = xs + g, *ssg = ss + g;
    int64_t hstride = KB, xstride = KB;
    if (KB < kGroup) {
      sg = sbuf[0], og = obuf[0], xsg = xbuf[0], ssg = sumbuf[0];
      hstride = xstride = kGroup;
    } else if (nb < kGroup) {
      lane0 = kGroup - nb;
      keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                    _mm256_set1_epi32(lane0 - 1)));
      sg -= lane0, og -= lane0, xsg -= lane0, ssg -= lane0;
    }
    __m256 sc[NR][R];  // scale_w · scale_x per block (lane)
    unroll<NR>([&](auto n) [[gnu::always_inline]] {
      const uint8_t* ahead = w + (n + kPrefetchTiles * NR) * wstride + g * Format::kBytes;
      for (int64_t line = 0; line < kGroup * Format::kBytes; line += 64) prefetch(ahead + line);
      const __m256 wscale = load_halves(sg + n * hstride);
      [[maybe_unused]] __m256 offset = _mm256_setzero_ps();
      if constexpr (kHasOffset) offset = _mm256_and_ps(load_halves(og + n * hstride), keep);
      unroll<R>([&](auto r) [[gnu::always_inline]] {
        sc[n][r] = _mm256_mul_ps(wscale, _mm256_loadu_ps(xsg + r * xstride));
        if constexpr (kHasOffset)
          off[n][r] = _mm256_fmadd_ps(offset, _mm256_loadu_ps(ssg + r * xstride), off[n][r]);
      });
    });
    int j = 0;  // block index within the group
#ifdef CENTELHA_AVX512
    for (; j + 2 <= nb; j += 2) {
      const int64_t b = g + j;
      // lanes 0-7 take the scale of block j, lanes 8-15 that of block j+1
      const __m512i pick = _mm512_add_epi32(_mm512_set1_epi32(lane0 + j),
                                            _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1,
                                                             0, 0, 0, 0, 0, 0, 0, 0));
      __m512i x[R];
      unroll<R>([&](auto r) [[gnu::always_inline]] { x[r] = load512(xq + r * K + b * kBlock); });
      unroll<NR>([&](auto n) [[gnu::always_inline]] {
        const uint8_t* p = w + n * wstride + b * Format::kBytes;
        const __m512i wv = Format::pair(p);
        unroll<R>([&](auto r) [[gnu::always_inline]] {
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, x[r]);
          const __m512 scale = _mm512_permutexvar_ps(pick, _mm512_zextps256_ps512(sc[n][r]));
          acc2[n][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc2[n][r]);
        });
      });
    }
#endif
    if (j == nb) continue;
    // Single blocks (all of them with AVX2): the scales go through memory, because a
    // broadcast load costs no arithmetic slot where a register permute would.
    alignas(32) float scb[NR][R][kGroup];
    unroll<NR>([&](auto n) [[gnu::always_inline]] {
      unroll<R>([&](auto r) [[gnu::always_inline]] { _mm256_store_ps(scb[n][r], sc[n][r]); });
    });
    for (; j < nb; ++j) {
      const int64_t b = g + j;
      unroll<NR>([&](auto n) [[gnu::always_inline]] {
        const uint8_t* p = w + n * wstride + b * Format::kBytes;
        const __m256i wv = Format::block(p);
        unroll<R>([&](auto r) [[gnu::always_inline]] {
          const int64_t at = r * K + b * kBlock;
          const __m256i dot = Format::dot(wv, xq + at, xa + at);
          const __m256 scale = _mm256_broadcast_ss(&scb[n][r][lane0 + j]);
          acc[n][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[n][r]);
        });
      });
    }
  }
  // Everything of one (n, r) into one vector, then horizontal sums (four at a time).
  __m256 total[NR * R];
  unroll<NR>([&](auto n) [[gnu::always_inline]] {
    unroll<R>([&](auto r) [[gnu::always_inline]] {
      __m256 t = acc[n][r];
#ifdef CENTELHA_AVX512
      t = _mm256_add_ps(t, fold(acc2[n][r]));
#endif
      if constexpr (kHasOffset) t = _mm256_fmadd_ps(off[n][r], _mm256_set1_ps(Format::kOffset), t);
      total[n * R + r] = t;
    });
  });
  if constexpr (NR * R == 4) {
    _mm_storeu_ps(y, hsum4(total[0], total[1], total[2], total[3]));
  } else {
    for (int i = 0; i < NR * R; ++i) y[i] = hsum(total[i]);
  }
}
#else  // portable scalar path: the same sums, one (weight row, activation row) at a time

struct Q8Format {
  static constexpr int64_t kBytes = kBlock;
  static constexpr float kOffset = 0.0f;
  static int32_t dot(const uint8_t* w, const int8_t* x) {
    const int8_t* ws = reinterpret_cast<const int8_t*>(w);
    int32_t sum = 0;
    for (int64_t j = 0; j < kBlock; ++j) sum += static_cast<int32_t>(ws[j]) * x[j];
    return sum;
  }
};

struct Q4Format {
  static constexpr int64_t kBytes = kBlock / 2;
  static constexpr float kOffset = 1.0f;
  static int32_t dot(const uint8_t* w, const int8_t* x) {
    int32_t sum = 0;
    for (int64_t j = 0; j < kBytes; ++j) {
      sum += static_cast<int32_t>(w[j] & 0x0F) * x[j];
      sum += static_cast<int32_t>(w[j] >> 4) * x[j + kBytes];
    }
    return sum;
  }
};

template <typename Format, int NR, int R>
void tile(const uint8_t* w, int64_t wstride, const uint16_t* ws, const uint16_t* wo,
          const Activations& a, int64_t m0, float* y) {
  const int64_t K = a.K, KB = a.KB;
  for (int n = 0; n < NR; ++n) {
    for (int r = 0; r < R; ++r) {
      const int8_t* xq = a.q + (m0 + r) * K;
      const float* xs = a.scale + (m0 + r) * KB;
      const float* ss = a.ssum + (m0 + r) * KB;
      float sum = 0.0f;
      for (int64_t b = 0; b < KB; ++b) {
        const int32_t dot = Format::dot(w + n * wstride + b * Format::kBytes, xq + b * kBlock);
        sum += static_cast<float>(dot) * (half_to_float(ws[n * KB + b]) * xs[b]);
        if (Format::kOffset != 0.0f) sum += half_to_float(wo[n * KB + b]) * ss[b];
      }
      y[n * R + r] = sum;
    }
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// Argument checks: a wrong dtype or shape is a bug in the caller, reported before any pointer
// arithmetic can read out of bounds.
void check_blocks(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor* mins,
                  int64_t K) {
  TORCH_CHECK(qweight.device().is_cpu() && scales.device().is_cpu(), "lowbit kernels run on CPU");
  TORCH_CHECK(qweight.dim() == 2 && qweight.is_contiguous(), "qweight must be contiguous 2-D");
  TORCH_CHECK(K > 0 && K % kBlock == 0, "K must be a positive multiple of 32, got ", K);
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() && scales.dim() == 2 &&
                  scales.size(0) == qweight.size(0) && scales.size(1) == K / kBlock,
              "scales must be contiguous float16 [N, K/32]");
  if (mins != nullptr) {
    TORCH_CHECK(mins->device().is_cpu() && mins->scalar_type() == at::kHalf &&
                    mins->is_contiguous() && mins->sizes() == scales.sizes(),
                "mins must be contiguous float16 shaped like scales");
  }
}

// x may have any leading dimensions ([..., K]): they are rows, and the output keeps them.
void check_activations(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1 && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(),
              "x must be a contiguous float32 [..., K] CPU tensor");
  TORCH_CHECK(x.size(-1) == K, "x has ", x.size(-1), " features, the weight ", K);
}

const uint16_t* half_bits(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::Half>());
}

template <int V>
using Int = std::integral_constant<int, V>;

// The rows of W are split over torch's threads. Each thread takes its rows four at a time and,
// for each four, the activation rows four at a time: the four weight rows are read from memory
// once and stay in L1 for the next activation rows.
template <typename Format>
at::Tensor matmul(const at::Tensor& x, const uint8_t* w, const uint16_t* ws, const uint16_t* wo,
                  int64_t N) {
  const Activations a = quantize_activations(x);
  const int64_t K = a.K, KB = a.KB, M = a.rows;
  const int64_t wstride = K / kBlock * Format::kBytes;  // bytes per weight row
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(at::kFloat));
  float* y = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(4, kGrainBytes / wstride);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    float part[4];
    // NR weight rows from n times R activation rows from m0, into the output.
    auto run = [&](auto nr, auto r, int64_t n, int64_t m0) {
      constexpr int NR = decltype(nr)::value, R = decltype(r)::value;
      tile<Format, NR, R>(w + n * wstride, wstride, ws + n * KB, wo + n * KB, a, m0, part);
      for (int i = 0; i < NR; ++i)
        for (int j = 0; j < R; ++j) y[(m0 + j) * N + n + i] = part[i * R + j];
    };
    for (int64_t n = n0; n < n1; n += 4) {
      const int64_t rows = std::min<int64_t>(4, n1 - n);
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int64_t R = std::min<int64_t>(4, M - m0);
        if (rows == 4 && R == 1) {
          run(Int<4>{}, Int<1>{}, n, m0);
        } else if (rows == 4 && R == 2) {
          run(Int<2>{}, Int<2>{}, n, m0);
          run(Int<2>{}, Int<2>{}, n + 2, m0);
        } else {
          for (int64_t i = n; i < n + rows; ++i) {
            switch (R) {
              case 1: run(Int<1>{}, Int<1>{}, i, m0); break;
              case 2: run(Int<1>{}, Int<2>{}, i, m0); break;
              case 3: run(Int<1>{}, Int<3>{}, i, m0); break;
              default: run(Int<1>{}, Int<4>{}, i, m0); break;
            }
          }
        }
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Entry points.

at::Tensor q8_matmul(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales) {
  TORCH_CHECK(qweight.scalar_type() == at::kChar, "Q8 qweight must be int8");
  const int64_t K = qweight.size(1);
  check_blocks(qweight, scales, nullptr, K);
  check_activations(x, K);
  const uint16_t* ws = half_bits(scales);  // with VNNI the scales are also the offset halves
  return matmul<Q8Format>(x, reinterpret_cast<const uint8_t*>(qweight.data_ptr<int8_t>()), ws,
                          ws, qweight.size(0));
}

at::Tensor q4_matmul(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                     const at::Tensor& mins) {
  TORCH_CHECK(qweight.scalar_type() == at::kByte, "Q4 qweight must be uint8");
  const int64_t K = 2 * qweight.size(1);
  check_blocks(qweight, scales, &mins, K);
  check_activations(x, K);
  return matmul<Q4Format>(x, qweight.data_ptr<uint8_t>(), half_bits(scales), half_bits(mins),
                          qweight.size(0));
}

// Float32 weights back from blocks (prefill multiplies them with fp32 GEMM). scale · q is exact
// in float32 (11-bit × 8-bit mantissas), so these equal numpy's / gguf's dequantization.
at::Tensor q8_dequantize(const at::Tensor& qweight, const at::Tensor& scales) {
  TORCH_CHECK(qweight.scalar_type() == at::kChar, "Q8 qweight must be int8");
  const int64_t N = qweight.size(0), K = qweight.size(1);
  check_blocks(qweight, scales, nullptr, K);
  at::Tensor out = at::empty({N, K}, at::TensorOptions().dtype(at::kFloat));
  const int8_t* q = qweight.data_ptr<int8_t>();
  const uint16_t* s = half_bits(scales);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N * (K / kBlock), 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float d = half_to_float(s[i]);
      for (int64_t j = 0; j < kBlock; ++j) o[i * kBlock + j] = d * static_cast<float>(q[i * kBlock + j]);
    }
  });
  return out;
}

at::Tensor q4_dequantize(const at::Tensor& qweight, const at::Tensor& scales,
                         const at::Tensor& mins) {
  TORCH_CHECK(qweight.scalar_type() == at::kByte, "Q4 qweight must be uint8");
  const int64_t N = qweight.size(0), K = 2 * qweight.size(1);
  check_blocks(qweight, scales, &mins, K);
  at::Tensor out = at::empty({N, K}, at::TensorOptions().dtype(at::kFloat));
  const uint8_t* q = qweight.data_ptr<uint8_t>();
  const uint16_t* s = half_bits(scales);
  const uint16_t* m = half_bits(mins);
  float* o = out.data_ptr<float>();
  constexpr int64_t kBytes = kBlock / 2;
  at::parallel_for(0, N * (K / kBlock), 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float d = half_to_float(s[i]), mn = half_to_float(m[i]);
      const uint8_t* qb = q + i * kBytes;
      float* ob = o + i * kBlock;
      for (int64_t j = 0; j < kBytes; ++j) {
        ob[j] = d * static_cast<float>(qb[j] & 0x0F) + mn;
        ob[j + kBytes] = d * static_cast<float>(qb[j] >> 4) + mn;
      }
    }
  });
  return out;
}

const char* simd() {
#if defined(CENTELHA_AVX512)
  return "avx512-vnni";
#elif defined(CENTELHA_VNNI)
  return "avx-vnni";
#elif defined(CENTELHA_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace

void add_decode_ops(pybind11::module_& m);  // decode.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "centelha's CPU kernels: low-bit (Q8/Q4 block) matrix products, decode steps";
  // The GIL is released while a kernel runs, so a server's other Python threads keep going.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("q8_matmul", &q8_matmul, "x [..., K] f32 · Q8 weight [N, K] → [..., N] f32", nogil);
  m.def("q4_matmul", &q4_matmul, "x [..., K] f32 · Q4 weight [N, K/2] → [..., N] f32", nogil);
  m.def("q8_dequantize", &q8_dequantize, "Q8 blocks → float32 [N, K]", nogil);
  m.def("q4_dequantize", &q4_dequantize, "Q4 blocks → float32 [N, K]", nogil);
  m.def("simd", &simd, "the instruction set this build multiplies with");
  add_decode_ops(m);
}
