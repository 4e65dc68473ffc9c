/* model.h - facemill model files (.fmm): open, validate and query a memory-mapped
 * model, and write new ones.
 *
 * Why it exists: every network facemill runs (MTCNN, the backbone, the heads) lives in
 * one file whose tensors the worker uses in place from a read-only shared mapping, so
 * all workers on a machine share the same physical pages. The file comes from outside
 * the process (converters, the trainer, a copy over the network), so the reader trusts
 * nothing: every count, length, offset and size is checked against the file before
 * use, and a bad file is refused with a message naming the file and the field.
 * The byte layout is specified in models/FORMAT.md; models/tools/fmmodel.py is the
 * Python reader/writer of the same format.
 *
 * Rules this reader applies beyond the tables of FORMAT.md (which says strings are
 * UTF-8): metadata keys are 1..255 bytes of [a-z0-9_.]; tensor names are 1..255 bytes
 * of valid UTF-8 without control characters (U+0000..U+001F, U+007F); STR and
 * STR_ARRAY values are valid UTF-8. With FM_MODEL_VERIFY_DATA the padding before
 * data_offset, between tensors and after the last tensor must be zero.
 *
 * Threads: an open fm_model is immutable; any number of threads may query it at
 * once. A writer is used by one thread at a time.
 */
#ifndef FACEMILL_MODEL_H
#define FACEMILL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FM_MODEL_VERSION 1
#define FM_MODEL_HEADER_SIZE 128
#define FM_MODEL_ALIGN 64            /* data_offset and every tensor offset */
#define FM_MODEL_MAX_META 4096       /* n_meta */
#define FM_MODEL_MAX_TENSORS 65536   /* n_tensors */
#define FM_MODEL_MAX_NAME 255        /* bytes of a key or tensor name */
#define FM_MODEL_MAX_STR (1u << 20)  /* bytes of one STR value or array element */
#define FM_MODEL_MAX_COUNT (1u << 20) /* elements of one array value */
#define FM_MODEL_MAX_NDIM 4

/* Flags of fm_model_open. */
enum {
    /* Also check data_crc32 and the zero padding: reads every page of the file. */
    FM_MODEL_VERIFY_DATA = 1u << 0,
};

/* Tensor element types (the numbers are the file's dtype field). F32 is what
 * inference binds; F16 (IEEE binary16) is the compact form committed to the repository
 * and expanded to F32 before use (facemill model expand); I8 is reserved and refused
 * by the reader. */
typedef enum fm_model_dtype {
    FM_MODEL_DTYPE_F32 = 0,
    FM_MODEL_DTYPE_F16 = 1,
    FM_MODEL_DTYPE_I8 = 2, /* reserved */
} fm_model_dtype;

/* Short name of a dtype ("f32", "f16", "int8"); "unknown" for other values. Static
 * string. */
const char *fm_model_dtype_name(fm_model_dtype dtype);

/* Bytes per element of a dtype the reader accepts (4 for F32, 2 for F16); 0 for any
 * other value. */
unsigned fm_model_dtype_size(fm_model_dtype dtype);

/* Metadata value types (the numbers are the file's type field). */
typedef enum fm_model_meta_type {
    FM_MODEL_META_I64 = 1,
    FM_MODEL_META_F64 = 2,
    FM_MODEL_META_STR = 3,
    FM_MODEL_META_I64_ARRAY = 4,
    FM_MODEL_META_F64_ARRAY = 5,
    FM_MODEL_META_STR_ARRAY = 6,
} fm_model_meta_type;

/* Short name of a metadata type ("i64", "f64", "str", "i64[]", "f64[]", "str[]");
 * "?" for other values. Static string. */
const char *fm_model_meta_type_name(fm_model_meta_type type);

