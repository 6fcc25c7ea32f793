// The SIMD vocabulary: the same small set of names for every instruction set, so the kernels in
// kernels_simd.inc are written once. Included only from kernels_simd.inc, inside an anonymous
// namespace, after the translation unit has included its intrinsics header and defined one of
// MICROGPT_SIMD_AVX512, MICROGPT_SIMD_AVX2, MICROGPT_SIMD_NEON.
//
//   vf         a vector of kVL floats          vi      a vector of kVL int32
//   vzero()    vset1(s)   vload(p)   vstore(p, v)            unaligned loads and stores
//   vload_part(p, m)     vstore_part(p, v, m)                the first m lanes (1 <= m <= kVL)
//                        only: no access beyond p + m, the other lanes load as 0
//   vload_f16(p)         kVL IEEE float16 (uint16_t) widened exactly to float
//   vadd vsub vmul vdiv vmax vmin    vfma(a, b, c) = a * b + c, fused
//   vfloor(v)  vabs(v)   vcopysign(magnitude, sign)
//   vhsum(v)   vhmax(v)  vfirst(v)   horizontal sum, max, lane 0
//   vpow2i(vf n)         2^n for integral n in [-127, 128] (exponent-field construction)

#if defined(MICROGPT_SIMD_AVX512)

typedef __m512 vf;
constexpr int kVL = 16;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset1(float s) { return _mm512_set1_ps(s); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vfloor(vf v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
inline vf vabs(vf v) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff))); }
inline vf vcopysign(vf mag, vf sign) {
  const __m512i s = _mm512_and_si512(_mm512_castps_si512(sign), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(vabs(mag)), s));
}
inline float vhsum(vf v) { return _mm512_reduce_add_ps(v); }
inline float vhmax(vf v) { return _mm512_reduce_max_ps(v); }
inline float vfirst(vf v) { return _mm512_cvtss_f32(v); }
inline vf vload_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline vf vload_part(const float* p, int m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << m) - 1), p); }
inline void vstore_part(float* p, vf v, int m) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << m) - 1), v); }
inline vf vpow2i(vf n) {
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_castsi512_ps(e);
}

#elif defined(MICROGPT_SIMD_AVX2)

typedef __m256 vf;
constexpr int kVL = 8;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset1(float s) { return _mm256_set1_ps(s); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vfloor(vf v) { return _mm256_floor_ps(v); }
inline vf vabs(vf v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
inline vf vcopysign(vf mag, vf sign) {
  return _mm256_or_ps(vabs(mag), _mm256_and_ps(sign, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)))));
}
inline float vhsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline float vhmax(vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline float vfirst(vf v) { return _mm256_cvtss_f32(v); }
inline vf vload_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }  // F16C
inline __m256i vmask_first(int m) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline vf vload_part(const float* p, int m) { return _mm256_maskload_ps(p, vmask_first(m)); }
inline void vstore_part(float* p, vf v, int m) { _mm256_maskstore_ps(p, vmask_first(m), v); }
inline vf vpow2i(vf n) {
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_castsi256_ps(e);
}

#elif defined(MICROGPT_SIMD_NEON)

typedef float32x4_t vf;
constexpr int kVL = 4;
inline vf vzero() { return vdupq_n_f32(0.0f); }
inline vf vset1(float s) { return vdupq_n_f32(s); }
inline vf vload(const float* p) { return vld1q_f32(p); }
inline void vstore(float* p, vf v) { vst1q_f32(p, v); }
inline vf vadd(vf a, vf b) { return vaddq_f32(a, b); }
inline vf vsub(vf a, vf b) { return vsubq_f32(a, b); }
inline vf vmul(vf a, vf b) { return vmulq_f32(a, b); }
inline vf vdiv(vf a, vf b) { return vdivq_f32(a, b); }
inline vf vmax(vf a, vf b) { return vmaxq_f32(a, b); }
inline vf vmin(vf a, vf b) { return vminq_f32(a, b); }
inline vf vfma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }  // c + a * b, fused
inline vf vfloor(vf v) { return vrndmq_f32(v); }
inline vf vabs(vf v) { return vabsq_f32(v); }
inline vf vcopysign(vf mag, vf sign) {
  // Bit select: the sign bit from `sign`, every other bit from |mag|.
  return vbslq_f32(vdupq_n_u32(0x80000000u), sign, vabsq_f32(mag));
}
inline float vhsum(vf v) { return vaddvq_f32(v); }
inline float vhmax(vf v) { return vmaxvq_f32(v); }
inline float vfirst(vf v) { return vgetq_lane_f32(v, 0); }
inline vf vload_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline vf vload_part(const float* p, int m) {
  float lanes[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < m; i++) lanes[i] = p[i];
  return vld1q_f32(lanes);
}
inline void vstore_part(float* p, vf v, int m) {
  float lanes[4];
  vst1q_f32(lanes, v);
  for (int i = 0; i < m; i++) p[i] = lanes[i];
}
inline vf vpow2i(vf n) {
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vreinterpretq_f32_s32(e);
}

#else
#error "simd.h: define one of MICROGPT_SIMD_AVX512, MICROGPT_SIMD_AVX2, MICROGPT_SIMD_NEON"
#endif
