/*
 * qlearn's compiled fused matvec kernels: y = W_q @ x with 8-bit activations, as ggml's CPU
 * backend computes it. The readable versions are the numba kernels and matvec_reference in
 * qlearn/kernels.py; tests/test_ckernels.py checks that this file agrees with them.
 *
 * Compiled at first use by qlearn/_cbuild.py with the system C compiler
 * (cc -O3 -march=native -shared -fPIC), so the SIMD path below is chosen for the CPU the
 * package runs on. Three paths, picked by the compiler's predefined macros:
 *   - AVX2 + VNNI (AVX512-VNNI with AVX512-VL, or AVX-VNNI): u8 x i8 -> i32 dot products
 *     (vpdpbusd) and i16 x i16 -> i32 (vpdpwssd) in one instruction each;
 *   - AVX2: the same with the two-step maddubs (u8 x i8 -> pairs summed in i16) + madd;
 *   - portable C: plain integer loops (any compiler, any CPU).
 * Every path computes each block's integer dot product exactly (int32); only the float32
 * accumulation of the scaled block sums differs in order between paths.
 *
 * Layouts (bytes of one block; all little-endian; see qlearn.blocktypes):
 *   Q8_0 (34): fp16 d, int8 qs[32]                    w = d * qs
 *   Q5_0 (22): fp16 d, u32 qh, u8 qs[16]              w = d * ((nibble | bit << 4) - 16)
 *   Q4_0 (18): fp16 d, u8 qs[16]                      w = d * (nibble - 8)
 *   Q4_1 (20): fp16 d, fp16 m, u8 qs[16]              w = d * nibble + m
 *   Q5_1 (24): fp16 d, fp16 m, u32 qh, u8 qs[16]      w = d * (nibble | bit << 4) + m
 *     (legacy 32-blocks: byte l holds element l in its low nibble and l + 16 in its high one;
 *      bit l of qh is the fifth bit of element l)
 *   Q4_K (144): fp16 d, fp16 dmin, u8 scales[12] (8 six-bit scales and mins), u8 qs[128]
 *   Q6_K (210): u8 ql[128], u8 qh[64], int8 scales[16], fp16 d
 * Activations: int8 codes xq (cols), float32 block scales xd (one per 256 for Q8_K, the
 * k-quants; one per 32 for Q8_0, the legacy types) and bs32, the sum of each 32 codes.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(QLEARN_NO_SIMD)
#define QL_AVX2 1
#include <immintrin.h>
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define QL_VNNI 1
#define QL_SIMD_NAME "avx2+avx512vnni"
#define QL_DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define QL_DPWSSD(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#elif defined(__AVXVNNI__)
#define QL_VNNI 1
#define QL_SIMD_NAME "avx2+avxvnni"
#define QL_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#define QL_DPWSSD(acc, a, b) _mm256_dpwssd_avx_epi32((acc), (a), (b))
#else
#define QL_SIMD_NAME "avx2"
/* u8 x i8 products summed in pairs to i16 (no overflow for our operands: |pair| <= 2*128*127),
 * then pairs of i16 summed to i32 */
