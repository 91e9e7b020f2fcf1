/* The host sampler's top-p draw in C: for each row of probabilities, the token a uniform number
 * picks from the row's nucleus. runtime/top_p_kernel.py calls it through ctypes; the numpy draw in
 * runtime/sampler.py (_sample_nucleus) stays as the path of an install without our library.
 *
 * Semantics, those of the numpy draw: a row's tokens in sampling order (most likely first, equal
 * probabilities lower id first); a token is kept while the mass of the tokens before it is below
 * the row's `mass` (top_p times the row's total, which the caller computes, so both paths start
 * from the same float); the draw is the first kept token whose running kept mass exceeds
 * uniform * (the kept mass). Sums are float64. They are added in another order than numpy's, so
 * the two paths agree to float64 rounding: a token differs only where a uniform falls within
 * ~1e-16 of a boundary between two tokens (tests/test_top_p_kernel.py draws both).
 *
 * Why no sort of the row: numpy's top-p took ~2 ms of a 32-row GPT-2 small step (sorting 32 rows
 * of 7,106 tokens alone took ~3 ms). A non-negative float's bits, as an integer, keep its order, so
 * a histogram of the bits' high part puts a row's tokens in buckets in order of probability. A
 * row takes passes over its tokens for its largest value, each token's bucket (16 at a time
 * with AVX-512) and each bucket's mass, then walks the buckets from the top; only the bucket
 * where the nucleus ends and the one where the draw falls are gathered and sorted (a few tokens
 * each). bench/engine.md, step 25, has the figures.
 *
 * A bucket is a range of the bits, so a fixed ratio of probabilities wide: the row's range from
 * its largest probability down to its tail, in at most BUCKETS - TAIL buckets (~70 per factor of
 * two on a flat row of a model's softmax; 2,048 buckets made the walks dearer than the sorts they
 * saved). The tail: tokens so unlikely that all of them together hold less than half of what
 * top-p leaves out, (1 - top_p) * total / (2 * vocab) each at most; the nucleus can never reach
 * them, so no bucket holds them (on a trained model's peaked row, most of the vocabulary). A
 * bucket's tokens are sorted before they are walked, so the draw is exact however wide a bucket
 * is: a wide one is only slower to sort.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define TAIL 8       /* the tail's slots: 0..TAIL - 1 (a token adds to slot id % TAIL, see draw_row) */
#define BUCKETS 1024 /* TAIL..BUCKETS - 1: the rest, least likely first */

static inline uint32_t bits_of(float p) {
  uint32_t bits;
  memcpy(&bits, &p, sizeof bits);
  return bits >= 0x80000000u ? 0 : bits; /* -0.0 (a probability is never negative) as 0.0 */
}

/* A token's place in sampling order as one integer, smallest first: the complement of its
 * probability's bits above its id (more likely first, equal probabilities lower id first). */
static inline uint64_t order_key(const float *p, int64_t i) { return (uint64_t)(~bits_of(p[i])) << 32 | (uint64_t)i; }

static int ascending(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return (a > b) - (a < b);
}

/* The three passes over a row, tokens [from, vocab): the largest probability's bits; each
 * token's bucket (below `low`, a tail slot i % TAIL, else ((bits - low) >> shift) + TAIL); the
 * ids of one bucket's tokens. The AVX-512 ones below do the same 16 or 32 tokens at a time. */
static uint32_t highest_bits(const float *p, int64_t from, int64_t vocab) {
  uint32_t high = 0;
  for (int64_t i = from; i < vocab; i++) high = bits_of(p[i]) > high ? bits_of(p[i]) : high;
  return high;
}

static void fill_buckets(const float *p, int64_t from, int64_t vocab, uint32_t low, int shift, uint16_t *bucket) {
  for (int64_t i = from; i < vocab; i++) {
    uint32_t bits = bits_of(p[i]);
    bucket[i] = (uint16_t)(bits < low ? (uint32_t)(i % TAIL) : ((bits - low) >> shift) + TAIL);
  }
}

