/* fm_test_model.h - test fixtures that speak facemill's own formats (the fm_testlib
 * library, tests/lib): the little-endian fields of a model file's bytes and its index
 * CRC, for tests that corrupt files on purpose; tensors of random values; and small
 * "heads" model files with random weights, for the tests of the heads, the pipeline
 * and the labelling commands, so none of them depends on the trained file's numbers.
 * The random ones draw from the generator the caller passes (fm_test.h), so a test
 * gets the same numbers every run. */
#ifndef FM_TEST_MODEL_H
#define FM_TEST_MODEL_H

#include "fm_test.h"

#include "facemill/model.h"
#include "facemill/nn.h"

#include <stddef.h>
#include <stdint.h>

/* ---- model file bytes (models/FORMAT.md: little-endian) ---------------------------- */

uint32_t fm_test_get32(const uint8_t *p);
uint64_t fm_test_get64(const uint8_t *p);
void fm_test_put32(uint8_t *p, uint32_t v);
void fm_test_put64(uint8_t *p, uint64_t v);

/* Recomputes index_crc32 of the model file b (len bytes) when its header's section
 * fields are in bounds, so a patched field reaches its own check instead of failing
 * the CRC; leaves b as it is otherwise. */
void fm_test_fix_index_crc(uint8_t *b, size_t len);

/* ---- random tensors ------------------------------------------------------------------ */

/* An n x c x h x w tensor whose data is malloc'd to exactly its size (so ASan sees any
 * overrun), filled with fm_test_rng_signed values from r. Out of memory ends the test
 * (fm_test_alloc). Caller frees data (fm_test_tensor_free). */
fm_tensor fm_test_tensor(fm_test_rng *r, int n, int c, int h, int w);

/* Frees t's data and clears the pointer. */
void fm_test_tensor_free(fm_tensor *t);

/* ---- heads files --------------------------------------------------------------------- */

/* Adds the tensor name of d0 (d1 = 0) or d0 x d1 values offset + scale * u, u uniform
 * in [-1, 1) (fm_test_rng_range) from r, to w. 0, or -1 when it could not. */
int fm_test_heads_tensor(fm_test_rng *r, fm_model_writer *w, const char *name, uint64_t d0,
                         uint64_t d1, float scale, float offset);

/* Writes a heads file at path for dim-long features with the given hidden widths
 * (n_hidden of them), feature "pooled"/"embedding", flip 0/1, backbone identity
 * backbone; weights from r. 0 on success, -1 otherwise. */
int fm_test_write_heads(fm_test_rng *r, const char *path, const char *backbone,
                        const char *feature, int flip, int dim, int n_hidden,
                        const int *hidden);

#endif
