/* promptgen::AttentionInt8, an ONNX Runtime custom operator for the CPU provider: attention
 * over an int8 KV cache with per-channel scales, for the graphs the INT8 variant exports
 * (export/kv_int8.py). runtime/attention_kernel.py swaps it in for GroupQueryAttention when
 * a session is made; docs/architecture.md ("the int8 attention kernel") says why.
 *
 * Semantics: exactly those of com.microsoft::GroupQueryAttention as our graphs use it (packed
 * QKV, no rotary, no softcap, no local window, an additive bias, kv_cache_bit_width 8 with
 * PER_CHANNEL scales), so the cache it writes is byte for byte the one GroupQueryAttention
 * writes, and the outputs agree to float rounding (tests/test_attention_kernel.py):
 *   - row b holds seqlens_k[b] + 1 columns after this call. Its S new keys and values go at
 *     columns past_b .. past_b + S - 1, where past_b = 0 for a first prompt (S equals the
 *     total length) and seqlens_k[b] + 1 - S otherwise; each is quantised per channel,
 *     round half to even, saturating at -128 and 127.
 *   - query s of row b attends to columns 0 .. past_b + s (causal), scores scaled by
 *     1/sqrt(head_size) plus bias[b, 0, s, column].
 * Why: GroupQueryAttention's CPU kernel runs each (row, head) as two tiny GEMM calls with a
 * scratch allocation and dequantises through a float buffer; at GPT-2 small's 12 heads that
 * is ~1 us of overhead per (row, head, layer), the largest single cost of a batch-32 decode
 * step (bench/engine.md, step 22). Here each (row, key/value head) is one task: the new
 * columns are quantised, then scores, softmax and the weighted sum of values run over the
 * int8 columns directly, in AVX-512 where the CPU has it.
 *
 * The ORT C API and the operator record: ort_custom_op.h; registration: custom_ops.c.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ort_custom_op.h"

/* Inputs, in this order (runtime/attention_kernel.py builds the node). */
enum { QKV, PAST_KEY, PAST_VALUE, SEQLENS_K, TOTAL_LENGTH, BIAS, KEY_SCALE, VALUE_SCALE, N_INPUTS };
enum { OUTPUT, PRESENT_KEY, PRESENT_VALUE, N_OUTPUTS };
static const int INPUT_TYPES[N_INPUTS] = {TYPE_FLOAT, TYPE_INT8,  TYPE_INT8,  TYPE_INT32,
                                          TYPE_INT32, TYPE_FLOAT, TYPE_FLOAT, TYPE_FLOAT};
static const int OUTPUT_TYPES[N_OUTPUTS] = {TYPE_FLOAT, TYPE_INT8, TYPE_INT8};

/* A score row lives on the stack: the longest context this kernel takes. */
#define MAX_COLUMNS 8192
#define MAX_HEAD_SIZE 256

typedef struct {
  int64_t num_heads, kv_num_heads;
} Kernel;

/* One call's tensors and sizes, shared by its tasks. */
typedef struct {
  const float *qkv, *bias, *key_scale, *value_scale;
  const int32_t *seqlens_k;
  const int8_t *past_key, *past_value; /* NULL where present is the past's own buffer */
  int8_t *key, *value;
  float *out;
  int64_t seq, heads, kv_heads, head_size, capacity, total;
  int64_t items, items_per_task; /* an item is a (row, key/value head); a task a run of them */
  int first_prompt;
} Call;

static int use_avx512; /* set by attention_int8_setup */

static inline int8_t quantize(float x, float scale) {
  const float q = nearbyintf(x / scale);
  return (int8_t)(q > 127.0f ? 127.0f : (q < -128.0f ? -128.0f : q));
}

/* e^x for x <= 0 (a score minus its row's largest): x = n ln2 + r with |r| <= ln2/2, e^r by
 * its Taylor polynomial to degree 7, 2^n through the exponent bits. Relative error ~2e-7. */
static inline float exp_nonpositive(float x) {
  if (x < -87.0f) return 0.0f;
  const float n = nearbyintf(x * 1.44269504f);
  const float r = x - n * 0.693145752f - n * 1.42860677e-6f;
  float p = 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const union {
    int32_t i;
    float f;
  } two_n = {.i = ((int32_t)n + 127) << 23};
  return p * two_n.f;
}

