/* promptgen::MatMulInt8, an ONNX Runtime custom operator for the CPU provider: the INT8
 * variant's weight MatMuls, with the products on AMX tiles where the CPU has them.
 * runtime/matmul_kernel.py swaps it in when a session is made; docs/architecture.md ("our
 * CPU kernels") says why.
 *
 * Semantics: exactly those of the subgraph ONNX Runtime's quantize_dynamic writes for a MatMul
 * (export/variants.py), which ORT fuses into DynamicQuantizeMatMul:
 *   DynamicQuantizeLinear(x)                 -> xq (uint8), one scale and zero point for x
 *   MatMulInteger(xq, w, zero point, 0)      -> int32, exact
 *   Cast to float, times x_scale * w_scale[n], plus bias[n] where the graph adds one.
 * x is quantised as ORT does it (the range stretched to hold 0, x / scale rounded half to even,
 * saturating), and the products are integers, so the outputs are ORT's to the last bit
 * (tests/test_matmul_kernel.py).
 *
 * Inputs: x float [..., K]; weight int8 [Np/16, Kp/4, 64], packed by runtime/matmul_kernel.py
 * (Np, Kp: N and K rounded up to 16 and 64, zeros in the padding): 16 columns at a time, each
 * column's 4 consecutive rows of K side by side, which is the layout of an AMX B tile (16 rows of
 * 64 bytes) and of a VNNI operand; column_sums int32 [Np] (of the unpacked weight: the
 * activations' zero point is taken out of the integer sums with them); weight_scale float [N];
 * bias float [N] (zeros where the graph has none). Attributes: n, k. Output: float [..., N].
 *
 * Why: ORT's kernel quantises, multiplies and scales in separate passes over the output; here one
 * task takes up to 128 rows of x, already quantised, against 128 columns of the weight, and
 * writes them finished from the tile registers. bench/engine.md (step 23) has the figures.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "ort_custom_op.h"

/* Inputs and outputs, in this order (runtime/matmul_kernel.py builds the node). MatMulInt8Add
 * takes one more, RESIDUAL, the same shape as the output, added last: the residual Add of a
 * transformer block that follows its output projections, as the graph did it. */
enum { X, WEIGHT, COLUMN_SUMS, WEIGHT_SCALE, BIAS, RESIDUAL };
static const int INPUT_TYPES[] = {TYPE_FLOAT, TYPE_INT8, TYPE_INT32, TYPE_FLOAT, TYPE_FLOAT};
static const int INPUT_TYPES_ADD[] = {TYPE_FLOAT, TYPE_INT8, TYPE_INT32, TYPE_FLOAT, TYPE_FLOAT, TYPE_FLOAT};
static const int OUTPUT_TYPES[] = {TYPE_FLOAT};

#define MAX_RANK 8
#define BLOCK 16          /* columns per packed block, rows per AMX tile */
#define DEPTH 64          /* K per AMX tile product */
#define ROW_CHUNK 128     /* rows of x per task: their quantised bytes stay in the core's L2 */
#define COLUMN_BLOCKS 8   /* 16-column blocks per task */
#define PASS_ROWS 4       /* rows of x per task of the range and quantisation passes */

typedef struct {
  int64_t n, k;
  int residual; /* MatMulInt8Add */
} Kernel;

/* One call's tensors and sizes, shared by its tasks. */
typedef struct {
  const float *x, *weight_scale, *bias, *residual; /* residual: NULL but in MatMulInt8Add */
  const int8_t *weight;
  const int32_t *column_sums;
  uint8_t *xq;   /* [rows rounded up to 16, kp] */
  float *ranges; /* each 16-row chunk's lowest and highest value */
  float *y;
  int64_t m, k, n, kp, column_blocks, column_groups;
  float scale;
  int32_t zero_point;
} Call;

static int use_amx, use_avx512; /* set by matmul_int8_setup */

/* Each calling thread's buffer for the quantised x: a call's tasks share the caller's. */
static _Thread_local uint8_t *scratch;
static _Thread_local size_t scratch_size;