static int32_t bucket_ids(const uint16_t *bucket, int64_t from, int64_t vocab, int b, int32_t *ids) {
  int32_t n = 0;
  for (int64_t i = from; i < vocab; i++)
    if (bucket[i] == b) ids[n++] = (int32_t)i;
  return n;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static uint32_t highest_bits_avx512(const float *p, int64_t vocab) {
  __m512i high = _mm512_setzero_si512(); /* a signed max with 0: a negative float's bits count as 0 */
  int64_t i = 0;
  for (; i + 16 <= vocab; i += 16) high = _mm512_max_epi32(high, _mm512_loadu_si512(p + i));
  uint32_t rest = highest_bits(p, i, vocab), vector = (uint32_t)_mm512_reduce_max_epi32(high);
  return rest > vector ? rest : vector;
}

__attribute__((target("avx512f"))) static void fill_buckets_avx512(const float *p, int64_t vocab, uint32_t low,
                                                                   int shift, uint16_t *bucket) {
  const __m512i zero = _mm512_setzero_si512(), lowest = _mm512_set1_epi32((int)low), first = _mm512_set1_epi32(TAIL);
  const __m128i count = _mm_cvtsi32_si128(shift);
  const __m512i slots = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0); /* i % TAIL */
  int64_t i = 0;
  for (; i + 16 <= vocab; i += 16) {
    const __m512i bits = _mm512_max_epi32(zero, _mm512_loadu_si512(p + i));
    const __mmask16 tail = _mm512_cmplt_epu32_mask(bits, lowest);
    const __m512i b = _mm512_add_epi32(_mm512_srl_epi32(_mm512_sub_epi32(bits, lowest), count), first);
    _mm256_storeu_si256((__m256i *)(bucket + i), _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(b, tail, slots)));
  }
  fill_buckets(p, i, vocab, low, shift, bucket);
}

__attribute__((target("avx512f,avx512bw,popcnt"))) static int32_t bucket_ids_avx512(const uint16_t *bucket,
                                                                                    int64_t vocab, int b,
                                                                                    int32_t *ids) {
  const __m512i wanted = _mm512_set1_epi16((short)b), sixteen = _mm512_set1_epi32(16);
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  int32_t n = 0;
  int64_t i = 0;
  for (; i + 32 <= vocab; i += 32) { /* a bucket holds a few of a row's tokens: most blocks hold none */
    const __mmask32 hit = _mm512_cmpeq_epi16_mask(_mm512_loadu_si512(bucket + i), wanted);
    if (hit == 0) continue;
    const __m512i at = _mm512_add_epi32(_mm512_set1_epi32((int)i), iota);
    _mm512_mask_compressstoreu_epi32(ids + n, (__mmask16)hit, at);
    n += _mm_popcnt_u32(hit & 0xFFFF);
    _mm512_mask_compressstoreu_epi32(ids + n, (__mmask16)(hit >> 16), _mm512_add_epi32(at, sixteen));
    n += _mm_popcnt_u32(hit >> 16);
  }
  return n + bucket_ids(bucket, i, vocab, b, ids + n);
}
#endif

/* The ids of bucket `b`'s tokens into `ids`, in sampling order; how many. `keys`: vocab long.
 * Tokens of probability 0 are left out: a row's nucleus never ends on one. */
static int32_t gather(const float *p, const uint16_t *bucket, int64_t vocab, int b, uint64_t *keys, int32_t *ids,
                      int wide) {
#if defined(__x86_64__)
  const int32_t found = wide ? bucket_ids_avx512(bucket, vocab, b, ids) : bucket_ids(bucket, 0, vocab, b, ids);
#else
  const int32_t found = bucket_ids(bucket, 0, vocab, b, ids);
#endif
  int32_t n = 0;
  for (int32_t i = 0; i < found; i++)
    if (p[ids[i]] > 0.0f) keys[n++] = order_key(p, ids[i]);
  if (n > 64) {
    qsort(keys, (size_t)n, sizeof *keys, ascending);
  } else {
    for (int32_t i = 1; i < n; i++) { /* insertion sort: a bucket holds a few tokens */
      uint64_t k = keys[i];
      int32_t j = i;
      for (; j > 0 && keys[j - 1] > k; j--) keys[j] = keys[j - 1];
      keys[j] = k;
    }
  }
  for (int32_t i = 0; i < n; i++) ids[i] = (int32_t)(uint32_t)keys[i];
  return n;
}