/* Softmax in place over scores[0 .. columns); returns 1 / (the sum of the exponentials). */
static float softmax(float *scores, int64_t columns, float largest) {
  float total = 0.0f;
  for (int64_t c = 0; c < columns; c++) {
    scores[c] = exp_nonpositive(scores[c] - largest);
    total += scores[c];
  }
  return 1.0f / total;
}

static int64_t attended_columns(const Call *call, int64_t past, int64_t s) {
  const int64_t columns = past + s + 1;
  return columns < 1 ? 1 : (columns > call->capacity ? call->capacity : columns);
}

/* The portable path: any head size, any CPU. */
static void attend_portable(const Call *call, int64_t b, int64_t h, int64_t s, const int8_t *key,
                            const int8_t *value, int64_t past, const float *key_scale,
                            const float *value_scale) {
  const int64_t H = call->head_size, width = (call->heads + 2 * call->kv_heads) * H;
  const float *q = call->qkv + (b * call->seq + s) * width + h * H;
  const float *bias = call->bias + (b * call->seq + s) * call->total;
  const int64_t columns = attended_columns(call, past, s);
  const float alpha = 1.0f / sqrtf((float)H);
  float scores[MAX_COLUMNS], query[MAX_HEAD_SIZE], acc[MAX_HEAD_SIZE];
  for (int64_t d = 0; d < H; d++) query[d] = q[d] * key_scale[d] * alpha;
  float largest = -INFINITY;
  for (int64_t c = 0; c < columns; c++) {
    float dot = c < call->total ? bias[c] : 0.0f;
    for (int64_t d = 0; d < H; d++) dot += query[d] * (float)key[c * H + d];
    scores[c] = dot;
    largest = dot > largest ? dot : largest;
  }
  const float norm = softmax(scores, columns, largest);
  for (int64_t d = 0; d < H; d++) acc[d] = 0.0f;
  for (int64_t c = 0; c < columns; c++)
    for (int64_t d = 0; d < H; d++) acc[d] += scores[c] * (float)value[c * H + d];
  float *out = call->out + (b * call->seq + s) * call->heads * H + h * H;
  for (int64_t d = 0; d < H; d++) out[d] = acc[d] * value_scale[d] * norm;
}

#if defined(__x86_64__)
/* softmax() 16 scores at a time: the same reduction to e^r, with 2^n applied by scalef (which
 * also takes a masked score's e^-10000 to 0). A scalar exp per score was a quarter of the
 * kernel's time. */
__attribute__((target("avx512f"))) static float softmax_avx512(float *scores, int64_t columns, float largest) {
  const __m512 top = _mm512_set1_ps(largest), log2e = _mm512_set1_ps(1.44269504f), lowest = _mm512_set1_ps(-80.0f);
  const __m512 ln2_hi = _mm512_set1_ps(0.693145752f), ln2_lo = _mm512_set1_ps(1.42860677e-6f);
  const float coefficients[8] = {1.98412698e-4f, 1.38888889e-3f, 8.33333333e-3f, 4.16666667e-2f,
                                 1.66666667e-1f, 0.5f,           1.0f,           1.0f};
  __m512 total = _mm512_setzero_ps();
  for (int64_t c = 0; c < columns; c += 16) {
    const __mmask16 lanes = columns - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (columns - c)) - 1);
    /* below -80, e^x is ~0 anyway; the bound keeps n finite (a -inf score) and the result a
     * normal float (no denormal assists); max_ps returns its second operand, x, when x is NaN */
    const __m512 x = _mm512_max_ps(lowest, _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, scores + c), top));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(n, ln2_lo, _mm512_fnmadd_ps(n, ln2_hi, x));
    __m512 p = _mm512_set1_ps(coefficients[0]);
    for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coefficients[i]));
    const __m512 e = _mm512_maskz_mov_ps(lanes, _mm512_scalef_ps(p, n));
    _mm512_mask_storeu_ps(scores + c, lanes, e);
    total = _mm512_add_ps(total, e);
  }
  return 1.0f / _mm512_reduce_add_ps(total);
}

/* quantize() 16 channels at a time, to the same bytes: the same division, round half to even,
 * saturation. The scalar one calls libm's nearbyintf per value (the baseline x86-64 target has no
 * rounding instruction), which made the new columns of a decode step's 12 layers x 32 rows cost
 * more than their attention over a short past (bench/engine.md, step 24). */