#define QL_DPBUSD(acc, u, s) \
    _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define QL_DPWSSD(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif
#else
#define QL_SIMD_NAME "portable C"
#endif

#if !defined(_WIN32)
#include <pthread.h>
#define QL_THREADS 1
#endif

enum { T_Q4_0 = 0, T_Q4_1 = 1, T_Q5_0 = 2, T_Q5_1 = 3, T_Q8_0 = 4, T_Q4_K = 7, T_Q6_K = 9 };

const char *qlearn_simd(void) { return QL_SIMD_NAME; }

/* ---------------------------------------------------------------------------------------- */
/* Scalar helpers                                                                           */
/* ---------------------------------------------------------------------------------------- */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* IEEE half -> float, exact for every bit pattern (subnormals, inf, NaN). */
static inline float fp16(const uint8_t *p) {
#ifdef QL_AVX2
    return _cvtsh_ss(rd16(p));
#else
    uint32_t h = rd16(p), sign = (h & 0x8000u) << 16, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        bits = sign | ((e + 112) << 23) | (m << 13);
    } else if (m == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        e = 113;
        while (!(m & 1024)) { m <<= 1; e--; }
        bits = sign | (e << 23) | ((m & 1023) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* Q4_K / Q5_K: the twelve scale bytes as eight 6-bit scales (sc) and eight 6-bit mins (mn),
 * four fields unpacked per 32-bit word. */
static inline void k4_scales(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    const uint32_t m1 = 0x3f3f3f3fu, m2 = 0x0f0f0f0fu, m3 = 0x03030303u;
    uint32_t u0 = rd32(s), u1 = rd32(s + 4), u2 = rd32(s + 8);
    uint32_t w[4] = {u0 & m1, (u2 & m2) | (((u0 >> 6) & m3) << 4),
                     u1 & m1, ((u2 >> 4) & m2) | (((u1 >> 6) & m3) << 4)};
    for (int k = 0; k < 4; k++) {
        sc[k] = (uint8_t)(w[0] >> (8 * k));
        sc[4 + k] = (uint8_t)(w[1] >> (8 * k));
        mn[k] = (uint8_t)(w[2] >> (8 * k));
        mn[4 + k] = (uint8_t)(w[3] >> (8 * k));
    }
}

#ifdef QL_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* signed x signed int8 products, summed in groups of four into eight int32 lanes:
 * |x| as unsigned times y with x's sign moved onto it */
static inline __m256i dot_i8(__m256i x, __m256i y) {
    return QL_DPBUSD(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* 32 unsigned 4-bit codes of a legacy block: low nibbles (elements 0-15) in the low lane,
 * high nibbles (16-31) in the high lane */
static inline __m256i nibbles32(const uint8_t *qs) {
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* the 32 bits of qh as 32 bytes: 0xFF where the bit is set, 0 elsewhere */
static inline __m256i bits32(uint32_t qh) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_movm_epi8((__mmask32)qh);
#else
    /* byte k gets byte k/8 of qh, then keeps bit k%8 */
    const __m256i which = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                            0x0101010101010101LL, 0);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), which);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
#endif
}
#endif

/* ---------------------------------------------------------------------------------------- */
/* One row each: src = the row's blocks, nb = blocks (32- or 256-element), returns y[r]       */
/* ---------------------------------------------------------------------------------------- */

static float row_q8_0(const uint8_t *src, int64_t nb, const int8_t *xq, const float *xd,
                      const int32_t *bs32) {
    (void)bs32;
#ifdef QL_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) { /* two independent accumulators hide the FMA latency */
        const uint8_t *b0 = src + 34 * i, *b1 = b0 + 34;
        __m256i s0 = dot_i8(_mm256_loadu_si256((const __m256i *)(b0 + 2)),
                            _mm256_loadu_si256((const __m256i *)(xq + 32 * i)));
        __m256i s1 = dot_i8(_mm256_loadu_si256((const __m256i *)(b1 + 2)),
                            _mm256_loadu_si256((const __m256i *)(xq + 32 * i + 32)));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(b0) * xd[i]), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(b1) * xd[i + 1]), _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; i < nb; i++) {
        const uint8_t *b0 = src + 34 * i;
        __m256i s0 = dot_i8(_mm256_loadu_si256((const __m256i *)(b0 + 2)),
                            _mm256_loadu_si256((const __m256i *)(xq + 32 * i)));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16(b0) * xd[i]), _mm256_cvtepi32_ps(s0), acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
#else
    float acc = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + 34 * i;
        int32_t sumi = 0;
        /* int16 products, as the numba kernel: GCC 12 with -march=native on an AVX512-VNNI
         * CPU turns the int8 x int8 -> int32 form of this loop into vpdpbusd, which treats one
         * operand as unsigned (wrong sums); qlearn._cbuild also self-tests every build */
        for (int l = 0; l < 32; l++) sumi += (int16_t)((int16_t)(int8_t)b[2 + l] * (int16_t)xq[32 * i + l]);
        acc += (float)sumi * (fp16(b) * xd[i]);
    }
    return acc;
