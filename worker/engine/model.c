/* model.c - the facemill model file (.fmm): a validating reader over a read-only
 * shared mapping, and an atomic writer.
 *
 * Why it exists: model files arrive from converters, the trainer and other machines;
 * a worker maps one and uses its tensors in place, so nothing in the file may be
 * trusted before it is checked. The reader walks the header, metadata and directory
 * with a bounds-checked cursor, checks every count, length, offset and size with
 * overflow-safe arithmetic (models/FORMAT.md), and only then hands out pointers. The
 * writer produces exactly the layout the reader (and models/tools/fmmodel.py)
 * expects and publishes it with write-to-temp + fsync + rename, since rewriting a
 * mapped file in place would crash its readers with SIGBUS.
 *
 * All multi-byte fields are read and written byte by byte (little-endian), so the
 * cursor never makes an unaligned access. Tensor data is handed out as pointers into
 * the mapping, which needs a little-endian host.
 *
 * Two element types are read: f32, which inference binds in place, and f16, the
 * compact form kept in the repository. An f16 tensor gets no float pointer at all
 * (fm_model_tensor_info.data is NULL) and fm_model_tensor_expect refuses it, so
 * halfs can never be taken for floats; commands that convert read its raw bytes.
 */
#include "facemill/model.h"
#include "facemill/file.h"
#include "facemill/nn.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model.c hands out tensor data in place and needs a little-endian host"
#endif

_Static_assert(sizeof(float) == 4, "tensors are 4-byte IEEE-754 floats");
_Static_assert(sizeof(double) == 8, "F64 metadata is an 8-byte IEEE-754 double");

static const uint8_t MODEL_MAGIC[8] = {'F', 'M', 'M', 'O', 'D', 'E', 'L', 0};

/* Header field offsets (FORMAT.md, "Header"). */
enum {
    H_MAGIC = 0,
    H_VERSION = 8,
    H_HEADER_SIZE = 12,
    H_N_META = 16,
    H_N_TENSORS = 20,
    H_META_OFFSET = 24,
    H_META_SIZE = 32,
    H_DIR_OFFSET = 40,
    H_DIR_SIZE = 48,
    H_DATA_OFFSET = 56,
    H_DATA_SIZE = 64,
    H_INDEX_CRC = 72,
    H_DATA_CRC = 76,
    H_RESERVED = 80,
    H_RESERVED_SIZE = 48,
};

/* Smallest possible entries, used to bound counts by section sizes before any
 * allocation: key_len + 1-byte key + type + 4-byte value (empty STR or array), and
 * name_len + 1-byte name + dtype + ndim + one dim + offset + nbytes. */
enum { MIN_META_ENTRY = 4 + 1 + 4 + 4, MIN_DIR_ENTRY = 4 + 1 + 4 + 4 + 8 + 8 + 8 };

static const uint8_t zeros64[FM_MODEL_ALIGN];

/* ---------------------------------------------------------------------------------
 * Little-endian fields, CRC-32, UTF-8 and name rules
 * ------------------------------------------------------------------------------- */