__attribute__((target("avx512f"))) static void quantize_avx512(const float *x, const float *scale, int8_t *out,
                                                               int64_t H) {
  const __m512 low = _mm512_set1_ps(-128.0f), high = _mm512_set1_ps(127.0f);
  for (int64_t d = 0; d < H; d += 16) {
    const __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + d), _mm512_loadu_ps(scale + d)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i clamped = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, low), high));
    _mm_storeu_si128((__m128i *)(out + d), _mm512_cvtepi32_epi8(clamped));
  }
}

/* The AVX-512 path (head size a multiple of 16): a column of 16*k int8 keys or values is
 * widened to k vectors of floats in registers, never through a buffer. While the keys are
 * read, the same column of values is prefetched, so the second pass finds it in cache. */
__attribute__((target("avx512f,avx512bw"))) static void attend_avx512(
    const Call *call, int64_t b, int64_t h, int64_t s, const int8_t *key, const int8_t *value,
    int64_t past, const float *key_scale, const float *value_scale) {
  const int64_t H = call->head_size, chunks = H / 16, width = (call->heads + 2 * call->kv_heads) * H;
  const float *q = call->qkv + (b * call->seq + s) * width + h * H;
  const float *bias = call->bias + (b * call->seq + s) * call->total;
  const int64_t columns = attended_columns(call, past, s);
  const __m512 alpha = _mm512_set1_ps(1.0f / sqrtf((float)H));
  float scores[MAX_COLUMNS];
  __m512 query[MAX_HEAD_SIZE / 16], acc[MAX_HEAD_SIZE / 16];
  for (int64_t j = 0; j < chunks; j++)
    query[j] = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(q + 16 * j), _mm512_loadu_ps(key_scale + 16 * j)), alpha);
  float largest = -INFINITY;
  for (int64_t c = 0; c < columns; c++) {
    const int8_t *column = key + c * H;
    _mm_prefetch((const char *)(value + c * H), _MM_HINT_T0);
    _mm_prefetch((const char *)(column + 8 * H), _MM_HINT_T0);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < chunks; j++) {
      const __m128i bytes = _mm_loadu_si128((const __m128i *)(column + 16 * j));
      sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), query[j], sum);
    }
    const float dot = _mm512_reduce_add_ps(sum) + (c < call->total ? bias[c] : 0.0f);
    scores[c] = dot;
    largest = dot > largest ? dot : largest;
  }
  const float norm = softmax_avx512(scores, columns, largest);
  for (int64_t j = 0; j < chunks; j++) acc[j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < columns; c++) {
    const int8_t *column = value + c * H;
    const __m512 p = _mm512_set1_ps(scores[c]);
    for (int64_t j = 0; j < chunks; j++) {
      const __m128i bytes = _mm_loadu_si128((const __m128i *)(column + 16 * j));
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), p, acc[j]);
    }
  }
  float *out = call->out + (b * call->seq + s) * call->heads * H + h * H;
  const __m512 scale = _mm512_set1_ps(norm);
  for (int64_t j = 0; j < chunks; j++)
    _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(_mm512_mul_ps(acc[j], _mm512_loadu_ps(value_scale + 16 * j)), scale));
}
#endif

static int64_t past_columns(const Call *call, int64_t b) {
  return call->first_prompt ? 0 : (int64_t)call->seqlens_k[b] + 1 - call->seq;
}

/* Asks for item's past columns of keys and values ahead of their use. A row's columns are a
 * few KB apart from the next row's, too short a stream for the hardware prefetcher to reach
 * memory's bandwidth on its own: fetched while the item before is computed, they come at
 * about twice the rate in a decode step (bench/engine.md, step 24). */
static void prefetch_item(const Call *call, int64_t item) {
  const int64_t H = call->head_size, b = item / call->kv_heads, kvh = item % call->kv_heads;
  int64_t columns = past_columns(call, b);
  columns = columns < 0 ? 0 : (columns > call->capacity ? call->capacity : columns);
  const int64_t offset = (b * call->kv_heads + kvh) * call->capacity * H;
  /* where present is a buffer of its own, the past columns are read from the past first */
  const int8_t *key = (call->past_key != NULL ? call->past_key : call->key) + offset;
  const int8_t *value = (call->past_value != NULL ? call->past_value : call->value) + offset;
  for (int64_t byte = 0; byte < columns * H; byte += 64) {
    __builtin_prefetch(key + byte, 0, 3);
    __builtin_prefetch(value + byte, 0, 3);
  }
}