#endif
}

/* The legacy 4- and 5-bit types share one loop. off: byte offset of qs in the block; has_qh:
 * 5-bit; has_min: a second fp16 (m) after d, whose term is m * xd * (sum of the 32 codes). */
static inline float row_legacy(const uint8_t *src, int64_t nb, const int8_t *xq, const float *xd,
                               const int32_t *bs32, int bsize, int off, int has_qh, int has_min,
                               int zero) {
#ifdef QL_AVX2
    __m256 acc = _mm256_setzero_ps();
    float accm = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + bsize * i;
        __m256i w = nibbles32(b + off);
        if (has_qh) w = _mm256_or_si256(w, _mm256_and_si256(bits32(rd32(b + off - 4)), _mm256_set1_epi8(16)));
        __m256i y = _mm256_loadu_si256((const __m256i *)(xq + 32 * i));
        __m256i s;
        if (zero) /* signed codes w - zero */
            s = dot_i8(_mm256_sub_epi8(w, _mm256_set1_epi8((char)zero)), y);
        else /* unsigned codes times signed activations */
            s = QL_DPBUSD(_mm256_setzero_si256(), w, y);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(b) * xd[i]), _mm256_cvtepi32_ps(s), acc);
        if (has_min) accm += (fp16(b + 2) * xd[i]) * (float)bs32[i];
    }
    return hsum8(acc) + accm;
#else
    float acc = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + bsize * i;
        uint32_t qh = has_qh ? rd32(b + off - 4) : 0;
        int32_t sumi = 0;
        for (int l = 0; l < 16; l++) {
            int32_t w0 = (b[off + l] & 15) | (((qh >> l) & 1) << 4);
            int32_t w1 = (b[off + l] >> 4) | (((qh >> (l + 16)) & 1) << 4);
            sumi += (w0 - zero) * xq[32 * i + l] + (w1 - zero) * xq[32 * i + 16 + l];
        }
        acc += (float)sumi * (fp16(b) * xd[i]);
        if (has_min) acc += (fp16(b + 2) * xd[i]) * (float)bs32[i];
    }
    return acc;
#endif
}

static float row_q4_0(const uint8_t *s, int64_t nb, const int8_t *xq, const float *xd, const int32_t *bs) {
    return row_legacy(s, nb, xq, xd, bs, 18, 2, 0, 0, 8);
}
static float row_q4_1(const uint8_t *s, int64_t nb, const int8_t *xq, const float *xd, const int32_t *bs) {
    return row_legacy(s, nb, xq, xd, bs, 20, 4, 0, 1, 0);
}
static float row_q5_0(const uint8_t *s, int64_t nb, const int8_t *xq, const float *xd, const int32_t *bs) {
    return row_legacy(s, nb, xq, xd, bs, 22, 6, 1, 0, 16);
}
static float row_q5_1(const uint8_t *s, int64_t nb, const int8_t *xq, const float *xd, const int32_t *bs) {
    return row_legacy(s, nb, xq, xd, bs, 24, 8, 1, 1, 0);
}