/* One tensor of an open model. Everything here is owned by the model and valid until
 * fm_model_close; data and raw point into the read-only mapping (64-byte aligned;
 * never write through them).
 *
 * data is set for F32 tensors only and is NULL for any other dtype, so code that
 * reads floats can never take the halfs of a compact file for floats; such code
 * should bind tensors with fm_model_tensor_expect, which says what to do instead.
 * raw is set for every dtype: the nbytes bytes as stored (little-endian elements),
 * for inspection and conversion. */
typedef struct fm_model_tensor_info {
    const char *name;  /* NUL-terminated */
    size_t name_len;   /* bytes, without the NUL */
    fm_model_dtype dtype; /* FM_MODEL_DTYPE_F32 or FM_MODEL_DTYPE_F16 */
    unsigned ndim;     /* 1..4 */
    uint64_t dims[FM_MODEL_MAX_NDIM]; /* outermost first; entries past ndim are 1 */
    uint64_t count;    /* number of elements: product of dims */
    uint64_t offset;   /* relative to the data section (as in the file) */
    uint64_t nbytes;   /* count * fm_model_dtype_size(dtype) */
    const float *data; /* F32: count floats, row-major; NULL for other dtypes */
    const void *raw;   /* nbytes bytes as stored, any dtype */
} fm_model_tensor_info;

/* ---------------------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------------------- */

typedef struct fm_model fm_model;

/* Opens the model file at path: maps it read-only and shared (PROT_READ, MAP_SHARED),
 * validates the header, metadata and tensor directory and the index CRC; with
 * FM_MODEL_VERIFY_DATA in flags it also checks the data CRC and the zero padding.
 * On success stores a new model in *out (caller owns it: fm_model_close) and returns
 * FM_OK. On failure *out is NULL, nothing is leaked, and the status is
 *   FM_ERR_IO       the file cannot be opened, stat'ed or mapped, or is not a
 *                   regular file (errno text in the message);
 *   FM_ERR_VERSION  the version field is not 1;
 *   FM_ERR_FORMAT   anything else is wrong (message names the file and the field,
 *                   e.g. "m.fmm: tensor 'conv1.w': offset 128 + 4096 bytes exceeds
 *                   data size 2048");
 *   FM_ERR_NOMEM    an allocation failed;
 *   FM_ERR_INVALID  out or path is NULL, or flags has unknown bits.
 * The file must not be truncated or rewritten while it is open (replace it with
 * rename, as fm_model_writer_save does): the mapping would raise SIGBUS. */
fm_status fm_model_open(fm_model **out, const char *path, unsigned flags, fm_error *err);

/* Unmaps and frees *m and sets *m to NULL. Accepts m == NULL and *m == NULL. Every
 * pointer obtained from the model becomes invalid. */
void fm_model_close(fm_model **m);

/* The path given to fm_model_open (owned by the model). */
const char *fm_model_path(const fm_model *m);

/* Size of the file in bytes. */
uint64_t fm_model_file_size(const fm_model *m);

/* Number of tensors, and the tensor at index i in directory order (NULL when
 * i >= count). The info is owned by the model. */
size_t fm_model_tensor_count(const fm_model *m);
const fm_model_tensor_info *fm_model_tensor_at(const fm_model *m, size_t i);

/* The tensor named name (NUL-terminated), or NULL when there is none. Owned by the
 * model. O(1) expected (hash lookup). */
const fm_model_tensor_info *fm_model_tensor(const fm_model *m, const char *name);

/* The checked lookup model builders use: the tensor name must exist (else
 * FM_ERR_NOT_FOUND), be f32 and have exactly ndim dimensions with dims[i] matching
 * wherever dims[i] != 0 (0 = any; dims may be NULL for all any), else FM_ERR_FORMAT
 * with a message like "m.fmm: tensor 'conv1.w': f32 shape [64, 3, 3, 3], expected
 * f32 [64, 3, 5, *]". An f16 tensor (a compact file) gives FM_ERR_FORMAT with
 * "m.f16.fmm: tensor 'conv1.w' is f16: expand the file first (facemill model expand
 * m.f16.fmm OUT.fmm)". On success stores the data pointer in *data (when data is not
 * NULL; owned by the model). ndim outside 1..4 gives FM_ERR_INVALID. */