static uint8_t *scratch_for(size_t bytes) {
  if (bytes > scratch_size) {
    free(scratch);
    scratch_size = (bytes + 4095) / 4096 * 4096;
    scratch = aligned_alloc(64, scratch_size);
    if (scratch == NULL) scratch_size = 0;
  }
  return scratch;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void range_avx512(const float *x, int64_t count, float *low, float *high) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
  }
  *low = _mm512_reduce_min_ps(lo);
  *high = _mm512_reduce_max_ps(hi);
  for (; i < count; i++) {
    *low = x[i] < *low ? x[i] : *low;
    *high = x[i] > *high ? x[i] : *high;
  }
}

/* quantize_rows() 16 at a time: the same divide, clamp, round half to even (the default MXCSR
 * rounding) and add. */
__attribute__((target("avx512f"))) static int64_t quantize_row_avx512(const Call *call, const float *row, uint8_t *q) {
  const __m512 scale = _mm512_set1_ps(call->scale);
  const __m512 low = _mm512_set1_ps(-(float)call->zero_point), high = _mm512_set1_ps(255.0f - (float)call->zero_point);
  const __m512i zero_point = _mm512_set1_epi32(call->zero_point);
  int64_t i = 0;
  for (; i + 16 <= call->k; i += 16) {
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(_mm512_loadu_ps(row + i), scale), low), high);
    _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(v), zero_point)));
  }
  return i;
}
#endif

/* One task: the range of rows [4 task, 4 task + 4) of x, stretched to hold 0. Done in
 * parallel, in the same chunks as quantize_rows, so that each core then quantises rows it has
 * just read: x was written by the previous operator's tasks on both cores, and one core reading
 * all of it pulls the other's half across (bench/engine.md, step 23). Chunks of 4 rows, not of a
 * tile's 16, so that a step of a few rows and a short prompt (at most 16 rows) is divided
 * between the cores too: the divisions of quantize_rows are what the pass costs (step 24). */
static void range_rows(void *data, size_t task) {
  const Call *call = data;
  const int64_t first = (int64_t)task * PASS_ROWS, last = first + PASS_ROWS < call->m ? first + PASS_ROWS : call->m;
  const float *x = call->x + first * call->k;
  const int64_t count = (last - first) * call->k;
  float low = 0.0f, high = 0.0f;
#if defined(__x86_64__)
  if (use_avx512) range_avx512(x, count, &low, &high);
  else
#endif
    for (int64_t i = 0; i < count; i++) {
      low = x[i] < low ? x[i] : low;
      high = x[i] > high ? x[i] : high;
    }
  call->ranges[2 * task] = low;
  call->ranges[2 * task + 1] = high;
}

/* x's scale and zero point from the chunks' ranges, as DynamicQuantizeLinear. */
static void quantization(Call *call, int64_t chunks) {
  float low = 0.0f, high = 0.0f;
  for (int64_t t = 0; t < chunks; t++) {
    low = call->ranges[2 * t] < low ? call->ranges[2 * t] : low;
    high = call->ranges[2 * t + 1] > high ? call->ranges[2 * t + 1] : high;
  }
  call->scale = high == low ? 1.0f : (high - low) / 255.0f;
  const float zero_point = nearbyintf(fminf(fmaxf(0.0f - low / call->scale, 0.0f), 255.0f));
  call->zero_point = (int32_t)zero_point;
}

/* One task: rows [4 task, 4 task + 4) of x quantised into the scratch, padding columns 0.
 * As MLAS: x / scale, clamped to the zero point's range, rounded half to even, plus it. */
static void quantize_rows(void *data, size_t task) {
  const Call *call = data;
  const float low = -(float)call->zero_point, high = 255.0f - (float)call->zero_point;
  const int64_t first = (int64_t)task * PASS_ROWS, last = first + PASS_ROWS < call->m ? first + PASS_ROWS : call->m;
  for (int64_t r = first; r < last; r++) {
    const float *row = call->x + r * call->k;
    uint8_t *q = call->xq + r * call->kp;
    int64_t i = 0;
#if defined(__x86_64__)
    if (use_avx512) i = quantize_row_avx512(call, row, q);
#endif
    for (; i < call->k; i++)
      q[i] = (uint8_t)((int32_t)nearbyintf(fminf(fmaxf(row[i] / call->scale, low), high)) + call->zero_point);
    memset(q + call->k, 0, (size_t)(call->kp - call->k));
  }
}