/* One row's token. bucket/keys/ids: vocab each; mass: BUCKETS. wide: the AVX-512 passes. */
static int64_t draw_row(const float *p, int64_t vocab, double top_p, double total, double uniform, uint16_t *bucket,
                        uint64_t *keys, int32_t *ids, double *mass, int wide) {
  const double top_mass = top_p * total; /* as the numpy draw's `top_p * row_mass(probs)` */
#if defined(__x86_64__)
  const uint32_t high = wide ? highest_bits_avx512(p, vocab) : highest_bits(p, 0, vocab);
#else
  const uint32_t high = highest_bits(p, 0, vocab);
#endif
  const float tail = (float)((1.0 - top_p) * total / (2.0 * (double)vocab));
  uint32_t low = tail > 0.0f && tail < INFINITY ? bits_of(tail) : 0;
  if (low > high) low = high; /* not reached for top_p <= 1: the largest token holds total / vocab at least */
  int shift = 0;
  while (((high - low) >> shift) >= BUCKETS - TAIL) shift++;
  /* Two passes: the first computes each token's bucket (no branch), the second adds each token to
   * its bucket's mass. A tail token adds to one of TAIL slots by its id, never read: on a row
   * whose tail is a random half of the tokens a branch to skip them mispredicted half the time,
   * and one slot for all made each add wait for the last. */
#if defined(__x86_64__)
  if (wide)
    fill_buckets_avx512(p, vocab, low, shift, bucket);
  else
    fill_buckets(p, 0, vocab, low, shift, bucket);
#else
  fill_buckets(p, 0, vocab, low, shift, bucket);
#endif
  memset(mass, 0, BUCKETS * sizeof *mass);
  for (int64_t i = 0; i < vocab; i++) mass[bucket[i]] += p[i];
  /* The nucleus: every bucket whose tokens all have less than top_mass before them is kept
   * whole; the one where it ends is sorted and walked token by token. The first token is kept
   * whatever top_mass is (it has nothing before it), so the last bucket keeps one at least. */
  double kept = 0.0;
  int last_bucket = -1;
  int32_t last_kept = 0, gathered = -1, n = 0;
  for (int b = BUCKETS - 1; b >= TAIL; b--) {
    if (mass[b] == 0.0) continue; /* empty, or zeros only */
    last_bucket = b;
    if (kept + mass[b] < top_mass) {
      kept += mass[b];
      last_kept = -1; /* all of them: counted when the draw gathers the bucket */
      continue;
    }
    n = gather(p, bucket, vocab, b, keys, ids, wide);
    gathered = b;
    int32_t j = 0;
    for (; j < n && (kept < top_mass || (j == 0 && kept == 0.0)); j++) kept += p[ids[j]];
    last_kept = j;
    if (j < n || kept >= top_mass) break; /* summed token by token, the nucleus ends in this bucket */
  }
  if (last_bucket < 0) return 0; /* a row of zeros (the caller gives rows whose largest is 1) */
  /* The draw: buckets wholly below the target are skipped by their mass; the one it falls in,
   * and always the last kept one (its kept part, and where rounding left the target unreached),
   * token by token. */
  double target = uniform * kept, below = 0.0;
  for (int b = BUCKETS - 1; b >= last_bucket; b--) {
    if (mass[b] == 0.0) continue;
    if (b != last_bucket && below + mass[b] <= target) {
      below += mass[b];
      continue;
    }
    if (gathered != b) {
      n = gather(p, bucket, vocab, b, keys, ids, wide);
      gathered = b;
    }
    int32_t limit = b == last_bucket && last_kept >= 0 ? last_kept : n;
    for (int32_t j = 0; j < limit; j++) {
      below += p[ids[j]];
      if (below > target) return ids[j];
    }
    if (b == last_bucket) return ids[limit - 1];
  }
  return 0; /* not reached: the loop ends at last_bucket */
}

/* Whether the passes run on AVX-512 here: where the CPU has it, unless the environment variable
 * PROMPTGEN_TOP_P_PORTABLE=1 asks for the scalar C (tests run both), read at each call. */
int top_p_vectorized(void) {
#if defined(__x86_64__)
  static int supported = -1;
  if (supported < 0) supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  const char *portable = getenv("PROMPTGEN_TOP_P_PORTABLE");
  return supported && !(portable && portable[0] == '1');
#else
  return 0;
#endif
}

/* For rows [rows, vocab] of probabilities (>= 0; each row's largest 1, as exp(z - max z) makes
 * them), each row's top_p, total (its sum, row_mass in runtime/sampler.py) and uniform number in
 * [0, 1): each row's token into tokens. 0 on success, -1 when the workspace could not be had. */
int top_p_draw(const float *probs, int64_t rows, int64_t vocab, const double *top_p, const double *total,
               const double *uniform, int64_t *tokens) {
  const int wide = top_p_vectorized();
  uint16_t *bucket = malloc((size_t)vocab * sizeof *bucket);
  uint64_t *keys = malloc((size_t)vocab * sizeof *keys);
  int32_t *ids = malloc((size_t)vocab * sizeof *ids);
  double *mass = malloc(BUCKETS * sizeof *mass);
  int status = bucket && keys && ids && mass ? 0 : -1;
  for (int64_t r = 0; status == 0 && r < rows; r++)
    tokens[r] = draw_row(probs + r * vocab, vocab, top_p[r], total[r], uniform[r], bucket, keys, ids, mass, wide);
  free(bucket);
  free(keys);
  free(ids);
  free(mass);
  return status;
}
