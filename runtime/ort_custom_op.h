/* What our ONNX Runtime custom operators (attention_int8.c, matmul_int8.c) share: the ORT C API
 * reached through its OrtApi function table by index, the OrtCustomOp record, and helpers for
 * a kernel's tensors. custom_ops.c registers the operators; runtime/custom_ops.py builds the
 * library and puts the operators in a graph when a session is made.
 *
 * No ORT header is needed to build: the table only ever grows at its end (a stable ABI), and the
 * indices below are those of onnxruntime_c_api.h (API version 17, the first with
 * KernelContext_ParallelFor). */
#ifndef PROMPTGEN_ORT_CUSTOM_OP_H
#define PROMPTGEN_ORT_CUSTOM_OP_H

#include <stddef.h>
#include <stdint.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtShape;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct {
  const void *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;

enum {
  API_VERSION = 17,
  CREATE_STATUS = 0,
  CREATE_CUSTOM_OP_DOMAIN = 26,
  CUSTOM_OP_DOMAIN_ADD = 27,
  ADD_CUSTOM_OP_DOMAIN = 28,
  GET_TENSOR_MUTABLE_DATA = 51,
  GET_DIMENSIONS_COUNT = 61,
  GET_DIMENSIONS = 62,
  GET_TENSOR_TYPE_AND_SHAPE = 65,
  KERNEL_INFO_GET_ATTRIBUTE_INT64 = 86,
  KERNEL_CONTEXT_GET_INPUT = 90,
  KERNEL_CONTEXT_GET_OUTPUT = 91,
  RELEASE_TENSOR_TYPE_AND_SHAPE_INFO = 99,
  KERNEL_CONTEXT_PARALLEL_FOR = 274,
};
enum { TYPE_FLOAT = 1, TYPE_INT8 = 3, TYPE_INT32 = 6 }; /* ONNXTensorElementDataType */
enum { ORT_INVALID_ARGUMENT = 2 };                     /* OrtErrorCode */

extern void *const *ort_api; /* the OrtApi table, set when the library is registered */
#define API(index, type) ((type)ort_api[index])

typedef OrtStatus *(*CreateStatusFn)(int, const char *);
typedef OrtStatus *(*GetTypeAndShapeFn)(const OrtValue *, OrtShape **);
typedef OrtStatus *(*GetDimensionsCountFn)(const OrtShape *, size_t *);
typedef OrtStatus *(*GetDimensionsFn)(const OrtShape *, int64_t *, size_t);
typedef void (*ReleaseShapeFn)(OrtShape *);
typedef OrtStatus *(*GetMutableDataFn)(const OrtValue *, void **);
typedef OrtStatus *(*GetInputFn)(const OrtKernelContext *, size_t, const OrtValue **);
typedef OrtStatus *(*GetOutputFn)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
typedef OrtStatus *(*ParallelForFn)(const OrtKernelContext *, void (*)(void *, size_t), size_t, size_t, void *);
typedef OrtStatus *(*GetAttributeInt64Fn)(const OrtKernelInfo *, const char *, int64_t *);

/* OrtCustomOp, field for field (onnxruntime_c_api.h); ORT reads the fields its `version` has. */
typedef struct OrtCustomOp {
  uint32_t version;
  void *(*CreateKernel)(const struct OrtCustomOp *, const void *, const OrtKernelInfo *);
  const char *(*GetName)(const struct OrtCustomOp *);
  const char *(*GetExecutionProviderType)(const struct OrtCustomOp *);
  int (*GetInputType)(const struct OrtCustomOp *, size_t);
  size_t (*GetInputTypeCount)(const struct OrtCustomOp *);
  int (*GetOutputType)(const struct OrtCustomOp *, size_t);
  size_t (*GetOutputTypeCount)(const struct OrtCustomOp *);
  void (*KernelCompute)(void *, OrtKernelContext *);
  void (*KernelDestroy)(void *);
  int (*GetInputCharacteristic)(const struct OrtCustomOp *, size_t);
  int (*GetOutputCharacteristic)(const struct OrtCustomOp *, size_t);
  int (*GetInputMemoryType)(const struct OrtCustomOp *, size_t);
  int (*GetVariadicInputMinArity)(const struct OrtCustomOp *);
  int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp *);
  int (*GetVariadicOutputMinArity)(const struct OrtCustomOp *);
  int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp *);
  OrtStatus *(*CreateKernelV2)(const struct OrtCustomOp *, const void *, const OrtKernelInfo *, void **);
  OrtStatus *(*KernelComputeV2)(void *, OrtKernelContext *);
  void *InferOutputShapeFn;
  int (*GetStartVersion)(const struct OrtCustomOp *);
  int (*GetEndVersion)(const struct OrtCustomOp *);
} OrtCustomOp;