static float row_q4_k(const uint8_t *src, int64_t nb, const int8_t *xq, const float *xd,
                      const int32_t *bs32) {
#ifdef QL_AVX2
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(15);
    __m256i bcast[8]; /* shuffle controls: int16 lane j of sc16 into every lane */
    for (int j = 0; j < 8; j++) bcast[j] = _mm256_set1_epi16((short)(((2 * j + 1) << 8) | (2 * j)));
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + 144 * i;
        uint8_t sc[8], mn[8];
        k4_scales(b + 4, sc, mn);
        /* the eight scales as int16, repeated in both 128-bit lanes */
        __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sc)));
        /* min term per sub-block: m_j * (sum of its 32 activation codes) */
        __m256i mins = _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)mn)),
                                          _mm256_loadu_si256((const __m256i *)(bs32 + 8 * i)));
        __m256i sumi = _mm256_setzero_si256();
        const int8_t *y = xq + 256 * i;
        /* [q4_k inner loop] (chapter 13 prints the lines between these markers) */
        for (int c = 0; c < 4; c++) {
            /* 32 code bytes: sub-block 2c in the low nibbles, 2c + 1 in the high */
            __m256i q4 = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * c));
            __m256i lo = _mm256_and_si256(q4, low4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), low4);
            __m256i a0 = _mm256_loadu_si256((const __m256i *)(y + 64 * c));
            __m256i a1 = _mm256_loadu_si256((const __m256i *)(y + 64 * c + 32));
            /* code x activation, adjacent pairs summed: 16 int16 lanes */
            __m256i p0 = _mm256_maddubs_epi16(lo, a0);
            __m256i p1 = _mm256_maddubs_epi16(hi, a1);
            /* the sub-block's scale in every int16 lane */
            __m256i s0 = _mm256_shuffle_epi8(sc16, bcast[2 * c]);
            __m256i s1 = _mm256_shuffle_epi8(sc16, bcast[2 * c + 1]);
            /* times the scale, pairs summed into 8 int32 lanes */
            sumi = QL_DPWSSD(sumi, p0, s0);
            sumi = QL_DPWSSD(sumi, p1, s1);
        }
        /* [end q4_k inner loop] */
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(b) * xd[i]), _mm256_cvtepi32_ps(sumi), acc);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(fp16(b + 2) * xd[i]), _mm256_cvtepi32_ps(mins), accm);
    }
    return hsum8(_mm256_sub_ps(acc, accm));
#else
    float acc = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + 144 * i;
        uint8_t sc[8], mn[8];
        k4_scales(b + 4, sc, mn);
        int32_t sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            const uint8_t *qs = b + 16 + 32 * (j / 2);
            int shift = 4 * (j % 2), s = 0;
            for (int l = 0; l < 32; l++) s += ((qs[l] >> shift) & 15) * xq[256 * i + 32 * j + l];
            sumi += sc[j] * s;
            summ += mn[j] * bs32[8 * i + j];
        }
        acc += xd[i] * (fp16(b) * (float)sumi - fp16(b + 2) * (float)summ);
    }
    return acc;
#endif
}

/* bs16: sums of each 16 activation codes (int16), for the -32 offset of the Q6_K codes */
static float row_q6_k(const uint8_t *src, int64_t nb, const int8_t *xq, const float *xd,
                      const int16_t *bs16) {
#ifdef QL_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(15), two = _mm256_set1_epi8(3 << 4);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + 210 * i;
        const int8_t *y = xq + 256 * i;
        /* codes are stored + 32: subtract 32 * sum_j scale_j * (sum of sub-block j's codes) */
        __m256i sc_all = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
        __m256i sumi = _mm256_slli_epi32(
            _mm256_madd_epi16(sc_all, _mm256_loadu_si256((const __m256i *)(bs16 + 16 * i))), 5);
        sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
        for (int h = 0; h < 2; h++) { /* 128 elements: ql[64h..], qh[32h..], scales[8h..] */
            __m256i sc16 = _mm256_broadcastsi128_si256(
                _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(b + 192 + 8 * h))));
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h));
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
            __m256i w[4];
            /* plane s: 4 low bits from ql, 2 high bits (bits 2s, 2s + 1 of qh) moved to 4-5 */
            w[0] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), two));
            w[1] = _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), two));
            w[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_and_si256(qh, two));
            w[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), two));
            for (int s = 0; s < 4; s++) {
                __m256i p = _mm256_maddubs_epi16(w[s], _mm256_loadu_si256((const __m256i *)(y + 128 * h + 32 * s)));
                /* int16 lanes 0-7 hold elements 0-15 (scale 2s), lanes 8-15 elements 16-31 */
                __m256i sh = _mm256_set_m128i(_mm_set1_epi16((short)(((4 * s + 3) << 8) | (4 * s + 2))),
                                              _mm_set1_epi16((short)(((4 * s + 1) << 8) | (4 * s))));
                sumi = QL_DPWSSD(sumi, p, _mm256_shuffle_epi8(sc16, sh));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(b + 208) * xd[i]), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