static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(const uint8_t *p)
{
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static void wr_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void wr_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] =
                (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

/* Slicing-by-8: verifying a large model reads every byte, so the CRC must keep up
 * with the page cache. */
uint32_t fm_model_crc32(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (n >= 8) {
        uint32_t a = crc ^ rd_u32(p), b = rd_u32(p + 4);
        crc = crc_table[7][a & 0xff] ^ crc_table[6][(a >> 8) & 0xff] ^
              crc_table[5][(a >> 16) & 0xff] ^ crc_table[4][a >> 24] ^
              crc_table[3][b & 0xff] ^ crc_table[2][(b >> 8) & 0xff] ^
              crc_table[1][(b >> 16) & 0xff] ^ crc_table[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* 1 when s[0..n) is valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF);
 * with no_controls, U+0000..U+001F and U+007F are refused too. */
static int utf8_valid(const uint8_t *s, size_t n, int no_controls)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            if (no_controls && (c < 0x20 || c == 0x7f))
                return 0;
            i++;
            continue;
        }
        size_t len = 0;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (len > n - i)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

/* A metadata key: 1..255 bytes of [a-z0-9_.]. */
static int key_valid(const uint8_t *s, size_t n)
{
    if (n < 1 || n > FM_MODEL_MAX_NAME)
        return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* A tensor name: 1..255 bytes of UTF-8 without control characters. */
static int name_valid(const uint8_t *s, size_t n)
{
    return n >= 1 && n <= FM_MODEL_MAX_NAME && utf8_valid(s, n, 1);
}

const char *fm_model_dtype_name(fm_model_dtype dtype)
{
    switch (dtype) {
    case FM_MODEL_DTYPE_F32: return "f32";
    case FM_MODEL_DTYPE_F16: return "f16";
    case FM_MODEL_DTYPE_I8: return "int8";
    }
    return "unknown";
}

unsigned fm_model_dtype_size(fm_model_dtype dtype)
{
    switch (dtype) {
    case FM_MODEL_DTYPE_F32: return 4;
    case FM_MODEL_DTYPE_F16: return 2;
    case FM_MODEL_DTYPE_I8: return 0; /* reserved: not readable */
    }
    return 0;
}

/* dtype_name for a raw field value, which may be outside the enum. */
static const char *dtype_name(uint32_t dtype)
{
    return dtype <= FM_MODEL_DTYPE_I8 ? fm_model_dtype_name((fm_model_dtype)dtype)
                                      : "unknown";
}

const char *fm_model_meta_type_name(fm_model_meta_type type)
{
    switch (type) {
    case FM_MODEL_META_I64: return "i64";
    case FM_MODEL_META_F64: return "f64";
    case FM_MODEL_META_STR: return "str";
    case FM_MODEL_META_I64_ARRAY: return "i64[]";
    case FM_MODEL_META_F64_ARRAY: return "f64[]";
    case FM_MODEL_META_STR_ARRAY: return "str[]";
    }
    return "?";
}

/* ---------------------------------------------------------------------------------
 * Name index: open addressing over entry indices (slot = index + 1, 0 = empty).
 * Shared by the reader (lookups, duplicate detection) and the writer (duplicates).
 * ------------------------------------------------------------------------------- */

typedef void (*name_of_fn)(const void *ctx, size_t i, const char **s, size_t *len);

typedef struct name_index {
    uint32_t *slots;
    size_t cap; /* power of two, 0 when unallocated */
} name_index;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* The slot holding name s, or the empty slot where it would go. ix->cap > 0 and the
 * table is never full. */
static uint32_t *index_slot(const name_index *ix, const char *s, size_t len,
                            name_of_fn name_of, const void *ctx)
{
    size_t mask = ix->cap - 1;
    for (size_t h = (size_t)hash_bytes(s, len) & mask;; h = (h + 1) & mask) {
        uint32_t *slot = &ix->slots[h];
        if (*slot == 0)
            return slot;
        const char *t;
        size_t tlen;
        name_of(ctx, *slot - 1, &t, &tlen);
        if (tlen == len && memcmp(s, t, len) == 0)
            return slot;
    }
}

/* Makes room for n entries (load <= 1/2), rehashing the first `have` entries. */
static int index_reserve(name_index *ix, size_t n, size_t have, name_of_fn name_of,
                         const void *ctx)
{
    if (ix->cap >= 2 * n && ix->cap)
        return 1;
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return 0;
    free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
    for (size_t i = 0; i < have; i++) {
        const char *s;
        size_t len = 0;
        name_of(ctx, i, &s, &len);
        *index_slot(ix, s, len, name_of, ctx) = (uint32_t)(i + 1);
    }
    return 1;
}

/* ---------------------------------------------------------------------------------
 * Reader
 * ------------------------------------------------------------------------------- */

typedef struct meta_entry {
    const char *key; /* NUL-terminated, in the model's string arena */
    size_t key_len;
    fm_model_meta_type type;
    int64_t i64;
    double f64;
    const char *str; /* STR */
    size_t str_len;
    size_t count;      /* arrays */
    int64_t *i64s;     /* I64_ARRAY, malloc'ed */
    double *f64s;      /* F64_ARRAY, malloc'ed */
    const char **strs; /* STR_ARRAY, malloc'ed, with str_lens in the same block */
    size_t *str_lens;
    const uint8_t *bytes; /* the whole entry in the mapping (key_len .. value) */
    size_t nbytes;
} meta_entry;

struct fm_model {
    char *path;
    const uint8_t *map;
    size_t size;
    uint32_t n_meta, n_tensors;
    uint64_t meta_offset, meta_size, dir_offset, dir_size, data_offset, data_size;
    uint32_t index_crc, data_crc;
    char *strings; /* arena of NUL-terminated keys, names and string values */
    size_t strings_used, strings_cap;
    meta_entry *meta;
    name_index meta_index;
    fm_model_tensor_info *tensors;
    name_index tensor_index;
};

/* A span of the data section, for the overlap and padding checks. */
typedef struct span {
    uint64_t begin, end;
    uint32_t tensor;
} span;

/* Reports an error prefixed with the file's path. */
static fm_status model_err(fm_error *err, fm_status code, const char *path,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static fm_status model_err(fm_error *err, fm_status code, const char *path,
                           const char *fmt, ...)
{
    if (!err)
        return code;
    char msg[FM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fm_error_set(err, code, "%s: %s", path, msg);
}

static void meta_name_of(const void *ctx, size_t i, const char **s, size_t *len)
{
    const meta_entry *e = &((const fm_model *)ctx)->meta[i];
    *s = e->key;
    *len = e->key_len;
}

static void tensor_name_of(const void *ctx, size_t i, const char **s, size_t *len)
{
    const fm_model_tensor_info *t = &((const fm_model *)ctx)->tensors[i];
    *s = t->name;
    *len = t->name_len;
}

/* Copies n bytes into the string arena with a NUL. The arena is sized so this cannot
 * fail for a file that passed the section checks (every string is preceded by a
 * 4-byte length in the file, which pays for its NUL); NULL means a bug. */
static const char *arena_copy(fm_model *m, const uint8_t *p, size_t n)
{
    if (n >= m->strings_cap - m->strings_used)
        return NULL;
    char *s = m->strings + m->strings_used;
    memcpy(s, p, n);
    s[n] = '\0';
    m->strings_used += n + 1;
    return s;
}

/* Bounds-checked reader over one section [pos, end) of the mapping. `where` names
 * the section and entry for messages ("metadata entry 3", "tensor 'conv1.w'"). */
typedef struct cursor {
    const fm_model *m;
    uint64_t pos, end;
    char where[300];
    fm_error *err;
} cursor;

static fm_status cur_take(cursor *c, uint64_t n, const char *field, const uint8_t **p)
{
    if (n > c->end - c->pos)
        return model_err(c->err, FM_ERR_FORMAT, c->m->path,
                         "%s: %s needs %" PRIu64 " bytes at offset %" PRIu64
                         " but the section ends at %" PRIu64,
                         c->where, field, n, c->pos, c->end);
    *p = c->m->map + c->pos;
    c->pos += n;
    return FM_OK;
}

static fm_status cur_u32(cursor *c, const char *field, uint32_t *v)
{
    const uint8_t *p = NULL;
    fm_status st = cur_take(c, 4, field, &p);
    if (st == FM_OK)
        *v = rd_u32(p);
    return st;
}

static fm_status cur_u64(cursor *c, const char *field, uint64_t *v)
{
    const uint8_t *p = NULL;
    fm_status st = cur_take(c, 8, field, &p);
    if (st == FM_OK)
        *v = rd_u64(p);
    return st;
}

/* Reads a (u32 len, bytes) string value: len <= 1 MiB, valid UTF-8. */
static fm_status cur_string(cursor *c, const char *field, const char **s, size_t *len)
{
    uint32_t n;
    const uint8_t *p = NULL;
    fm_status st = cur_u32(c, field, &n);
    if (st != FM_OK)
        return st;
    if (n > FM_MODEL_MAX_STR)
        return model_err(c->err, FM_ERR_FORMAT, c->m->path,
                         "%s: %s length %" PRIu32 " exceeds %u", c->where, field, n,
                         FM_MODEL_MAX_STR);
    if ((st = cur_take(c, n, field, &p)) != FM_OK)
        return st;
    if (!utf8_valid(p, n, 0))
        return model_err(c->err, FM_ERR_FORMAT, c->m->path, "%s: %s is not valid UTF-8",
                         c->where, field);
    if (!(*s = arena_copy((fm_model *)c->m, p, n)))
        return model_err(c->err, FM_ERR_INTERNAL, c->m->path, "string arena overflow");
    *len = n;
    return FM_OK;
}

/* Reads an array count (<= 1,048,576) and checks that count elements of at least
 * elem_min bytes each fit in what is left of the section. */
static fm_status cur_count(cursor *c, const char *field, uint64_t elem_min, uint32_t *n)
{
    fm_status st = cur_u32(c, field, n);
    if (st != FM_OK)
        return st;
    if (*n > FM_MODEL_MAX_COUNT)
        return model_err(c->err, FM_ERR_FORMAT, c->m->path,
                         "%s: %s %" PRIu32 " exceeds %u", c->where, field, *n,
                         FM_MODEL_MAX_COUNT);
    if (*n * elem_min > c->end - c->pos)
        return model_err(c->err, FM_ERR_FORMAT, c->m->path,
                         "%s: %s %" PRIu32 " needs at least %" PRIu64
                         " bytes at offset %" PRIu64 " but the section ends at %" PRIu64,
                         c->where, field, *n, *n * elem_min, c->pos, c->end);
    return FM_OK;
}

static fm_status check_header(fm_model *m, fm_error *err)
{
    const uint8_t *h = m->map;
    const char *path = m->path;
    uint64_t size = m->size;

    if (memcmp(h + H_MAGIC, MODEL_MAGIC, sizeof MODEL_MAGIC) != 0)
        return model_err(err, FM_ERR_FORMAT, path, "bad magic: not a facemill model file");
    uint32_t version = rd_u32(h + H_VERSION);
    if (version != FM_MODEL_VERSION)
        return model_err(err, FM_ERR_VERSION, path,
                         "version %" PRIu32 " is not supported (this reader reads %d)",
                         version, FM_MODEL_VERSION);
    uint32_t header_size = rd_u32(h + H_HEADER_SIZE);
    if (header_size != FM_MODEL_HEADER_SIZE)
        return model_err(err, FM_ERR_FORMAT, path, "header_size %" PRIu32 " is not %d",
                         header_size, FM_MODEL_HEADER_SIZE);
    for (int i = 0; i < H_RESERVED_SIZE; i++)
        if (h[H_RESERVED + i])
            return model_err(err, FM_ERR_FORMAT, path,
                             "reserved header byte %d is 0x%02x, not zero", H_RESERVED + i,
                             h[H_RESERVED + i]);

    m->n_meta = rd_u32(h + H_N_META);
    m->n_tensors = rd_u32(h + H_N_TENSORS);
    m->meta_offset = rd_u64(h + H_META_OFFSET);
    m->meta_size = rd_u64(h + H_META_SIZE);
    m->dir_offset = rd_u64(h + H_DIR_OFFSET);
    m->dir_size = rd_u64(h + H_DIR_SIZE);
    m->data_offset = rd_u64(h + H_DATA_OFFSET);
    m->data_size = rd_u64(h + H_DATA_SIZE);
    m->index_crc = rd_u32(h + H_INDEX_CRC);
    m->data_crc = rd_u32(h + H_DATA_CRC);

    if (m->n_meta > FM_MODEL_MAX_META)
        return model_err(err, FM_ERR_FORMAT, path, "n_meta %" PRIu32 " exceeds %d",
                         m->n_meta, FM_MODEL_MAX_META);
    if (m->n_tensors > FM_MODEL_MAX_TENSORS)
        return model_err(err, FM_ERR_FORMAT, path, "n_tensors %" PRIu32 " exceeds %d",
                         m->n_tensors, FM_MODEL_MAX_TENSORS);
    if (m->meta_offset != FM_MODEL_HEADER_SIZE)
        return model_err(err, FM_ERR_FORMAT, path, "meta_offset %" PRIu64 " is not %d",
                         m->meta_offset, FM_MODEL_HEADER_SIZE);
    /* size >= 128 here, so the subtractions below do not wrap. */
    if (m->meta_size > size - m->meta_offset)
        return model_err(err, FM_ERR_FORMAT, path,
                         "meta_offset %" PRIu64 " + meta_size %" PRIu64
                         " exceeds file size %" PRIu64,
                         m->meta_offset, m->meta_size, size);
    if (m->dir_offset != m->meta_offset + m->meta_size)
        return model_err(err, FM_ERR_FORMAT, path,
                         "dir_offset %" PRIu64 " is not meta_offset + meta_size = %" PRIu64,
                         m->dir_offset, m->meta_offset + m->meta_size);
    if (m->dir_size > size - m->dir_offset)
        return model_err(err, FM_ERR_FORMAT, path,
                         "dir_offset %" PRIu64 " + dir_size %" PRIu64
                         " exceeds file size %" PRIu64,
                         m->dir_offset, m->dir_size, size);
    uint64_t dir_end = m->dir_offset + m->dir_size;
    if (m->data_offset % FM_MODEL_ALIGN)
        return model_err(err, FM_ERR_FORMAT, path,
                         "data_offset %" PRIu64 " is not a multiple of %d", m->data_offset,
                         FM_MODEL_ALIGN);
    if (m->data_offset < dir_end)
        return model_err(err, FM_ERR_FORMAT, path,
                         "data_offset %" PRIu64 " is before the end of the directory %" PRIu64,
                         m->data_offset, dir_end);
    if (m->data_offset > size || m->data_size != size - m->data_offset)
        return model_err(err, FM_ERR_FORMAT, path,
                         "data_offset %" PRIu64 " + data_size %" PRIu64
                         " is not the file size %" PRIu64,
                         m->data_offset, m->data_size, size);
    if ((uint64_t)m->n_meta * MIN_META_ENTRY > m->meta_size)
        return model_err(err, FM_ERR_FORMAT, path,
                         "n_meta %" PRIu32 " entries cannot fit in meta_size %" PRIu64,
                         m->n_meta, m->meta_size);
    if ((uint64_t)m->n_tensors * MIN_DIR_ENTRY > m->dir_size)
        return model_err(err, FM_ERR_FORMAT, path,
                         "n_tensors %" PRIu32 " entries cannot fit in dir_size %" PRIu64,
                         m->n_tensors, m->dir_size);

    uint32_t crc = fm_model_crc32(0, h, H_INDEX_CRC);
    crc = fm_model_crc32(crc, zeros64, 4);
    crc = fm_model_crc32(crc, h + H_DATA_CRC, (size_t)(dir_end - H_DATA_CRC));
    if (crc != m->index_crc)
        return model_err(err, FM_ERR_FORMAT, path,
                         "index_crc32 0x%08" PRIx32 " does not match the computed 0x%08" PRIx32
                         " (header, metadata or directory is corrupt)",
                         m->index_crc, crc);
    return FM_OK;
}

static fm_status parse_meta_value(cursor *c, meta_entry *e)
{
    fm_status st;
    const uint8_t *p = NULL;
    uint32_t n;
    switch (e->type) {
    case FM_MODEL_META_I64:
        if ((st = cur_take(c, 8, "value", &p)) == FM_OK)
            e->i64 = (int64_t)rd_u64(p);
        return st;
    case FM_MODEL_META_F64:
        if ((st = cur_take(c, 8, "value", &p)) == FM_OK) {
            uint64_t bits = rd_u64(p);
            memcpy(&e->f64, &bits, sizeof e->f64);
        }
        return st;
    case FM_MODEL_META_STR:
        return cur_string(c, "value", &e->str, &e->str_len);
    case FM_MODEL_META_I64_ARRAY:
    case FM_MODEL_META_F64_ARRAY:
        if ((st = cur_count(c, "count", 8, &n)) != FM_OK)
            return st;
        if ((st = cur_take(c, (uint64_t)n * 8, "values", &p)) != FM_OK)
            return st;
        e->count = n;
        if (n == 0)
            return FM_OK;
        if (e->type == FM_MODEL_META_I64_ARRAY) {
            if (!(e->i64s = malloc((size_t)n * sizeof *e->i64s)))
                return model_err(c->err, FM_ERR_NOMEM, c->m->path, "out of memory");
            for (uint32_t i = 0; i < n; i++)
                e->i64s[i] = (int64_t)rd_u64(p + 8 * (size_t)i);
        } else {
            if (!(e->f64s = malloc((size_t)n * sizeof *e->f64s)))
                return model_err(c->err, FM_ERR_NOMEM, c->m->path, "out of memory");
            for (uint32_t i = 0; i < n; i++) {
                uint64_t bits = rd_u64(p + 8 * (size_t)i);
                memcpy(&e->f64s[i], &bits, sizeof bits);
            }
        }
        return FM_OK;
    case FM_MODEL_META_STR_ARRAY:
        if ((st = cur_count(c, "count", 4, &n)) != FM_OK)
            return st;
        e->count = n;
        if (n == 0)
            return FM_OK;
        /* One block: n pointers, then n lengths. */
        e->strs = malloc((size_t)n * (sizeof *e->strs + sizeof *e->str_lens));
        if (!e->strs)
            return model_err(c->err, FM_ERR_NOMEM, c->m->path, "out of memory");
        e->str_lens = (size_t *)(void *)(e->strs + n);
        for (uint32_t i = 0; i < n; i++) {
            char field[32];
            snprintf(field, sizeof field, "element %" PRIu32, i);
            if ((st = cur_string(c, field, &e->strs[i], &e->str_lens[i])) != FM_OK)
                return st;
        }
        return FM_OK;
    }
    return model_err(c->err, FM_ERR_FORMAT, c->m->path, "%s: type %u is not 1..6",
                     c->where, (unsigned)e->type);
}

static fm_status parse_meta(fm_model *m, fm_error *err)
{
    fm_status st;
    cursor c = {.m = m, .pos = m->meta_offset, .end = m->dir_offset, .err = err};
    if (m->n_meta) {
        if (!(m->meta = calloc(m->n_meta, sizeof *m->meta)) ||
            !index_reserve(&m->meta_index, m->n_meta, 0, meta_name_of, m))
            return model_err(err, FM_ERR_NOMEM, m->path, "out of memory");
    }
    for (uint32_t i = 0; i < m->n_meta; i++) {
        meta_entry *e = &m->meta[i];
        uint32_t key_len, type;
        const uint8_t *p = NULL;
        const uint64_t entry_pos = c.pos;
        snprintf(c.where, sizeof c.where, "metadata entry %" PRIu32, i);
        if ((st = cur_u32(&c, "key_len", &key_len)) != FM_OK)
            return st;
        if (key_len < 1 || key_len > FM_MODEL_MAX_NAME)
            return model_err(err, FM_ERR_FORMAT, m->path, "%s: key_len %" PRIu32
                             " is not 1..%d", c.where, key_len, FM_MODEL_MAX_NAME);
        if ((st = cur_take(&c, key_len, "key", &p)) != FM_OK)
            return st;
        if (!key_valid(p, key_len))
            return model_err(err, FM_ERR_FORMAT, m->path,
                             "%s: key has bytes outside [a-z0-9_.]", c.where);
        if (!(e->key = arena_copy(m, p, key_len)))
            return model_err(err, FM_ERR_INTERNAL, m->path, "string arena overflow");
        e->key_len = key_len;
        snprintf(c.where, sizeof c.where, "metadata '%s'", e->key);
        uint32_t *slot = index_slot(&m->meta_index, e->key, key_len, meta_name_of, m);
        if (*slot)
            return model_err(err, FM_ERR_FORMAT, m->path, "%s: duplicate key", c.where);
        *slot = i + 1;
        if ((st = cur_u32(&c, "type", &type)) != FM_OK)
            return st;
        if (type < FM_MODEL_META_I64 || type > FM_MODEL_META_STR_ARRAY)
            return model_err(err, FM_ERR_FORMAT, m->path, "%s: type %" PRIu32
                             " is not 1..6", c.where, type);
        e->type = (fm_model_meta_type)type;
        if ((st = parse_meta_value(&c, e)) != FM_OK)
            return st;
        e->bytes = m->map + entry_pos;
        e->nbytes = (size_t)(c.pos - entry_pos);
    }
    if (c.pos != c.end)
        return model_err(err, FM_ERR_FORMAT, m->path,
                         "metadata: %" PRIu32 " entries end at offset %" PRIu64
                         " but meta_size ends the section at %" PRIu64,
                         m->n_meta, c.pos, c.end);
    return FM_OK;
}

/* Reads one directory entry into t (name, dtype, ndim, dims, offset, nbytes) and
 * checks it on its own; overlaps are checked once all entries are read. */
static fm_status parse_tensor(fm_model *m, cursor *c, uint32_t i, fm_model_tensor_info *t)
{
    fm_status st;
    uint32_t name_len, dtype, ndim;
    const uint8_t *p = NULL;
    snprintf(c->where, sizeof c->where, "directory entry %" PRIu32, i);
    if ((st = cur_u32(c, "name_len", &name_len)) != FM_OK)
        return st;
    if (name_len < 1 || name_len > FM_MODEL_MAX_NAME)
        return model_err(c->err, FM_ERR_FORMAT, m->path, "%s: name_len %" PRIu32
                         " is not 1..%d", c->where, name_len, FM_MODEL_MAX_NAME);
    if ((st = cur_take(c, name_len, "name", &p)) != FM_OK)
        return st;
    if (!name_valid(p, name_len))
        return model_err(c->err, FM_ERR_FORMAT, m->path,
                         "%s: name is not UTF-8 without control characters", c->where);
    if (!(t->name = arena_copy(m, p, name_len)))
        return model_err(c->err, FM_ERR_INTERNAL, m->path, "string arena overflow");
    t->name_len = name_len;
    snprintf(c->where, sizeof c->where, "tensor '%s'", t->name);
    uint32_t *slot = index_slot(&m->tensor_index, t->name, name_len, tensor_name_of, m);
    if (*slot)
        return model_err(c->err, FM_ERR_FORMAT, m->path, "%s: duplicate name", c->where);
    *slot = i + 1;

    if ((st = cur_u32(c, "dtype", &dtype)) != FM_OK)
        return st;
    if (dtype != FM_MODEL_DTYPE_F32 && dtype != FM_MODEL_DTYPE_F16)
        return model_err(c->err, FM_ERR_FORMAT, m->path,
                         "%s: dtype %" PRIu32 " (%s) is not supported; version %d holds "
                         "f32 (0) and f16 (1)",
                         c->where, dtype, dtype_name(dtype), FM_MODEL_VERSION);
    t->dtype = (fm_model_dtype)dtype;
    const unsigned esize = fm_model_dtype_size(t->dtype);
    if ((st = cur_u32(c, "ndim", &ndim)) != FM_OK)
        return st;
    if (ndim < 1 || ndim > FM_MODEL_MAX_NDIM)
        return model_err(c->err, FM_ERR_FORMAT, m->path, "%s: ndim %" PRIu32
                         " is not 1..%d", c->where, ndim, FM_MODEL_MAX_NDIM);
    t->ndim = ndim;
    for (unsigned d = 0; d < FM_MODEL_MAX_NDIM; d++)
        t->dims[d] = 1;
    for (unsigned d = 0; d < ndim; d++)
        if ((st = cur_u64(c, "dims", &t->dims[d])) != FM_OK)
            return st;
    if ((st = cur_u64(c, "offset", &t->offset)) != FM_OK ||
        (st = cur_u64(c, "nbytes", &t->nbytes)) != FM_OK)
        return st;

    /* The overflow bound is product(dims) x 4 for every dtype, so one rule (shared
     * with fmmodel.py) decides, whatever the element size. */
    uint64_t count = 1;
    for (unsigned d = 0; d < ndim; d++) {
        if (t->dims[d] < 1)
            return model_err(c->err, FM_ERR_FORMAT, m->path, "%s: dims[%u] is 0",
                             c->where, d);
        if (count > UINT64_MAX / 4 / t->dims[d])
            return model_err(c->err, FM_ERR_FORMAT, m->path,
                             "%s: product of dims overflows 64 bits", c->where);
        count *= t->dims[d];
    }
    t->count = count;
    if (t->nbytes != count * esize)
        return model_err(c->err, FM_ERR_FORMAT, m->path,
                         "%s: nbytes %" PRIu64 " is not product(dims) x %u = %" PRIu64,
                         c->where, t->nbytes, esize, count * esize);
    if (t->offset % FM_MODEL_ALIGN)
        return model_err(c->err, FM_ERR_FORMAT, m->path,
                         "%s: offset %" PRIu64 " is not a multiple of %d", c->where,
                         t->offset, FM_MODEL_ALIGN);
    if (t->offset > m->data_size || t->nbytes > m->data_size - t->offset)
        return model_err(c->err, FM_ERR_FORMAT, m->path,
                         "%s: offset %" PRIu64 " + %" PRIu64
                         " bytes exceeds data size %" PRIu64,
                         c->where, t->offset, t->nbytes, m->data_size);
    t->raw = m->map + m->data_offset + t->offset;
    t->data = t->dtype == FM_MODEL_DTYPE_F32 ? (const float *)t->raw : NULL;
    return FM_OK;
}

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->tensor < y->tensor ? -1 : x->tensor > y->tensor;
}

/* Parses the directory and leaves the tensors' spans sorted by offset in *spans_out
 * (caller frees) for the overlap and padding checks. */
static fm_status parse_dir(fm_model *m, span **spans_out, fm_error *err)
{
    fm_status st;
    cursor c = {.m = m, .pos = m->dir_offset, .end = m->dir_offset + m->dir_size,
                .err = err};
    span *spans = NULL;
    *spans_out = NULL;
    if (m->n_tensors) {
        if (!(m->tensors = calloc(m->n_tensors, sizeof *m->tensors)) ||
            !(spans = malloc(m->n_tensors * sizeof *spans)) ||
            !index_reserve(&m->tensor_index, m->n_tensors, 0, tensor_name_of, m)) {
            st = model_err(err, FM_ERR_NOMEM, m->path, "out of memory");
            goto fail;
        }
    }
    for (uint32_t i = 0; i < m->n_tensors; i++) {
        fm_model_tensor_info *t = &m->tensors[i];
        if ((st = parse_tensor(m, &c, i, t)) != FM_OK)
            goto fail;
        spans[i] = (span){t->offset, t->offset + t->nbytes, i};
    }
    if (c.pos != c.end) {
        st = model_err(err, FM_ERR_FORMAT, m->path,
                       "directory: %" PRIu32 " entries end at offset %" PRIu64
                       " but dir_size ends the section at %" PRIu64,
                       m->n_tensors, c.pos, c.end);
        goto fail;
    }
    if (m->n_tensors > 1)
        qsort(spans, m->n_tensors, sizeof *spans, span_cmp);
    for (uint32_t i = 1; i < m->n_tensors; i++) {
        const span *a = &spans[i - 1], *b = &spans[i];
        if (b->begin < a->end) {
            st = model_err(err, FM_ERR_FORMAT, m->path,
                           "tensor '%s' [%" PRIu64 ", %" PRIu64 ") overlaps tensor '%s' [%"
                           PRIu64 ", %" PRIu64 ")",
                           m->tensors[b->tensor].name, b->begin, b->end,
                           m->tensors[a->tensor].name, a->begin, a->end);
            goto fail;
        }
    }
    *spans_out = spans;
    return FM_OK;
fail:
    free(spans);
    return st;
}

/* 1 when p[0..n) is all zero. */
static int all_zero(const uint8_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* FM_MODEL_VERIFY_DATA: data CRC, and zero bytes wherever no tensor lies. */
static fm_status verify_data(const fm_model *m, const span *spans, fm_error *err)
{
    const uint8_t *data = m->map + m->data_offset;
    uint32_t crc = fm_model_crc32(0, data, (size_t)m->data_size);
    if (crc != m->data_crc)
        return model_err(err, FM_ERR_FORMAT, m->path,
                         "data_crc32 0x%08" PRIx32 " does not match the computed 0x%08" PRIx32
                         " (tensor data is corrupt)",
                         m->data_crc, crc);
    uint64_t dir_end = m->dir_offset + m->dir_size;
    if (!all_zero(m->map + dir_end, m->data_offset - dir_end))
        return model_err(err, FM_ERR_FORMAT, m->path,
                         "padding [%" PRIu64 ", %" PRIu64 ") before data_offset is not zero",
                         dir_end, m->data_offset);
    uint64_t pos = 0;
    for (uint32_t i = 0; i <= m->n_tensors; i++) {
        uint64_t begin = i < m->n_tensors ? spans[i].begin : m->data_size;
        if (!all_zero(data + pos, begin - pos))
            return model_err(err, FM_ERR_FORMAT, m->path,
                             "padding [%" PRIu64 ", %" PRIu64 ") of the data section is "
                             "not zero",
                             pos, begin);
        if (i < m->n_tensors)
            pos = spans[i].end;
    }
    return FM_OK;
}

fm_status fm_model_open(fm_model **out, const char *path, unsigned flags, fm_error *err)
{
    fm_status st;
    fm_model *m = NULL;
    span *spans = NULL;
    int fd = -1;
    struct stat sb;
    const char *why = NULL;

    if (!out || !path)
        return fm_error_set(err, FM_ERR_INVALID, "fm_model_open: out and path are required");
    *out = NULL;
    if (flags & ~(unsigned)FM_MODEL_VERIFY_DATA)
        return fm_error_set(err, FM_ERR_INVALID, "%s: unknown flags 0x%x", path, flags);
    if (!(m = calloc(1, sizeof *m)) || !(m->path = strdup(path))) {
        st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    if ((fd = fm_file_open_regular(path, &why)) < 0) { /* a FIFO would block the open */
        st = model_err(err, FM_ERR_IO, path, "open: %s", why);
        goto fail;
    }
    if (fstat(fd, &sb) != 0) {
        st = model_err(err, FM_ERR_IO, path, "fstat: %s", strerror(errno));
        goto fail;
    }
    if (sb.st_size < FM_MODEL_HEADER_SIZE) {
        st = model_err(err, FM_ERR_FORMAT, path,
                       "file size %jd is smaller than the %d-byte header",
                       (intmax_t)sb.st_size, FM_MODEL_HEADER_SIZE);
        goto fail;
    }
    if ((uintmax_t)sb.st_size > SIZE_MAX) {
        st = model_err(err, FM_ERR_IO, path, "file size %jd does not fit in memory",
                       (intmax_t)sb.st_size);
        goto fail;
    }
    m->size = (size_t)sb.st_size;
    void *map = mmap(NULL, m->size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        st = model_err(err, FM_ERR_IO, path, "mmap: %s", strerror(errno));
        goto fail;
    }
    m->map = map;
    close(fd);
    fd = -1;

    if ((st = check_header(m, err)) != FM_OK)
        goto fail;
    /* Every string in the index is preceded by a 4-byte length that pays for its NUL,
     * so the index size bounds the arena. */
    m->strings_cap = (size_t)(m->meta_size + m->dir_size) + 1;
    if (!(m->strings = malloc(m->strings_cap))) {
        st = model_err(err, FM_ERR_NOMEM, path, "out of memory");
        goto fail;
    }
    if ((st = parse_meta(m, err)) != FM_OK || (st = parse_dir(m, &spans, err)) != FM_OK)
        goto fail;
    if ((flags & FM_MODEL_VERIFY_DATA) && (st = verify_data(m, spans, err)) != FM_OK)
        goto fail;
    free(spans);
    /* The mapping is read-only and lasts until fm_model_close: the engine may keep its
     * own layouts of weights bound in it (a full table only makes that slower). */
    (void)fm_nn_const_declare(m->map, m->size);
    *out = m;
    return FM_OK;
fail:
    if (fd >= 0)
        close(fd);
    free(spans);
    fm_model_close(&m);
    return st;
}

void fm_model_close(fm_model **pm)
{
    if (!pm || !*pm)
        return;
    fm_model *m = *pm;
    if (m->map) {
        fm_nn_const_forget(m->map);
        munmap((void *)m->map, m->size);
    }
    if (m->meta) {
        for (uint32_t i = 0; i < m->n_meta; i++) {
            free(m->meta[i].i64s);
            free(m->meta[i].f64s);
            free(m->meta[i].strs);
        }
    }
    free(m->meta);
    free(m->meta_index.slots);
    free(m->tensors);
    free(m->tensor_index.slots);
    free(m->strings);
    free(m->path);
    free(m);
    *pm = NULL;
}

const char *fm_model_path(const fm_model *m)
{
    return m->path;
}

uint64_t fm_model_file_size(const fm_model *m)
{
    return m->size;
}

size_t fm_model_tensor_count(const fm_model *m)
{
    return m->n_tensors;
}

const fm_model_tensor_info *fm_model_tensor_at(const fm_model *m, size_t i)
{
    return i < m->n_tensors ? &m->tensors[i] : NULL;
}

const fm_model_tensor_info *fm_model_tensor(const fm_model *m, const char *name)
{
    if (!name || !m->n_tensors)
        return NULL;
    uint32_t slot = *index_slot(&m->tensor_index, name, strlen(name), tensor_name_of, m);
    return slot ? &m->tensors[slot - 1] : NULL;
}

/* Formats a shape as "[64, 3, 3, 3]", 0 printed as "*". */
static void format_shape(char *buf, size_t cap, unsigned ndim, const uint64_t *dims)
{
    size_t n = 0;
    n += (size_t)snprintf(buf, cap, "[");
    for (unsigned d = 0; d < ndim && n < cap; d++) {
        const char *sep = d ? ", " : "";
        if (dims && dims[d])
            n += (size_t)snprintf(buf + n, cap - n, "%s%" PRIu64, sep, dims[d]);
        else
            n += (size_t)snprintf(buf + n, cap - n, "%s*", sep);
    }
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

fm_status fm_model_tensor_expect(const fm_model *m, const char *name, unsigned ndim,
                                 const uint64_t *dims, const float **data, fm_error *err)
{
    if (!name || ndim < 1 || ndim > FM_MODEL_MAX_NDIM)
        return model_err(err, FM_ERR_INVALID, m->path,
                         "fm_model_tensor_expect: bad name or ndim %u", ndim);
    const fm_model_tensor_info *t = fm_model_tensor(m, name);
    if (!t)
        return model_err(err, FM_ERR_NOT_FOUND, m->path, "tensor '%s' not found", name);
    if (t->dtype == FM_MODEL_DTYPE_F16)
        return model_err(err, FM_ERR_FORMAT, m->path,
                         "tensor '%s' is f16: expand the file first (facemill model expand "
                         "%s OUT.fmm)",
                         name, m->path);
    int ok = t->dtype == FM_MODEL_DTYPE_F32 && t->ndim == ndim;
    for (unsigned d = 0; ok && d < ndim; d++)
        if (dims && dims[d] && dims[d] != t->dims[d])
            ok = 0;
    if (!ok) {
        char have[128], want[128];
        format_shape(have, sizeof have, t->ndim, t->dims);
        format_shape(want, sizeof want, ndim, dims);
        return model_err(err, FM_ERR_FORMAT, m->path,
                         "tensor '%s': %s shape %s, expected f32 %s", name,
                         dtype_name(t->dtype), have, want);
    }
    if (data)
        *data = t->data;
    return FM_OK;
}

size_t fm_model_meta_count(const fm_model *m)
{
    return m->n_meta;
}

fm_status fm_model_meta_at(const fm_model *m, size_t i, const char **key,
                           fm_model_meta_type *type)
{
    if (i >= m->n_meta)
        return FM_ERR_INVALID;
    if (key)
        *key = m->meta[i].key;
    if (type)
        *type = m->meta[i].type;
    return FM_OK;
}

/* The entry for key if it has type want; otherwise NULL with *st and err set. */
static const meta_entry *meta_get(const fm_model *m, const char *key,
                                  fm_model_meta_type want, fm_status *st, fm_error *err)
{
    if (!key || !m->n_meta) {
        *st = model_err(err, FM_ERR_NOT_FOUND, m->path, "metadata '%s' not found",
                        key ? key : "(null)");
        return NULL;
    }
    uint32_t slot = *index_slot(&m->meta_index, key, strlen(key), meta_name_of, m);
    if (!slot) {
        *st = model_err(err, FM_ERR_NOT_FOUND, m->path, "metadata '%s' not found", key);
        return NULL;
    }
    const meta_entry *e = &m->meta[slot - 1];
    if (e->type != want) {
        *st = model_err(err, FM_ERR_INVALID, m->path, "metadata '%s' is %s, not %s", key,
                        fm_model_meta_type_name(e->type), fm_model_meta_type_name(want));
        return NULL;
    }
    *st = FM_OK;
    return e;
}

fm_status fm_model_meta_i64(const fm_model *m, const char *key, int64_t *value,
                            fm_error *err)
{
    fm_status st;
    const meta_entry *e = meta_get(m, key, FM_MODEL_META_I64, &st, err);
    if (e && value)
        *value = e->i64;
    return st;
}

fm_status fm_model_meta_f64(const fm_model *m, const char *key, double *value,
                            fm_error *err)
{
    fm_status st;
    const meta_entry *e = meta_get(m, key, FM_MODEL_META_F64, &st, err);
    if (e && value)
        *value = e->f64;
    return st;
}

fm_status fm_model_meta_str(const fm_model *m, const char *key, const char **value,
                            size_t *len, fm_error *err)
{
    fm_status st;
    const meta_entry *e = meta_get(m, key, FM_MODEL_META_STR, &st, err);
    if (e) {
        if (value)
            *value = e->str;
        if (len)
            *len = e->str_len;
    }
    return st;
}

fm_status fm_model_meta_i64_array(const fm_model *m, const char *key,
                                  const int64_t **values, size_t *count, fm_error *err)
{
    fm_status st;
    const meta_entry *e = meta_get(m, key, FM_MODEL_META_I64_ARRAY, &st, err);
    if (e) {
        if (values)
            *values = e->i64s;
        if (count)
            *count = e->count;
    }
    return st;
}

fm_status fm_model_meta_f64_array(const fm_model *m, const char *key,
                                  const double **values, size_t *count, fm_error *err)
{
    fm_status st;
    const meta_entry *e = meta_get(m, key, FM_MODEL_META_F64_ARRAY, &st, err);
    if (e) {
        if (values)
            *values = e->f64s;
        if (count)
            *count = e->count;
    }
    return st;
}

fm_status fm_model_meta_str_array(const fm_model *m, const char *key,
                                  const char *const **values, size_t *count, fm_error *err)
{
    fm_status st;
    const meta_entry *e = meta_get(m, key, FM_MODEL_META_STR_ARRAY, &st, err);
    if (e) {
        if (values)
            *values = (const char *const *)e->strs;
        if (count)
            *count = e->count;
    }
    return st;
}

fm_status fm_model_meta_str_array_at(const fm_model *m, const char *key, size_t index,
                                     const char **value, size_t *len, fm_error *err)
{
    fm_status st;
    const meta_entry *e = meta_get(m, key, FM_MODEL_META_STR_ARRAY, &st, err);
    if (!e)
        return st;
    if (index >= e->count)
        return model_err(err, FM_ERR_INVALID, m->path,
                         "metadata '%s': index %zu is past its %zu elements", key, index,
                         e->count);
    if (value)
        *value = e->strs[index];
    if (len)
        *len = e->str_lens[index];
    return FM_OK;
}

/* ---------------------------------------------------------------------------------
 * Writer
 * ------------------------------------------------------------------------------- */

/* A metadata entry, kept as its exact file bytes (key_len, key, type, value). */
typedef struct wmeta {
    char *key; /* NUL-terminated copy */
    size_t key_len;
    uint8_t *bytes;
    size_t nbytes;
} wmeta;

typedef struct wtensor {
    char *name; /* NUL-terminated copy */
    size_t name_len;
    fm_model_dtype dtype;
    unsigned ndim;
    uint64_t dims[FM_MODEL_MAX_NDIM];
    void *data; /* copy, nbytes bytes, host order (= file order: little-endian) */
    size_t nbytes;
} wtensor;

struct fm_model_writer {
    wmeta *meta;
    size_t n_meta, cap_meta;
    name_index meta_index;
    wtensor *tensors;
    size_t n_tensors, cap_tensors;
    name_index tensor_index;
};

static void wmeta_name_of(const void *ctx, size_t i, const char **s, size_t *len)
{
    const wmeta *e = &((const fm_model_writer *)ctx)->meta[i];
    *s = e->key;
    *len = e->key_len;
}

static void wtensor_name_of(const void *ctx, size_t i, const char **s, size_t *len)
{
    const wtensor *t = &((const fm_model_writer *)ctx)->tensors[i];
    *s = t->name;
    *len = t->name_len;
}

fm_model_writer *fm_model_writer_new(void)
{
    return calloc(1, sizeof(fm_model_writer));
}

void fm_model_writer_destroy(fm_model_writer **pw)
{
    if (!pw || !*pw)
        return;
    fm_model_writer *w = *pw;
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].bytes);
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->meta);
    free(w->meta_index.slots);
    free(w->tensors);
    free(w->tensor_index.slots);
    free(w);
    *pw = NULL;
}

/* Grows *arr (elements of size elem) to hold at least need elements. */
static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return 0;
    *arr = p;
    *cap = ncap;
    return 1;
}

/* Checks the key of a new metadata entry and makes room for it. */
static fm_status writer_meta_prepare(fm_model_writer *w, const char *key, fm_error *err)
{
    if (!w || !key)
        return fm_error_set(err, FM_ERR_INVALID, "model writer: NULL writer or key");
    size_t len = strlen(key);
    if (!key_valid((const uint8_t *)key, len))
        return fm_error_set(err, FM_ERR_INVALID,
                            "model writer: metadata key '%.300s' is not 1..255 bytes of "
                            "[a-z0-9_.]",
                            key);
    if (w->n_meta && *index_slot(&w->meta_index, key, len, wmeta_name_of, w))
        return fm_error_set(err, FM_ERR_INVALID, "model writer: duplicate metadata key '%s'",
                            key);
    if (w->n_meta >= FM_MODEL_MAX_META)
        return fm_error_set(err, FM_ERR_LIMIT, "model writer: more than %d metadata entries",
                            FM_MODEL_MAX_META);
    if (!grow((void **)&w->meta, &w->cap_meta, w->n_meta + 1, sizeof *w->meta) ||
        !index_reserve(&w->meta_index, w->n_meta + 1, w->n_meta, wmeta_name_of, w))
        return fm_error_set(err, FM_ERR_NOMEM, "model writer: out of memory");
    return FM_OK;
}

/* Allocates the bytes of an entry with key and type written and value_size bytes
 * left for the value at *value. */
static uint8_t *entry_alloc(const char *key, uint32_t type, size_t value_size,
                            size_t *nbytes, uint8_t **value)
{
    size_t key_len = strlen(key);
    *nbytes = 4 + key_len + 4 + value_size;
    uint8_t *b = malloc(*nbytes);
    if (!b)
        return NULL;
    wr_u32(b, (uint32_t)key_len);
    memcpy(b + 4, key, key_len);
    wr_u32(b + 4 + key_len, type);
    *value = b + 8 + key_len;
    return b;
}

/* Appends a prepared entry; takes ownership of bytes. */
static fm_status writer_meta_commit(fm_model_writer *w, const char *key, uint8_t *bytes,
                                    size_t nbytes, fm_error *err)
{
    char *k = strdup(key);
    if (!bytes || !k) {
        free(bytes);
        free(k);
        return fm_error_set(err, FM_ERR_NOMEM, "model writer: out of memory");
    }
    wmeta *e = &w->meta[w->n_meta];
    e->key = k;
    e->key_len = strlen(k);
    e->bytes = bytes;
    e->nbytes = nbytes;
    *index_slot(&w->meta_index, k, e->key_len, wmeta_name_of, w) = (uint32_t)(w->n_meta + 1);
    w->n_meta++;
    return FM_OK;
}

static fm_status writer_add_scalar(fm_model_writer *w, const char *key, uint32_t type,
                                   uint64_t bits, fm_error *err)
{
    fm_status st = writer_meta_prepare(w, key, err);
    if (st != FM_OK)
        return st;
    size_t nbytes;
    uint8_t *v, *b = entry_alloc(key, type, 8, &nbytes, &v);
    if (b)
        wr_u64(v, bits);
    return writer_meta_commit(w, key, b, nbytes, err);
}

fm_status fm_model_writer_add_meta_from(fm_model_writer *w, const fm_model *m, size_t i,
                                        fm_error *err)
{
    if (!m || i >= m->n_meta)
        return fm_error_set(err, FM_ERR_INVALID, "model writer: no metadata entry %zu to copy",
                            i);
    const meta_entry *e = &m->meta[i];
    fm_status st = writer_meta_prepare(w, e->key, err);
    if (st != FM_OK)
        return st;
    /* The entry's bytes were validated when the model was opened; copying them keeps
     * every value exactly, strings holding an encoded U+0000 included. */
    uint8_t *b = malloc(e->nbytes);
    if (b)
        memcpy(b, e->bytes, e->nbytes);
    return writer_meta_commit(w, e->key, b, e->nbytes, err);
}

fm_status fm_model_writer_add_i64(fm_model_writer *w, const char *key, int64_t value,
                                  fm_error *err)
{
    return writer_add_scalar(w, key, FM_MODEL_META_I64, (uint64_t)value, err);
}

fm_status fm_model_writer_add_f64(fm_model_writer *w, const char *key, double value,
                                  fm_error *err)
{
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    return writer_add_scalar(w, key, FM_MODEL_META_F64, bits, err);
}

/* Checks one string value for the writer: non-NULL, <= 1 MiB, valid UTF-8. */
static fm_status writer_check_str(const char *key, const char *s, size_t *len,
                                  fm_error *err)
{
    if (!s)
        return fm_error_set(err, FM_ERR_INVALID, "model writer: metadata '%s': NULL string",
                            key);
    *len = strlen(s);
    if (*len > FM_MODEL_MAX_STR)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "model writer: metadata '%s': string of %zu bytes exceeds %u",
                            key, *len, FM_MODEL_MAX_STR);
    if (!utf8_valid((const uint8_t *)s, *len, 0))
        return fm_error_set(err, FM_ERR_INVALID,
                            "model writer: metadata '%s': string is not valid UTF-8", key);
    return FM_OK;
}

fm_status fm_model_writer_add_str(fm_model_writer *w, const char *key, const char *value,
                                  fm_error *err)
{
    size_t len = 0;
    fm_status st = writer_meta_prepare(w, key, err);
    if (st != FM_OK || (st = writer_check_str(key, value, &len, err)) != FM_OK)
        return st;
    size_t nbytes;
    uint8_t *v, *b = entry_alloc(key, FM_MODEL_META_STR, 4 + len, &nbytes, &v);
    if (b) {
        wr_u32(v, (uint32_t)len);
        memcpy(v + 4, value, len);
    }
    return writer_meta_commit(w, key, b, nbytes, err);
}

static fm_status writer_check_count(const char *key, const void *values, size_t count,
                                    fm_error *err)
{
    if (count > FM_MODEL_MAX_COUNT)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "model writer: metadata '%s': %zu elements exceed %u", key,
                            count, FM_MODEL_MAX_COUNT);
    if (count && !values)
        return fm_error_set(err, FM_ERR_INVALID, "model writer: metadata '%s': NULL values",
                            key);
    return FM_OK;
}

static fm_status writer_add_array64(fm_model_writer *w, const char *key, uint32_t type,
                                    const void *values, size_t count, fm_error *err)
{
    fm_status st = writer_meta_prepare(w, key, err);
    if (st != FM_OK || (st = writer_check_count(key, values, count, err)) != FM_OK)
        return st;
    size_t nbytes;
    uint8_t *v, *b = entry_alloc(key, type, 4 + 8 * count, &nbytes, &v);
    if (b) {
        wr_u32(v, (uint32_t)count);
        for (size_t i = 0; i < count; i++) {
            uint64_t bits;
            memcpy(&bits, (const uint8_t *)values + 8 * i, sizeof bits);
            wr_u64(v + 4 + 8 * i, bits);
        }
    }
    return writer_meta_commit(w, key, b, nbytes, err);
}

fm_status fm_model_writer_add_i64_array(fm_model_writer *w, const char *key,
                                        const int64_t *values, size_t count, fm_error *err)
{
    return writer_add_array64(w, key, FM_MODEL_META_I64_ARRAY, values, count, err);
}

fm_status fm_model_writer_add_f64_array(fm_model_writer *w, const char *key,
                                        const double *values, size_t count, fm_error *err)
{
    return writer_add_array64(w, key, FM_MODEL_META_F64_ARRAY, values, count, err);
}

fm_status fm_model_writer_add_str_array(fm_model_writer *w, const char *key,
                                        const char *const *values, size_t count,
                                        fm_error *err)
{
    fm_status st = writer_meta_prepare(w, key, err);
    if (st != FM_OK || (st = writer_check_count(key, values, count, err)) != FM_OK)
        return st;
    size_t size = 4;
    for (size_t i = 0; i < count; i++) {
        size_t len = 0;
        if ((st = writer_check_str(key, values[i], &len, err)) != FM_OK)
            return st;
        size += 4 + len; /* <= 2^20 x (4 + 2^20): no overflow on 64-bit size_t */
    }
    size_t nbytes;
    uint8_t *v, *b = entry_alloc(key, FM_MODEL_META_STR_ARRAY, size, &nbytes, &v);
    if (b) {
        wr_u32(v, (uint32_t)count);
        v += 4;
        for (size_t i = 0; i < count; i++) {
            size_t len = strlen(values[i]);
            wr_u32(v, (uint32_t)len);
            memcpy(v + 4, values[i], len);
            v += 4 + len;
        }
    }
    return writer_meta_commit(w, key, b, nbytes, err);
}

static fm_status writer_add_tensor(fm_model_writer *w, const char *name,
                                   fm_model_dtype dtype, unsigned ndim,
                                   const uint64_t *dims, const void *data, fm_error *err)
{
    const unsigned esize = fm_model_dtype_size(dtype);
    if (!w || !name || !dims || !data)
        return fm_error_set(err, FM_ERR_INVALID,
                            "model writer: NULL writer, name, dims or data");
    size_t len = strlen(name);
    if (!name_valid((const uint8_t *)name, len))
        return fm_error_set(err, FM_ERR_INVALID,
                            "model writer: tensor name '%.300s' is not 1..255 bytes of UTF-8 "
                            "without control characters",
                            name);
    if (w->n_tensors && *index_slot(&w->tensor_index, name, len, wtensor_name_of, w))
        return fm_error_set(err, FM_ERR_INVALID, "model writer: duplicate tensor '%s'", name);
    if (ndim < 1 || ndim > FM_MODEL_MAX_NDIM)
        return fm_error_set(err, FM_ERR_INVALID, "model writer: tensor '%s': ndim %u is not "
                            "1..%d", name, ndim, FM_MODEL_MAX_NDIM);
    uint64_t count = 1;
    for (unsigned d = 0; d < ndim; d++) {
        if (dims[d] < 1)
            return fm_error_set(err, FM_ERR_INVALID, "model writer: tensor '%s': dims[%u] "
                                "is 0", name, d);
        if (count > UINT64_MAX / 4 / dims[d])
            return fm_error_set(err, FM_ERR_LIMIT, "model writer: tensor '%s': size "
                                "overflows 64 bits", name);
        count *= dims[d];
    }
    if (count * esize > SIZE_MAX / 2)
        return fm_error_set(err, FM_ERR_LIMIT, "model writer: tensor '%s': %" PRIu64
                            " bytes do not fit in memory", name, count * esize);
    if (w->n_tensors >= FM_MODEL_MAX_TENSORS)
        return fm_error_set(err, FM_ERR_LIMIT, "model writer: more than %d tensors",
                            FM_MODEL_MAX_TENSORS);
    if (!grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors + 1, sizeof *w->tensors) ||
        !index_reserve(&w->tensor_index, w->n_tensors + 1, w->n_tensors, wtensor_name_of, w))
        return fm_error_set(err, FM_ERR_NOMEM, "model writer: out of memory");
    wtensor t = {.name = strdup(name), .name_len = len, .dtype = dtype, .ndim = ndim,
                 .nbytes = (size_t)(count * esize)};
    t.data = malloc(t.nbytes);
    if (!t.name || !t.data) {
        free(t.name);
        free(t.data);
        return fm_error_set(err, FM_ERR_NOMEM, "model writer: tensor '%s': out of memory",
                            name);
    }
    for (unsigned d = 0; d < FM_MODEL_MAX_NDIM; d++)
        t.dims[d] = d < ndim ? dims[d] : 1;
    memcpy(t.data, data, t.nbytes);
    w->tensors[w->n_tensors] = t;
    *index_slot(&w->tensor_index, t.name, len, wtensor_name_of, w) =
        (uint32_t)(w->n_tensors + 1);
    w->n_tensors++;
    return FM_OK;
}