/* One item: row b, key/value head kvh, and the query heads that share it. */
static void attend_item(const Call *call, int64_t item) {
  const int64_t H = call->head_size, S = call->seq, group = call->heads / call->kv_heads;
  const int64_t b = item / call->kv_heads, kvh = item % call->kv_heads;
  const int64_t width = (call->heads + 2 * call->kv_heads) * H;
  const int64_t past = past_columns(call, b);
  int8_t *key = call->key + (b * call->kv_heads + kvh) * call->capacity * H;
  int8_t *value = call->value + (b * call->kv_heads + kvh) * call->capacity * H;
  const float *key_scale = call->key_scale + kvh * H, *value_scale = call->value_scale + kvh * H;
  if (call->past_key != NULL && past > 0) { /* a present of its own: the row's past columns first */
    const int64_t offset = (b * call->kv_heads + kvh) * call->capacity * H;
    const int64_t kept = (past < call->capacity ? past : call->capacity) * H;
    memcpy(key, call->past_key + offset, (size_t)kept);
    memcpy(value, call->past_value + offset, (size_t)kept);
  }
  for (int64_t s = 0; s < S; s++) {
    const int64_t column = past + s;
    if (column < 0 || column >= call->capacity) continue;
    const float *row = call->qkv + (b * S + s) * width;
    const float *k = row + (call->heads + kvh) * H, *v = row + (call->heads + call->kv_heads + kvh) * H;
#if defined(__x86_64__)
    if (use_avx512 && H % 16 == 0) {
      quantize_avx512(k, key_scale, key + column * H, H);
      quantize_avx512(v, value_scale, value + column * H, H);
      continue;
    }
#endif
    for (int64_t d = 0; d < H; d++) {
      key[column * H + d] = quantize(k[d], key_scale[d]);
      value[column * H + d] = quantize(v[d], value_scale[d]);
    }
  }
  for (int64_t h = kvh * group; h < (kvh + 1) * group; h++)
    for (int64_t s = 0; s < S; s++) {
#if defined(__x86_64__)
      if (use_avx512 && H % 16 == 0) {
        attend_avx512(call, b, h, s, key, value, past, key_scale, value_scale);
        continue;
      }
#endif
      attend_portable(call, b, h, s, key, value, past, key_scale, value_scale);
    }
}

/* One task: a run of consecutive items, each one's columns prefetched while the one before
 * it is computed (the first's would arrive no sooner than its own loads). */
static void attend(void *data, size_t task) {
  const Call *call = data;
  const int64_t first = (int64_t)task * call->items_per_task;
  const int64_t end = first + call->items_per_task < call->items ? first + call->items_per_task : call->items;
  for (int64_t item = first; item < end; item++) {
    if (item + 1 < end) prefetch_item(call, item + 1);
    attend_item(call, item);
  }
}

/* One part's Call: `group` is the index of its PAST_KEY input (its past value, seqlens_k, total
 * length, bias and the two scales follow), `present` that of its PRESENT_KEY output. Its rows
 * are bias's [batch, 1, sequence, total]; qkv and out point at its first row. */