#else
    (void)bs16;
    float acc = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + 210 * i;
        int32_t sumi = 0;
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 4; s++)
                for (int l = 0; l < 32; l++) {
                    int low = (b[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 15;
                    int high = (b[128 + 32 * h + l] >> (2 * s)) & 3;
                    int sc = (int8_t)b[192 + 8 * h + 2 * s + (l >= 16)];
                    sumi += sc * ((low | (high << 4)) - 32) * xq[256 * i + 128 * h + 32 * s + l];
                }
        acc += (fp16(b + 208) * xd[i]) * (float)sumi;
    }
    return acc;
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* Activation quantizers: the same float32 operations as qlearn.kernels.quantize_q8_k and     */
/* quantize_q8_0 (bit-identical, tested), plus the sum of each 32 codes (bs32)               */
/* ---------------------------------------------------------------------------------------- */

/* float -> IEEE half -> float: round to nearest even, as numpy's astype(float16) */
static float round_fp16(float f) {
#ifdef QL_AVX2
    return _cvtsh_ss(_cvtss_sh(f, 0));
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, e = (x >> 23) & 255, m = x & 0x7fffffu;
    uint16_t h;
    if (e == 255) {
        h = (uint16_t)(sign | 0x7c00u | (m ? 0x200u : 0));
    } else if (e > 142) { /* >= 2^16: overflow to inf */
        h = (uint16_t)(sign | 0x7c00u);
    } else if (e >= 113) { /* normal half: keep 10 mantissa bits, round to nearest even */
        uint32_t v = ((e - 112) << 10) | (m >> 13), rest = m & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (v & 1))) v++; /* may carry into the exponent */
        h = (uint16_t)(sign | v);
    } else if (e >= 102) { /* subnormal half */
        uint32_t full = m | 0x800000u, shift = 126 - e; /* 14..24 */
        uint32_t v = full >> shift, rest = full & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (v & 1))) v++;
        h = (uint16_t)(sign | v);
    } else {
        h = (uint16_t)sign;
    }
    uint8_t b[2] = {(uint8_t)h, (uint8_t)(h >> 8)};
    return fp16(b);
#endif
}

static void sums32(const int8_t *xq, int64_t n, int32_t *bs32) {
    for (int64_t k = 0; k < n / 32; k++) {
        int32_t t = 0;
        for (int l = 0; l < 32; l++) t += xq[32 * k + l];
        bs32[k] = t;
    }
}

/* kind 0: Q8_K (256-blocks, d = 1 / iscale, codes = min(127, rint(iscale * x))) for the
 * k-quants; kind 1: Q8_0 (32-blocks, codes = roundf(x / d), d rounded to fp16) for the rest.
 * xq: n codes, xd: one scale per block, bs32: n / 32 sums. Returns 0, or -1 for a bad kind. */
