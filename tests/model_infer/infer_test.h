/* tests/model_infer/infer_test.h — shared helpers of the test_model_infer binary. */
#ifndef RLHF_INFER_TEST_H
#define RLHF_INFER_TEST_H
#include "model/model.h"

/* dim 32, 2 layers, 4 heads (head_dim 8), ffn 48, vocab 300, max_seq_len 40. */
model_config infer_test_config(int tie, int kv_heads);
/* Random weights scaled so logits are O(1) and attention is peaked; norms random around 1. */
model *infer_test_model(const model_config *c, uint64_t seed);

void infer_register_checkpoint(void);
void infer_register_sampler(void);
void infer_register_cli(void);
void infer_register_stops(void);
void infer_register_layer_opts(void); /* test_layer_opts.c */
/* test_kernels.c: the vector-table tests (vector_table) or the table-choice test, into suite s */
#include <CUnit/CUnit.h>
void infer_register_kernel_tests(CU_pSuite s, int vector_table);
#endif