static OrtStatus *prepare(OrtKernelContext *context, const Kernel *k, size_t group, size_t present, const float *qkv,
                          float *out, Call *call) {
  int64_t cache_dims[4], bias_dims[4];
  size_t cache_rank, bias_rank;
  const OrtValue *past_key = kernel_input(context, group), *past_value = kernel_input(context, group + 1);
  const OrtValue *bias = kernel_input(context, group + BIAS - PAST_KEY);
  tensor_dimensions(past_key, cache_dims, 4, &cache_rank);
  tensor_dimensions(bias, bias_dims, 4, &bias_rank);
  if (cache_rank != 4 || bias_rank != 4) return invalid_argument("AttentionInt8: wrong input ranks");
  *call = (Call){
      .seq = bias_dims[2],
      .heads = k->num_heads,
      .kv_heads = k->kv_num_heads,
      .head_size = cache_dims[3],
      .capacity = cache_dims[2],
      .total = *(const int32_t *)tensor_data(kernel_input(context, group + TOTAL_LENGTH - PAST_KEY)),
  };
  if (cache_dims[1] != call->kv_heads || cache_dims[0] != bias_dims[0])
    return invalid_argument("AttentionInt8: the cache does not match the heads or the batch");
  if (call->head_size > MAX_HEAD_SIZE || call->capacity > MAX_COLUMNS)
    return invalid_argument("AttentionInt8: head size or cache length beyond this kernel's limits");
  if (bias_dims[3] != call->total) return invalid_argument("AttentionInt8: the bias is not [batch, 1, sequence, total length]");
  call->first_prompt = call->seq == call->total;
  call->qkv = qkv;
  call->out = out;
  call->seqlens_k = tensor_data(kernel_input(context, group + SEQLENS_K - PAST_KEY));
  call->bias = tensor_data(bias);
  call->key_scale = tensor_data(kernel_input(context, group + KEY_SCALE - PAST_KEY));
  call->value_scale = tensor_data(kernel_input(context, group + VALUE_SCALE - PAST_KEY));
  call->key = kernel_output(context, present, cache_dims, 4);
  call->value = kernel_output(context, present + 1, cache_dims, 4);
  /* Bound to the past's own buffers (the runner's in-place cache) the present is written in
   * place. Otherwise, as GroupQueryAttention, it holds each row's past columns and the new
   * ones, zeros elsewhere. */
  if (call->key != tensor_data(past_key) || call->value != tensor_data(past_value)) {
    const size_t bytes = (size_t)(cache_dims[0] * cache_dims[1] * cache_dims[2] * cache_dims[3]);
    memset(call->key, 0, bytes);
    memset(call->value, 0, bytes);
    call->past_key = tensor_data(past_key);
    call->past_value = tensor_data(past_value);
  }
  /* Runs of up to 8 items, at least 4 tasks per call so that both cores have work. */
  call->items = bias_dims[0] * call->kv_heads;
  call->items_per_task = call->items / 4 < 1 ? 1 : (call->items / 4 > 8 ? 8 : call->items / 4);
  return NULL;
}

static size_t task_count(const Call *call) {
  return (size_t)((call->items + call->items_per_task - 1) / call->items_per_task);
}

/* A mixed step's two parts (the batch's rows, then the joining prompts) in one ParallelFor: a
 * task is one part's run of items. */
typedef struct {
  Call parts[2];
  size_t first_tasks;
} Parts;

static void attend_parts(void *data, size_t task) {
  Parts *parts = data;
  if (task < parts->first_tasks) attend(&parts->parts[0], task);
  else attend(&parts->parts[1], task - parts->first_tasks);
}

static OrtStatus *compute(void *kernel, OrtKernelContext *context) {
  int64_t qkv_dims[3];
  size_t qkv_rank;
  const OrtValue *qkv = kernel_input(context, QKV);
  tensor_dimensions(qkv, qkv_dims, 3, &qkv_rank);
  if (qkv_rank != 3) return invalid_argument("AttentionInt8: wrong input ranks");
  const Kernel *k = kernel;
  const int64_t groups = k->num_heads + 2 * k->kv_num_heads, head_size = qkv_dims[2] / groups;
  const int64_t out_dims[3] = {qkv_dims[0], qkv_dims[1], k->num_heads * head_size};
  float *out = kernel_output(context, OUTPUT, out_dims, 3);
  Call call;
  OrtStatus *status = prepare(context, k, PAST_KEY, PRESENT_KEY, tensor_data(qkv), out, &call);
  if (status != NULL) return status;
  if (qkv_dims[2] != groups * call.head_size)
    return invalid_argument("AttentionInt8: the packed QKV does not match the cache's heads");
  if (call.items / call.kv_heads != qkv_dims[0] || call.seq != qkv_dims[1])
    return invalid_argument("AttentionInt8: the bias is not [batch, 1, sequence, total length]");
  return API(KERNEL_CONTEXT_PARALLEL_FOR, ParallelForFn)(context, attend, task_count(&call), 0, &call);
}

/* AttentionInt8Mixed: a mixed step's attention (export/onnx_graph.py: StepParts) in one node.
 * The graph's QKV is one flat sequence [1, B*S + J*S', width], the batch's B rows of S tokens
 * and then J joining prompts of S'; each part has its own cache and lengths (the inputs after
 * QKV: the rows' seven as AttentionInt8 takes them, then the prompts'), and the output is flat
 * like the QKV. In place of the two AttentionInt8 nodes and the slices, reshapes and concat
 * around them, about fifteen nodes a layer (bench/engine.md, step 24). */
