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
 * Why no sort of the row: numpy's sort of 32 rows of 7,106 tokens took ~3 ms, a quarter of a
 * decode step. A non-negative float's bits, as an integer, keep its order, so a histogram of the
 * bits' high part puts the tokens in buckets in order of probability. Each row takes one pass
 * to fill the buckets (the mass of each), then walks them from the top; only the bucket where
 * the nucleus ends and the one where the draw falls are gathered and sorted (a few tokens each).
 * bench/engine.md, step 25, has the figures.
 *
 * A bucket is a range of the bits, so a fixed ratio of probabilities wide: the rows's range from its
 * largest probability down to its tail, in at most BUCKETS - 1 buckets (~128 per factor of two
 * on a model's softmax). The tail: tokens so unlikely that all of them together hold less than
 * half of what top-p leaves out, (1 - top_p) * total / (2 * vocab) each at most; the nucleus can
 * never reach them, so the pass that fills the buckets skips them (on a trained model's peaked
 * row, most of the vocabulary). A bucket's tokens are sorted before they are walked, so the
 * draw is exact however wide a bucket is: a wide one is only slower to sort.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TAIL 8        /* the tail's slots: 0..TAIL - 1 (a token adds to slot id % TAIL, see draw_row) */
#define BUCKETS 2048 /* TAIL..BUCKETS - 1: the rest, least likely first */

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

/* The ids of bucket `b`'s tokens into `ids`, in sampling order; how many. `keys`: vocab long.
 * Tokens of probability 0 are left out: a row's nucleus never ends on one. */
static int32_t gather(const float *p, const uint16_t *bucket, int64_t vocab, int b, uint64_t *keys, int32_t *ids) {
  int32_t n = 0;
  for (int64_t i = 0; i < vocab; i++)
    if (bucket[i] == b && p[i] > 0.0f) keys[n++] = order_key(p, i);
  if (n > 32) {
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

/* One row's token. bucket/keys/ids: vocab each; mass: BUCKETS. */
static int64_t draw_row(const float *p, int64_t vocab, double top_p, double total, double uniform, uint16_t *bucket,
                        uint64_t *keys, int32_t *ids, double *mass) {
  const double top_mass = top_p * total; /* as the numpy draw's `top_p * row_mass(probs)` */
  uint32_t high = 0;
  for (int64_t i = 0; i < vocab; i++) high = bits_of(p[i]) > high ? bits_of(p[i]) : high;
  float tail = (float)((1.0 - top_p) * total / (2.0 * (double)vocab));
  uint32_t low = tail > 0.0f && tail < INFINITY ? bits_of(tail) : 0;
  if (low > high) low = high; /* not reached for top_p <= 1: the largest token holds total / vocab at least */
  int shift = 0;
  while (((high - low) >> shift) >= BUCKETS - TAIL) shift++;
  /* Two passes: the first computes each token's bucket (no branch: the compiler vectorizes it),
   * the second adds each token to its bucket's mass. A tail token adds to one of TAIL slots by
   * its id, never read: on a row whose tail is a random half of the tokens a branch to skip them
   * mispredicted half the time, and one slot for all made each add wait for the last. */
  for (int64_t i = 0; i < vocab; i++) {
    uint32_t bits = bits_of(p[i]);
    bucket[i] = (uint16_t)(bits < low ? (uint32_t)(i % TAIL) : ((bits - low) >> shift) + TAIL);
  }
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
    n = gather(p, bucket, vocab, b, keys, ids);
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
      n = gather(p, bucket, vocab, b, keys, ids);
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

/* For rows [rows, vocab] of probabilities (>= 0; each row's largest 1, as exp(z - max z) makes
 * them), each row's top_p, total (its sum, row_mass in runtime/sampler.py) and uniform number in
 * [0, 1): each row's token into tokens. 0 on success, -1 when the workspace could not be had. */
int top_p_draw(const float *probs, int64_t rows, int64_t vocab, const double *top_p, const double *total,
               const double *uniform, int64_t *tokens) {
  uint16_t *bucket = malloc((size_t)vocab * sizeof *bucket);
  uint64_t *keys = malloc((size_t)vocab * sizeof *keys);
  int32_t *ids = malloc((size_t)vocab * sizeof *ids);
  double *mass = malloc(BUCKETS * sizeof *mass);
  int status = bucket && keys && ids && mass ? 0 : -1;
  for (int64_t r = 0; status == 0 && r < rows; r++)
    tokens[r] = draw_row(probs + r * vocab, vocab, top_p[r], total[r], uniform[r], bucket, keys, ids, mass);
  free(bucket);
  free(keys);
  free(ids);
  free(mass);
  return status;
}