static inline float finished(const Call *call, int32_t sum, int64_t n) {
  const float scale = call->scale * call->weight_scale[n];
  return (float)(sum - call->zero_point * call->column_sums[n]) * scale + call->bias[n];
}

static inline float finished_row(const Call *call, int32_t sum, int64_t r, int64_t n) {
  const float value = finished(call, sum, n);
  return call->residual != NULL ? value + call->residual[r * call->n + n] : value;
}

/* The portable path: any CPU. */
static void multiply_portable(const Call *call, int64_t r0, int64_t r1, int64_t b0, int64_t b1) {
  for (int64_t r = r0; r < r1; r++)
    for (int64_t b = b0; b < b1; b++)
      for (int64_t j = 0; j < BLOCK && b * BLOCK + j < call->n; j++) {
        const int8_t *w = call->weight + b * call->kp * BLOCK + j * 4;
        const uint8_t *q = call->xq + r * call->kp;
        int32_t sum = 0;
        for (int64_t i = 0; i < call->kp; i++) sum += (int32_t)q[i] * (int32_t)w[(i / 4) * 64 + i % 4];
        call->y[r * call->n + b * BLOCK + j] = finished_row(call, sum, r, b * BLOCK + j);
      }
}

#if defined(__x86_64__)
static int amx_usable(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  const int tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
  if (!tile || !int8 || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return 0;
  /* Linux hands out the tile registers' state on request (ARCH_REQ_XCOMP_PERM, XTILEDATA). */
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

/* 16 rows of one 16-column block, finished from an int32 tile stored at `sums`. */
__attribute__((target("avx512f,avx512bw"))) static void finish_tile(const Call *call, const int32_t *sums,
                                                                     int64_t r0, int64_t b) {
  const int64_t n0 = b * BLOCK, columns = call->n - n0 < BLOCK ? call->n - n0 : BLOCK;
  const __mmask16 lanes = (__mmask16)((1u << columns) - 1);
  const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(call->scale), _mm512_maskz_loadu_ps(lanes, call->weight_scale + n0));
  const __m512i offset =
      _mm512_mullo_epi32(_mm512_set1_epi32(call->zero_point), _mm512_maskz_loadu_epi32(lanes, call->column_sums + n0));
  const __m512 bias = _mm512_maskz_loadu_ps(lanes, call->bias + n0);
  for (int64_t i = 0; i < BLOCK && r0 + i < call->m; i++) {
    const __m512i sum = _mm512_sub_epi32(_mm512_load_si512(sums + i * BLOCK), offset);
    __m512 value = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale), bias);
    if (call->residual != NULL)
      value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(lanes, call->residual + (r0 + i) * call->n + n0));
    _mm512_mask_storeu_ps(call->y + (r0 + i) * call->n + n0, lanes, value);
  }
}

