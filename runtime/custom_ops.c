/* Registers our ONNX Runtime custom operators in the "promptgen" domain: AttentionInt8 and
 * AttentionInt8Mixed (attention_int8.c), MatMulInt8 and MatMulInt8Add (matmul_int8.c), and holds
 * the callbacks they share (ort_custom_op.h). runtime/custom_ops.py loads this library into a session's options. */
#include <stdlib.h>

#include "ort_custom_op.h"

void *const *ort_api;

static const CustomOp *custom(const OrtCustomOp *op) { return (const CustomOp *)op; }

const char *custom_op_name(const OrtCustomOp *op) { return custom(op)->name; }
const char *custom_op_provider(const OrtCustomOp *op) {
  (void)op;
  return "CPUExecutionProvider";
}
int custom_op_input_type(const OrtCustomOp *op, size_t i) { return custom(op)->input_types[i]; }
size_t custom_op_input_count(const OrtCustomOp *op) { return custom(op)->input_count; }
int custom_op_output_type(const OrtCustomOp *op, size_t i) { return custom(op)->output_types[i]; }
size_t custom_op_output_count(const OrtCustomOp *op) { return custom(op)->output_count; }
int custom_op_zero(const OrtCustomOp *op, size_t i) {
  (void)op;
  (void)i;
  return 0; /* INPUT_OUTPUT_REQUIRED; OrtMemTypeDefault */
}
int custom_op_one(const OrtCustomOp *op) {
  (void)op;
  return 1;
}
int custom_op_last_opset(const OrtCustomOp *op) {
  (void)op;
  return 2147483647;
}

/* ORT calls this when a session's options load the library (register_custom_ops_library). */
OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
  ort_api = base->GetApi(API_VERSION);
  if (ort_api == NULL) return NULL; /* an ORT older than 1.17: nothing registered, the graph fails to load */
  attention_int8_setup();
  matmul_int8_setup();
  const CustomOp *ops[] = {&ATTENTION_INT8, &ATTENTION_INT8_MIXED, &MATMUL_INT8, &MATMUL_INT8_ADD};
  OrtCustomOpDomain *domain;
  OrtStatus *status = API(CREATE_CUSTOM_OP_DOMAIN, OrtStatus *(*)(const char *, OrtCustomOpDomain **))("promptgen", &domain);
  for (size_t i = 0; status == NULL && i < sizeof(ops) / sizeof(ops[0]); i++)
    status = API(CUSTOM_OP_DOMAIN_ADD, OrtStatus *(*)(OrtCustomOpDomain *, const OrtCustomOp *))(domain, &ops[i]->ort);
  if (status == NULL)
    status = API(ADD_CUSTOM_OP_DOMAIN, OrtStatus *(*)(OrtSessionOptions *, OrtCustomOpDomain *))(options, domain);
  return status;
}