/* One of our operators: ORT's record first (ORT hands it back to the callbacks, which read the
 * rest), then its name and its inputs' and outputs' element types, all required. */
typedef struct {
  OrtCustomOp ort;
  const char *name;
  const int *input_types, *output_types;
  size_t input_count, output_count;
} CustomOp;

/* The callbacks every CustomOp shares (custom_ops.c). */
const char *custom_op_name(const OrtCustomOp *op);
const char *custom_op_provider(const OrtCustomOp *op);
int custom_op_input_type(const OrtCustomOp *op, size_t i);
size_t custom_op_input_count(const OrtCustomOp *op);
int custom_op_output_type(const OrtCustomOp *op, size_t i);
size_t custom_op_output_count(const OrtCustomOp *op);
int custom_op_zero(const OrtCustomOp *op, size_t i); /* required (characteristic), default memory */
int custom_op_one(const OrtCustomOp *op);
int custom_op_last_opset(const OrtCustomOp *op);

#define CUSTOM_OP(NAME, INPUT_TYPES, OUTPUT_TYPES, CREATE, COMPUTE)                                          \
  {                                                                                                        \
    .ort =                                                                                                 \
        {                                                                                                  \
            .version = API_VERSION,                                                                        \
            .GetName = custom_op_name,                                                                     \
            .GetExecutionProviderType = custom_op_provider,                                                \
            .GetInputType = custom_op_input_type,                                                          \
            .GetInputTypeCount = custom_op_input_count,                                                    \
            .GetOutputType = custom_op_output_type,                                                        \
            .GetOutputTypeCount = custom_op_output_count,                                                  \
            .KernelDestroy = free,                                                                         \
            .GetInputCharacteristic = custom_op_zero,                                                      \
            .GetOutputCharacteristic = custom_op_zero,                                                     \
            .GetInputMemoryType = custom_op_zero,                                                          \
            .GetVariadicInputMinArity = custom_op_one,                                                     \
            .GetVariadicInputHomogeneity = custom_op_one,                                                  \
            .GetVariadicOutputMinArity = custom_op_one,                                                    \
            .GetVariadicOutputHomogeneity = custom_op_one,                                                 \
            .CreateKernelV2 = CREATE,                                                                      \
            .KernelComputeV2 = COMPUTE,                                                                    \
            .GetStartVersion = custom_op_one,                                                              \
            .GetEndVersion = custom_op_last_opset,                                                         \
        },                                                                                                 \
    .name = NAME, .input_types = INPUT_TYPES, .output_types = OUTPUT_TYPES,                               \
    .input_count = sizeof(INPUT_TYPES) / sizeof(int), .output_count = sizeof(OUTPUT_TYPES) / sizeof(int), \
  }

extern const CustomOp ATTENTION_INT8, ATTENTION_INT8_MIXED, MATMUL_INT8, MATMUL_INT8_ADD;

/* Called once per registration: each operator picks its code path for this CPU. */
void attention_int8_setup(void);
void matmul_int8_setup(void);

/* A kernel's tensors. */
static inline void tensor_dimensions(const OrtValue *value, int64_t *dims, size_t most, size_t *count) {
  OrtShape *shape;
  API(GET_TENSOR_TYPE_AND_SHAPE, GetTypeAndShapeFn)(value, &shape);
  API(GET_DIMENSIONS_COUNT, GetDimensionsCountFn)(shape, count);
  if (*count <= most) API(GET_DIMENSIONS, GetDimensionsFn)(shape, dims, *count);
  API(RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, ReleaseShapeFn)(shape);
}

static inline void *tensor_data(const OrtValue *value) {
  void *pointer = NULL;
  API(GET_TENSOR_MUTABLE_DATA, GetMutableDataFn)(value, &pointer);
  return pointer;
}

static inline const OrtValue *kernel_input(OrtKernelContext *context, size_t index) {
  const OrtValue *value = NULL;
  API(KERNEL_CONTEXT_GET_INPUT, GetInputFn)(context, index, &value);
  return value;
}

static inline void *kernel_output(OrtKernelContext *context, size_t index, const int64_t *dims, size_t count) {
  OrtValue *value = NULL;
  API(KERNEL_CONTEXT_GET_OUTPUT, GetOutputFn)(context, index, dims, count, &value);
  return tensor_data(value);
}

static inline OrtStatus *invalid_argument(const char *message) {
  return API(CREATE_STATUS, CreateStatusFn)(ORT_INVALID_ARGUMENT, message);
}

static inline OrtStatus *kernel_attribute(const OrtKernelInfo *info, const char *name, int64_t *value) {
  return API(KERNEL_INFO_GET_ATTRIBUTE_INT64, GetAttributeInt64Fn)(info, name, value);
}

#endif