/* The AMX path, one 16-row slice of x against two 16-column blocks of the weight at a time, K in
 * steps of 64: tiles 4 and 5 accumulate the two products; the step's operands are in tiles 2 (x),
 * 0 and 1 (weight) while the next step's load into 3, 6 and 7, and the other way round. A tile
 * load waits for the products still reading its tile, so loading into the same tiles every step
 * would leave each step's loads and products in turn. (Where the weights stream from memory, as
 * GPT-2 small's do, that was not what limited it: bench/engine.md, step 23.) Every tile is 16
 * rows of 64 bytes, the configuration
 * ORT's own AMX kernel (MLAS) loads, so the two take turns on a thread without upsetting each
 * other. */
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void multiply_amx(const Call *call, int64_t r0,
                                                                                        int64_t r1, int64_t b0,
                                                                                        int64_t b1) {
  struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
  } config = {.palette = 1};
  for (int t = 0; t < 8; t++) {
    config.rows[t] = BLOCK;
    config.bytes_per_row[t] = DEPTH;
  }
  _tile_loadconfig(&config);
  int32_t sums[2][BLOCK * BLOCK] __attribute__((aligned(64)));
  const int64_t kp = call->kp;
  for (int64_t b = b0; b < b1; b += 2) {
    const int two = b + 1 < b1;
    const int8_t *w0 = call->weight + b * kp * BLOCK, *w1 = w0 + kp * BLOCK;
    for (int64_t r = r0; r < r1; r += BLOCK) {
      const uint8_t *x = call->xq + r * kp;
      _tile_zero(4);
      _tile_zero(5);
      _tile_loadd(2, x, kp);
      _tile_loadd(0, w0, DEPTH);
      if (two) _tile_loadd(1, w1, DEPTH);
      int64_t k = 0;
      for (; k + 2 * DEPTH <= kp; k += 2 * DEPTH) {
        _tile_loadd(3, x + k + DEPTH, kp);
        _tile_loadd(6, w0 + (k + DEPTH) * BLOCK, DEPTH);
        if (two) _tile_loadd(7, w1 + (k + DEPTH) * BLOCK, DEPTH);
        _tile_dpbusd(4, 2, 0);
        if (two) _tile_dpbusd(5, 2, 1);
        if (k + 2 * DEPTH < kp) {
          _tile_loadd(2, x + k + 2 * DEPTH, kp);
          _tile_loadd(0, w0 + (k + 2 * DEPTH) * BLOCK, DEPTH);
          if (two) _tile_loadd(1, w1 + (k + 2 * DEPTH) * BLOCK, DEPTH);
        }
        _tile_dpbusd(4, 3, 6);
        if (two) _tile_dpbusd(5, 3, 7);
      }
      if (k < kp) { /* an odd number of steps: the last one's operands are in 2, 0 and 1 */
        _tile_dpbusd(4, 2, 0);
        if (two) _tile_dpbusd(5, 2, 1);
      }
      _tile_stored(4, sums[0], BLOCK * 4);
      finish_tile(call, sums[0], r, b);
      if (two) {
        _tile_stored(5, sums[1], BLOCK * 4);
        finish_tile(call, sums[1], r, b + 1);
      }
    }
  }
}
#endif

/* One task: a chunk of up to ROW_CHUNK rows against a group of COLUMN_BLOCKS blocks. */
static void multiply(void *data, size_t task) {
  const Call *call = data;
  const int64_t chunk = (int64_t)task / call->column_groups, group = (int64_t)task % call->column_groups;
  const int64_t r0 = chunk * ROW_CHUNK, r1 = r0 + ROW_CHUNK < call->m ? r0 + ROW_CHUNK : call->m;
  const int64_t b0 = group * COLUMN_BLOCKS;
  const int64_t b1 = b0 + COLUMN_BLOCKS < call->column_blocks ? b0 + COLUMN_BLOCKS : call->column_blocks;
#if defined(__x86_64__)
  if (use_amx) {
    multiply_amx(call, r0, r1, b0, b1);
    return;
  }
#endif
  multiply_portable(call, r0, r1, b0, b1);
}