fm_status fm_model_writer_add_tensor(fm_model_writer *w, const char *name, unsigned ndim,
                                     const uint64_t *dims, const float *data,
                                     fm_error *err)
{
    return writer_add_tensor(w, name, FM_MODEL_DTYPE_F32, ndim, dims, data, err);
}

fm_status fm_model_writer_add_tensor_f16(fm_model_writer *w, const char *name,
                                         unsigned ndim, const uint64_t *dims,
                                         const uint16_t *bits, fm_error *err)
{
    return writer_add_tensor(w, name, FM_MODEL_DTYPE_F16, ndim, dims, bits, err);
}

static uint64_t align_up(uint64_t n)
{
    return (n + FM_MODEL_ALIGN - 1) / FM_MODEL_ALIGN * FM_MODEL_ALIGN;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        p += k;
        n -= (size_t)k;
    }
    return 1;
}

/* fsyncs the directory that holds path, so the rename is durable. */
static int fsync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (!dir) {
        errno = ENOMEM;
        return 0;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return 0;
    int ok = fsync(fd) == 0;
    int saved = errno;
    close(fd);
    errno = saved;
    return ok;
}

fm_status fm_model_writer_save(const fm_model_writer *w, const char *path, fm_error *err)
{
    fm_status st;
    uint8_t *index = NULL;
    uint64_t *offsets = NULL;
    char *tmp = NULL;
    int fd = -1, tmp_exists = 0;

    if (!w || !path)
        return fm_error_set(err, FM_ERR_INVALID, "model writer: NULL writer or path");

    /* Layout: header, metadata, directory, zero padding, tensors at multiples of 64. */
    uint64_t meta_size = 0, dir_size = 0;
    for (size_t i = 0; i < w->n_meta; i++)
        meta_size += w->meta[i].nbytes;
    for (size_t i = 0; i < w->n_tensors; i++)
        dir_size += 4 + w->tensors[i].name_len + 4 + 4 + 8 * w->tensors[i].ndim + 8 + 8;
    uint64_t dir_offset = FM_MODEL_HEADER_SIZE + meta_size;
    uint64_t dir_end = dir_offset + dir_size;
    uint64_t data_offset = align_up(dir_end), data_size = 0;
    if (w->n_tensors && !(offsets = malloc(w->n_tensors * sizeof *offsets))) {
        st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    uint32_t data_crc = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        offsets[i] = align_up(data_size);
        data_crc = fm_model_crc32(data_crc, zeros64, (size_t)(offsets[i] - data_size));
        data_crc = fm_model_crc32(data_crc, w->tensors[i].data, w->tensors[i].nbytes);
        data_size = offsets[i] + w->tensors[i].nbytes;
    }
    if (dir_end > SIZE_MAX || !(index = calloc(1, (size_t)dir_end))) {
        st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }

    uint8_t *h = index;
    memcpy(h + H_MAGIC, MODEL_MAGIC, sizeof MODEL_MAGIC);
    wr_u32(h + H_VERSION, FM_MODEL_VERSION);
    wr_u32(h + H_HEADER_SIZE, FM_MODEL_HEADER_SIZE);
    wr_u32(h + H_N_META, (uint32_t)w->n_meta);
    wr_u32(h + H_N_TENSORS, (uint32_t)w->n_tensors);
    wr_u64(h + H_META_OFFSET, FM_MODEL_HEADER_SIZE);
    wr_u64(h + H_META_SIZE, meta_size);
    wr_u64(h + H_DIR_OFFSET, dir_offset);
    wr_u64(h + H_DIR_SIZE, dir_size);
    wr_u64(h + H_DATA_OFFSET, data_offset);
    wr_u64(h + H_DATA_SIZE, data_size);
    wr_u32(h + H_DATA_CRC, data_crc);
    uint8_t *p = index + FM_MODEL_HEADER_SIZE;
    for (size_t i = 0; i < w->n_meta; i++) {
        memcpy(p, w->meta[i].bytes, w->meta[i].nbytes);
        p += w->meta[i].nbytes;
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        wr_u32(p, (uint32_t)t->name_len);
        memcpy(p + 4, t->name, t->name_len);
        p += 4 + t->name_len;
        wr_u32(p, (uint32_t)t->dtype);
        wr_u32(p + 4, t->ndim);
        p += 8;
        for (unsigned d = 0; d < t->ndim; d++, p += 8)
            wr_u64(p, t->dims[d]);
        wr_u64(p, offsets[i]);
        wr_u64(p + 8, t->nbytes);
        p += 16;
    }
    wr_u32(h + H_INDEX_CRC, fm_model_crc32(0, index, (size_t)dir_end));

    size_t tmp_len = strlen(path) + 32;
    if (!(tmp = malloc(tmp_len))) {
        st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: open: %s", tmp, strerror(errno));
        goto fail;
    }
    tmp_exists = 1;
    int ok = write_all(fd, index, (size_t)dir_end) &&
             write_all(fd, zeros64, (size_t)(data_offset - dir_end));
    uint64_t pos = 0;
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        ok = write_all(fd, zeros64, (size_t)(offsets[i] - pos)) &&
             write_all(fd, w->tensors[i].data, w->tensors[i].nbytes);
        pos = offsets[i] + w->tensors[i].nbytes;
    }
    if (!ok) {
        st = fm_error_set(err, FM_ERR_IO, "%s: write: %s", tmp, strerror(errno));
        goto fail;
    }
    if (fsync(fd) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: fsync: %s", tmp, strerror(errno));
        goto fail;
    }
    int rc = close(fd);
    fd = -1;
    if (rc != 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: close: %s", tmp, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: rename to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    tmp_exists = 0;
    if (!fsync_parent_dir(path)) {
        st = fm_error_set(err, FM_ERR_IO, "%s: fsync of the directory: %s", path,
                          strerror(errno));
        goto fail;
    }
    st = FM_OK;
fail:
    if (fd >= 0)
        close(fd);
    if (tmp_exists)
        unlink(tmp);
    free(tmp);
    free(index);
    free(offsets);
    return st;
}