int qlearn_quantize_q8(int kind, const float *x, int64_t n, int8_t *xq, float *xd, int32_t *bs32) {
    if (kind == 0) {
        for (int64_t i = 0; i < n / 256; i++) {
            const float *v = x + 256 * i;
            float amax = 0, mx = 0;
            for (int l = 0; l < 256; l++) { /* first entry of largest magnitude */
                float a = fabsf(v[l]);
                if (a > amax) { amax = a; mx = v[l]; }
            }
            if (amax == 0) {
                xd[i] = 0;
                memset(xq + 256 * i, 0, 256);
                continue;
            }
            float iscale = -127.0f / mx;
            for (int l = 0; l < 256; l++) {
                float r = nearbyintf(iscale * v[l]); /* ties to even (default rounding mode) */
                xq[256 * i + l] = (int8_t)(r < 127.0f ? r : 127.0f);
            }
            xd[i] = 1.0f / iscale;
        }
    } else if (kind == 1) {
        for (int64_t i = 0; i < n / 32; i++) {
            const float *v = x + 32 * i;
            float amax = 0;
            for (int l = 0; l < 32; l++) {
                float a = fabsf(v[l]);
                amax = a > amax ? a : amax;
            }
            float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
            for (int l = 0; l < 32; l++) xq[32 * i + l] = (int8_t)roundf(v[l] * id); /* ties away */
            xd[i] = round_fp16(d);
        }
    } else {
        return -1;
    }
    sums32(xq, n, bs32);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Driver: rows split into contiguous ranges, one per thread                                 */
/* ---------------------------------------------------------------------------------------- */

typedef struct {
    int type;
    const uint8_t *q;
    int64_t r0, r1, row_bytes, nb;
    const int8_t *xq;
    const float *xd;
    const int32_t *bs32;
    const int16_t *bs16;
    float *y;
} job_t;

static void run_rows(const job_t *j) {
    for (int64_t r = j->r0; r < j->r1; r++) {
        const uint8_t *s = j->q + r * j->row_bytes;
        float v;
        switch (j->type) {
        case T_Q8_0: v = row_q8_0(s, j->nb, j->xq, j->xd, j->bs32); break;
        case T_Q5_0: v = row_q5_0(s, j->nb, j->xq, j->xd, j->bs32); break;
        case T_Q4_0: v = row_q4_0(s, j->nb, j->xq, j->xd, j->bs32); break;
        case T_Q4_1: v = row_q4_1(s, j->nb, j->xq, j->xd, j->bs32); break;
        case T_Q5_1: v = row_q5_1(s, j->nb, j->xq, j->xd, j->bs32); break;
        case T_Q4_K: v = row_q4_k(s, j->nb, j->xq, j->xd, j->bs32); break;
        default: v = row_q6_k(s, j->nb, j->xq, j->xd, j->bs16); break;
        }
        j->y[r] = v;
    }
}

#ifdef QL_THREADS
static void *thread_main(void *arg) {
    run_rows((const job_t *)arg);
    return NULL;
}
#endif

#define QL_MAX_THREADS 64

/* y[rows] = W @ x. Inputs are validated by the caller (qlearn.kernels): q holds rows *
 * row_bytes bytes of whole blocks of `type`, xq has cols codes, xd one scale per activation
 * block, bs32 cols / 32 sums. Returns 0, or -1 for a type this file does not handle. */
int qlearn_matvec(int type, const uint8_t *q, int64_t rows, int64_t row_bytes, int64_t cols,
                  const int8_t *xq, const float *xd, const int32_t *bs32, float *y, int nthreads) {
    int64_t block;
    switch (type) {
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: block = 32; break;
    case T_Q4_K: case T_Q6_K: block = 256; break;
    default: return -1;
    }
    int16_t *bs16 = NULL;
    if (type == T_Q6_K) {
        bs16 = (int16_t *)malloc((size_t)(cols / 16) * sizeof(int16_t));
        if (!bs16) return -2;
        for (int64_t k = 0; k < cols / 16; k++) {
            int32_t t = 0;
            for (int l = 0; l < 16; l++) t += xq[16 * k + l];
            bs16[k] = (int16_t)t;
        }
    }
    job_t base = {type, q, 0, rows, row_bytes, cols / block, xq, xd, bs32, bs16, y};
    if (nthreads > QL_MAX_THREADS) nthreads = QL_MAX_THREADS;
    if (nthreads > rows) nthreads = (int)rows;
#ifdef QL_THREADS
    if (nthreads > 1) {
        job_t jobs[QL_MAX_THREADS];
        pthread_t tid[QL_MAX_THREADS];
        int started[QL_MAX_THREADS] = {0};
        for (int t = 0; t < nthreads; t++) {
            jobs[t] = base;
            jobs[t].r0 = rows * t / nthreads;
            jobs[t].r1 = rows * (t + 1) / nthreads;
        }
        for (int t = 1; t < nthreads; t++) /* the calling thread does range 0 */
            started[t] = pthread_create(&tid[t], NULL, thread_main, &jobs[t]) == 0;
        run_rows(&jobs[0]);
        for (int t = 1; t < nthreads; t++) {
            if (started[t]) pthread_join(tid[t], NULL);
            else run_rows(&jobs[t]); /* could not start a thread: do its rows here */
        }
        free(bs16);
        return 0;
    }
#endif
    run_rows(&base);
    free(bs16);
    return 0;
}