static OrtStatus *compute(void *kernel, OrtKernelContext *context) {
  const Kernel *kern = kernel;
  int64_t x_dims[MAX_RANK], w_dims[3];
  size_t x_rank, w_rank;
  const OrtValue *x = kernel_input(context, X), *weight = kernel_input(context, WEIGHT);
  tensor_dimensions(x, x_dims, MAX_RANK, &x_rank);
  tensor_dimensions(weight, w_dims, 3, &w_rank);
  if (x_rank < 1 || x_rank > MAX_RANK || w_rank != 3) return invalid_argument("MatMulInt8: wrong input ranks");
  Call call = {.k = kern->k, .n = kern->n, .kp = w_dims[1] * 4, .column_blocks = w_dims[0], .m = 1};
  if (x_dims[x_rank - 1] != call.k || call.kp < call.k || call.kp % DEPTH != 0 || w_dims[2] != 4 * BLOCK ||
      call.column_blocks * BLOCK < call.n)
    return invalid_argument("MatMulInt8: x's last dimension or the packed weight does not match k and n");
  for (size_t i = 0; i + 1 < x_rank; i++) call.m *= x_dims[i];
  x_dims[x_rank - 1] = call.n;
  call.y = kernel_output(context, 0, x_dims, x_rank);
  if (call.m == 0) return NULL;
  call.x = tensor_data(x);
  call.weight = tensor_data(weight);
  call.column_sums = tensor_data(kernel_input(context, COLUMN_SUMS));
  call.weight_scale = tensor_data(kernel_input(context, WEIGHT_SCALE));
  call.bias = tensor_data(kernel_input(context, BIAS));
  if (kern->residual) {
    const OrtValue *residual = kernel_input(context, RESIDUAL);
    int64_t r_dims[MAX_RANK], count = 1;
    size_t r_rank;
    tensor_dimensions(residual, r_dims, MAX_RANK, &r_rank);
    for (size_t i = 0; i < r_rank && r_rank <= MAX_RANK; i++) count *= r_dims[i];
    if (r_rank > MAX_RANK || r_rank == 0 || r_dims[r_rank - 1] != call.n || count != call.m * call.n)
      return invalid_argument("MatMulInt8Add: the residual is not the output's shape");
    call.residual = tensor_data(residual);
  }
  call.column_groups = (call.column_blocks + COLUMN_BLOCKS - 1) / COLUMN_BLOCKS;
  const int64_t chunks = (call.m + BLOCK - 1) / BLOCK; /* a tile reads 16 rows */
  const int64_t passes = (call.m + PASS_ROWS - 1) / PASS_ROWS;
  call.xq = scratch_for((size_t)(chunks * BLOCK * call.kp + passes * 2 * (int64_t)sizeof(float)));
  if (call.xq == NULL) return invalid_argument("MatMulInt8: out of memory");
  call.ranges = (float *)(call.xq + chunks * BLOCK * call.kp); /* kp is a multiple of 64: aligned */
  ParallelForFn parallel_for = API(KERNEL_CONTEXT_PARALLEL_FOR, ParallelForFn);
  OrtStatus *status = parallel_for(context, range_rows, (size_t)passes, 0, &call);
  if (status != NULL) return status;
  quantization(&call, passes);
  status = parallel_for(context, quantize_rows, (size_t)passes, 0, &call);
  if (status != NULL) return status;
  const size_t tasks = (size_t)((call.m + ROW_CHUNK - 1) / ROW_CHUNK * call.column_groups);
  return parallel_for(context, multiply, tasks, 0, &call);
}

static OrtStatus *create_kernel(const OrtCustomOp *op, const void *api_table, const OrtKernelInfo *info, void **out) {
  (void)api_table;
  Kernel *kernel = calloc(1, sizeof(Kernel));
  if (kernel == NULL) return invalid_argument("MatMulInt8: out of memory");
  kernel->residual = ((const CustomOp *)op)->input_count > RESIDUAL;
  OrtStatus *status = kernel_attribute(info, "n", &kernel->n);
  if (status == NULL) status = kernel_attribute(info, "k", &kernel->k);
  if (status == NULL && (kernel->n < 1 || kernel->k < 1)) status = invalid_argument("MatMulInt8: n and k must be positive");
  if (status != NULL) {
    free(kernel);
    return status;
  }
  *out = kernel;
  return NULL;
}

const CustomOp MATMUL_INT8 = CUSTOM_OP("MatMulInt8", INPUT_TYPES, OUTPUT_TYPES, create_kernel, compute);
const CustomOp MATMUL_INT8_ADD = CUSTOM_OP("MatMulInt8Add", INPUT_TYPES_ADD, OUTPUT_TYPES, create_kernel, compute);

/* Whether MatMulInt8 multiplies on AMX tiles here (runtime/matmul_kernel.py asks, through ctypes,
 * before it puts the operator in a graph: elsewhere ORT's kernel is the faster). The environment
 * variable PROMPTGEN_MATMUL_INT8_PORTABLE=1 forces the portable C (tests run both), read when a
 * session registers the library. */
static int portable_forced(void) {
  const char *portable = getenv("PROMPTGEN_MATMUL_INT8_PORTABLE");
  return portable != NULL && strcmp(portable, "1") == 0;
}

int matmul_int8_uses_amx(void) {
#if defined(__x86_64__)
  return !portable_forced() && amx_usable();
#else
  return 0;
#endif
}

void matmul_int8_setup(void) {
  use_amx = matmul_int8_uses_amx();
#if defined(__x86_64__)
  use_avx512 = !portable_forced() && __builtin_cpu_supports("avx512f");
#endif
}