fm_status fm_model_tensor_expect(const fm_model *m, const char *name, unsigned ndim,
                                 const uint64_t *dims, const float **data,
                                 fm_error *err);

/* Number of metadata entries, and the key and type of entry i in file order.
 * fm_model_meta_at returns FM_ERR_INVALID when i >= count. key (NUL-terminated) is
 * owned by the model; key and type may be NULL. */
size_t fm_model_meta_count(const fm_model *m);
fm_status fm_model_meta_at(const fm_model *m, size_t i, const char **key,
                           fm_model_meta_type *type);

/* Typed metadata getters by key. Each returns FM_OK and fills its outputs, or
 *   FM_ERR_NOT_FOUND  no entry has this key;
 *   FM_ERR_INVALID    the entry has another type (the message names both types),
 * leaving the outputs untouched. err may be NULL. Every pointer returned is owned by
 * the model and valid until fm_model_close. Strings are NUL-terminated copies; the
 * length (which may be NULL) counts bytes without the NUL (a string may contain an
 * encoded U+0000, so use the length when that matters). Arrays are aligned copies;
 * an empty array gives count 0 and a NULL pointer. */
fm_status fm_model_meta_i64(const fm_model *m, const char *key, int64_t *value,
                            fm_error *err);
fm_status fm_model_meta_f64(const fm_model *m, const char *key, double *value,
                            fm_error *err);
fm_status fm_model_meta_str(const fm_model *m, const char *key, const char **value,
                            size_t *len, fm_error *err);
fm_status fm_model_meta_i64_array(const fm_model *m, const char *key,
                                  const int64_t **values, size_t *count, fm_error *err);
fm_status fm_model_meta_f64_array(const fm_model *m, const char *key,
                                  const double **values, size_t *count, fm_error *err);
/* values receives an array of count NUL-terminated strings (may be NULL when only the
 * count is wanted). */
fm_status fm_model_meta_str_array(const fm_model *m, const char *key,
                                  const char *const **values, size_t *count,
                                  fm_error *err);
/* Element index of a STR_ARRAY entry; index >= count gives FM_ERR_INVALID. */
fm_status fm_model_meta_str_array_at(const fm_model *m, const char *key, size_t index,
                                     const char **value, size_t *len, fm_error *err);

/* ---------------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------------- */

typedef struct fm_model_writer fm_model_writer;

/* A new, empty writer, or NULL when out of memory. Caller owns it:
 * fm_model_writer_destroy. */
fm_model_writer *fm_model_writer_new(void);

/* Frees *w and everything it holds and sets *w to NULL. Accepts w == NULL and
 * *w == NULL. */
void fm_model_writer_destroy(fm_model_writer **w);

/* Add one metadata entry; entries are written in the order added. The writer copies
 * key and value (the caller keeps ownership of its arguments). Each returns
 *   FM_ERR_INVALID  key is not 1..255 bytes of [a-z0-9_.], the key was already
 *                   added, a string is not valid UTF-8, or a pointer is NULL
 *                   (values may be NULL only when count is 0);
 *   FM_ERR_LIMIT    the 4097th entry, a string over 1 MiB or an array over
 *                   1,048,576 elements;
 *   FM_ERR_NOMEM    an allocation failed.
 * On error the writer is unchanged. */
fm_status fm_model_writer_add_i64(fm_model_writer *w, const char *key, int64_t value,
                                  fm_error *err);
fm_status fm_model_writer_add_f64(fm_model_writer *w, const char *key, double value,
                                  fm_error *err);
fm_status fm_model_writer_add_str(fm_model_writer *w, const char *key,
                                  const char *value, fm_error *err);