enum { PROMPT_PAST_KEY = VALUE_SCALE + 1, N_INPUTS_MIXED = PROMPT_PAST_KEY + VALUE_SCALE - PAST_KEY + 1 };
enum { PROMPT_PRESENT_KEY = N_OUTPUTS, N_OUTPUTS_MIXED = N_OUTPUTS + 2 };

static OrtStatus *compute_mixed(void *kernel, OrtKernelContext *context) {
  int64_t qkv_dims[3];
  size_t qkv_rank;
  const OrtValue *qkv = kernel_input(context, QKV);
  tensor_dimensions(qkv, qkv_dims, 3, &qkv_rank);
  const Kernel *k = kernel;
  const int64_t groups = k->num_heads + 2 * k->kv_num_heads;
  if (qkv_rank != 3 || qkv_dims[0] != 1 || qkv_dims[2] % groups != 0)
    return invalid_argument("AttentionInt8Mixed: the QKV is not one flat sequence [1, tokens, width]");
  const int64_t head_size = qkv_dims[2] / groups, out_width = k->num_heads * head_size;
  const int64_t out_dims[3] = {1, qkv_dims[1], out_width};
  const float *flat = tensor_data(qkv);
  float *out = kernel_output(context, OUTPUT, out_dims, 3);
  Parts parts;
  OrtStatus *status = prepare(context, k, PAST_KEY, PRESENT_KEY, flat, out, &parts.parts[0]);
  if (status != NULL) return status;
  const Call *rows = &parts.parts[0];
  const int64_t row_tokens = rows->items / rows->kv_heads * rows->seq;
  if (row_tokens > qkv_dims[1]) return invalid_argument("AttentionInt8Mixed: fewer tokens than the rows hold");
  status = prepare(context, k, PROMPT_PAST_KEY, PROMPT_PRESENT_KEY, flat + row_tokens * qkv_dims[2],
                   out + row_tokens * out_width, &parts.parts[1]);
  if (status != NULL) return status;
  const Call *prompts = &parts.parts[1];
  if (rows->head_size != head_size || prompts->head_size != head_size ||
      row_tokens + prompts->items / prompts->kv_heads * prompts->seq != qkv_dims[1])
    return invalid_argument("AttentionInt8Mixed: the rows and prompts do not add up to the QKV");
  parts.first_tasks = task_count(rows);
  return API(KERNEL_CONTEXT_PARALLEL_FOR, ParallelForFn)(context, attend_parts, parts.first_tasks + task_count(prompts),
                                                        0, &parts);
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const void *api_table, const OrtKernelInfo *info, void **out) {
  (void)op;
  (void)api_table;
  Kernel *kernel = calloc(1, sizeof(Kernel));
  if (kernel == NULL) return invalid_argument("AttentionInt8: out of memory");
  OrtStatus *status = kernel_attribute(info, "num_heads", &kernel->num_heads);
  if (status == NULL) status = kernel_attribute(info, "kv_num_heads", &kernel->kv_num_heads);
  if (status == NULL && (kernel->kv_num_heads < 1 || kernel->num_heads % kernel->kv_num_heads != 0))
    status = invalid_argument("AttentionInt8: num_heads must be a multiple of kv_num_heads");
  if (status != NULL) {
    free(kernel);
    return status;
  }
  *out = kernel;
  return NULL;
}

const CustomOp ATTENTION_INT8 = CUSTOM_OP("AttentionInt8", INPUT_TYPES, OUTPUT_TYPES, create_kernel, compute);
static const int INPUT_TYPES_MIXED[N_INPUTS_MIXED] = {TYPE_FLOAT, TYPE_INT8,  TYPE_INT8,  TYPE_INT32, TYPE_INT32,
                                                      TYPE_FLOAT, TYPE_FLOAT, TYPE_FLOAT, TYPE_INT8,  TYPE_INT8,
                                                      TYPE_INT32, TYPE_INT32, TYPE_FLOAT, TYPE_FLOAT, TYPE_FLOAT};
static const int OUTPUT_TYPES_MIXED[N_OUTPUTS_MIXED] = {TYPE_FLOAT, TYPE_INT8, TYPE_INT8, TYPE_INT8, TYPE_INT8};
const CustomOp ATTENTION_INT8_MIXED =
    CUSTOM_OP("AttentionInt8Mixed", INPUT_TYPES_MIXED, OUTPUT_TYPES_MIXED, create_kernel, compute_mixed);

void attention_int8_setup(void) {
#if defined(__x86_64__)
  use_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#endif
}