fm_status fm_model_writer_add_i64_array(fm_model_writer *w, const char *key,
                                        const int64_t *values, size_t count,
                                        fm_error *err);
fm_status fm_model_writer_add_f64_array(fm_model_writer *w, const char *key,
                                        const double *values, size_t count,
                                        fm_error *err);
fm_status fm_model_writer_add_str_array(fm_model_writer *w, const char *key,
                                        const char *const *values, size_t count,
                                        fm_error *err);

/* Adds a copy of metadata entry i (in file order, < fm_model_meta_count) of the open
 * model m: same key, type and value bytes, so copying every entry of a file and its
 * tensors in order writes the same file again. Errors as above (a key already added
 * gives FM_ERR_INVALID); FM_ERR_INVALID also when i is out of range. */
fm_status fm_model_writer_add_meta_from(fm_model_writer *w, const fm_model *m, size_t i,
                                        fm_error *err);

/* Adds an f32 tensor of ndim (1..4) dimensions dims (each >= 1), row-major, with
 * product(dims) floats at data. The writer COPIES name and data: the caller may free
 * or reuse them as soon as this returns. Tensors are laid out in the order added,
 * each at the next multiple of 64 bytes. Returns FM_ERR_INVALID for a bad name
 * (1..255 bytes of UTF-8 without control characters), a duplicate name, a bad ndim
 * or dim or NULL data; FM_ERR_LIMIT for the 65537th tensor or a size that does not
 * fit in memory; FM_ERR_NOMEM. On error the writer is unchanged. */
fm_status fm_model_writer_add_tensor(fm_model_writer *w, const char *name, unsigned ndim,
                                     const uint64_t *dims, const float *data,
                                     fm_error *err);

/* Adds an f16 tensor: like fm_model_writer_add_tensor, with product(dims) IEEE
 * binary16 values given as their bit patterns at bits (written as they are, NaN
 * payloads included; fm_model_f32_to_f16 makes them from floats). Same errors. */
fm_status fm_model_writer_add_tensor_f16(fm_model_writer *w, const char *name,
                                         unsigned ndim, const uint64_t *dims,
                                         const uint16_t *bits, fm_error *err);

/* Writes the model to path atomically: the whole file goes to PATH.tmp.PID in the
 * same directory, is fsync'ed, renamed over path, and the directory is fsync'ed. A
 * process that has the old file open keeps its pages; the next fm_model_open sees
 * the new file. On failure the temporary file is removed, path is untouched and the
 * status is FM_ERR_IO (errno text in the message), FM_ERR_NOMEM or FM_ERR_INVALID
 * (NULL argument). One exception: when only the final fsync of the directory fails,
 * the new file is already in place and FM_ERR_IO says so. The writer is not changed
 * and save may be called again. */
fm_status fm_model_writer_save(const fm_model_writer *w, const char *path, fm_error *err);

/* ---------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) exactly like zlib's crc32:
 * start with crc = 0 and feed the running value back to continue over more bytes. */
uint32_t fm_model_crc32(uint32_t crc, const void *data, size_t n);

/* IEEE binary16 <-> binary32, as bit patterns (worker/model_f16.c).
 * fm_model_f32_to_f16 rounds to nearest, ties to even, with gradual underflow
 * (subnormal halfs) and overflow to infinity (every |x| >= 65520, the midpoint
 * between the largest half 65504 and 2^16); infinities keep their sign; a NaN stays a
 * NaN with its sign and the top 10 bits of its payload (a payload that lives only
 * in the dropped low bits becomes 1, so it stays a NaN). fm_model_f16_to_f32 is
 * exact for every one of the 65,536 halfs, NaN payloads included (shifted up, never
 * quieted), so f16 -> f32 -> f16 gives back the same bits. Same results as
 * models/tools/fmmodel.py's f32_to_f16 / f16_to_f32. */
uint16_t fm_model_f32_to_f16(float x);
float fm_model_f16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif
#endif
