/* cmd_model.c - `facemill model`: look inside model files, check them, and convert
 * between the f32 files workers map and the compact f16 files kept in the repository.
 *
 * Why it exists: a model file is the one artefact that moves between converters, the
 * trainer and every worker machine. Operators need to see what a file holds (its
 * metadata, lineage and tensor table) and to check a copy end to end, data CRC
 * included, before a fleet maps it. Trained weights are committed at half the size
 * as f16 and expanded once per machine (models/fetch), because workers bind f32
 * tensors in place from a shared mapping and never convert at load time:
 *   facemill model info FILE
 *   facemill model verify FILE...
 *   facemill model get FILE KEY
 *   facemill model compact [--force] IN.fmm OUT.fmm
 *   facemill model expand IN.fmm OUT.fmm
 * compact and expand are deterministic (same input, same bytes) and give the same
 * bytes as models/tools/fmmcompact.py, so a machine without the C build expands a
 * committed file to exactly what this program would.
 */
#include "cli_opts.h"
#include "commands.h"
#include "facemill/model.h"
#include "facemill/sha256.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARRAY_SHOWN 16   /* array elements printed by `info` before "..." */
#define STRING_SHOWN 160 /* bytes of a string printed by `info` before "..." */

static const cli_cmd model_cmd = {
    "model", "info|verify|get|compact|expand ARGS...", 1, -1,
    "  facemill model info FILE       metadata, lineage and tensor table\n"
    "  facemill model verify FILE...  full check, data CRC included\n"
    "  facemill model get FILE KEY    one metadata value (arrays: one element per\n"
    "                                 line)\n"
    "  facemill model compact [--force] IN.fmm OUT.fmm\n"
    "                                 every f32 tensor to f16 (half the size); prints\n"
    "                                 the error introduced; refuses values beyond\n"
    "                                 f16's range (|x| >= 65520) unless --force\n"
    "  facemill model expand IN.fmm OUT.fmm\n"
    "                                 every f16 tensor to f32, exactly; metadata kept,\n"
    "                                 plus expand.source and expand.source_sha256\n"
    "                                 (IN's name and SHA-256)\n"
    "Files are written atomically (OUT.tmp.PID, then renamed). Workers map f32\n"
    "files only: a compact file must be expanded before use (models/fetch\n"
    "expands the committed models/*.f16.fmm into models/cache/).\n"
    "`facemill model compact --help` describes one sub-command.\n",
    NULL, NULL};

static const cli_cmd info_cmd = {
    "model info", "[options] FILE", 1, 1,
    "Prints the metadata, the lineage and the tensor table of a model file.\n", NULL, NULL};
static const cli_cmd verify_cmd = {
    "model verify", "[options] FILE...", 1, -1,
    "Checks each model file in full, the CRC of its data included.\n",
    "exit status: 0 every file verified, 1 any is bad, 2 usage error", NULL};
static const cli_cmd get_cmd = {
    "model get", "[options] FILE KEY", 2, 2,
    "Prints one metadata value of a model file; an array prints one element per\n"
    "line.\n",
    "exit status: 0 success, 1 the key is absent (or the file bad), 2 usage error", NULL};
static const cli_cmd compact_cmd = {
    "model compact", "[options] IN.fmm OUT.fmm", 2, 2,
    "Converts every f32 tensor to f16 (half the size), written atomically, and prints\n"
    "the error this introduces.\n",
    NULL, NULL};
static const cli_cmd expand_cmd = {
    "model expand", "[options] IN.fmm OUT.fmm", 2, 2,
    "Converts every f16 tensor to f32, exactly, written atomically; the metadata is\n"
    "kept, plus expand.source and expand.source_sha256 (IN's name and SHA-256).\n",
    NULL, NULL};

/* Prints s[0..len) quoted, escaping quotes, backslashes and control bytes, cut after
 * STRING_SHOWN bytes at a character boundary. */
static void print_quoted(const char *s, size_t len)
{
    size_t shown = len;
    if (shown > STRING_SHOWN) {
        shown = STRING_SHOWN;
        while (shown > 0 && ((unsigned char)s[shown] & 0xc0) == 0x80)
            shown--;
    }
    putchar('"');
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    putchar('"');
    if (shown < len)
        printf("... (%zu bytes)", len);
}

static void print_more(size_t count)
{
    if (count > ARRAY_SHOWN)
        printf(", ... (%zu more)", count - ARRAY_SHOWN);
}

/* Prints one metadata value on the current line. */
static void print_meta_value(const fm_model *m, const char *key, fm_model_meta_type type)
{
    size_t count = 0, len = 0;
    int64_t i64 = 0;
    double f64 = 0;
    const char *str = NULL;
    const int64_t *i64s = NULL;
    const double *f64s = NULL;
    switch (type) {
    case FM_MODEL_META_I64:
        fm_model_meta_i64(m, key, &i64, NULL);
        printf("%" PRId64, i64);
        return;
    case FM_MODEL_META_F64:
        fm_model_meta_f64(m, key, &f64, NULL);
        printf("%.17g", f64);
        return;
    case FM_MODEL_META_STR:
        fm_model_meta_str(m, key, &str, &len, NULL);
        print_quoted(str, len);
        return;
    case FM_MODEL_META_I64_ARRAY:
        fm_model_meta_i64_array(m, key, &i64s, &count, NULL);
        putchar('[');
        for (size_t i = 0; i < count && i < ARRAY_SHOWN; i++)
            printf("%s%" PRId64, i ? ", " : "", i64s[i]);
        print_more(count);
        putchar(']');
        return;
    case FM_MODEL_META_F64_ARRAY:
        fm_model_meta_f64_array(m, key, &f64s, &count, NULL);
        putchar('[');
        for (size_t i = 0; i < count && i < ARRAY_SHOWN; i++)
            printf("%s%.17g", i ? ", " : "", f64s[i]);
        print_more(count);
        putchar(']');
        return;
    case FM_MODEL_META_STR_ARRAY:
        fm_model_meta_str_array(m, key, NULL, &count, NULL);
        putchar('[');
        for (size_t i = 0; i < count && i < ARRAY_SHOWN; i++) {
            fm_model_meta_str_array_at(m, key, i, &str, &len, NULL);
            fputs(i ? ", " : "", stdout);
            print_quoted(str, len);
        }
        print_more(count);
        putchar(']');
        return;
    }
}

/* The type column: "i64", "str", "f64[10]", ... */
static void format_type(char *buf, size_t cap, const fm_model *m, const char *key,
                        fm_model_meta_type type)
{
    size_t count = 0;
    switch (type) {
    case FM_MODEL_META_I64_ARRAY:
        fm_model_meta_i64_array(m, key, NULL, &count, NULL);
        snprintf(buf, cap, "i64[%zu]", count);
        break;
    case FM_MODEL_META_F64_ARRAY:
        fm_model_meta_f64_array(m, key, NULL, &count, NULL);
        snprintf(buf, cap, "f64[%zu]", count);
        break;
    case FM_MODEL_META_STR_ARRAY:
        fm_model_meta_str_array(m, key, NULL, &count, NULL);
        snprintf(buf, cap, "str[%zu]", count);
        break;
    default:
        snprintf(buf, cap, "%s", fm_model_meta_type_name(type));
    }
}

/* Lineage entries: where the weights came from, what trained them, what they were
 * expanded from (models/FORMAT.md, "Lineage"). info prints these again in full, since
 * commands and data descriptions are often longer than the table's cut. */
static int is_lineage_key(const char *key)
{
    static const char *const exact[] = {"general.source", "general.source_integrity",
                                        "general.converter", "heads.backbone"};
    static const char *const prefix[] = {"general.base", "train.", "heads.train.",
                                         "expand.", "base."};
    for (size_t i = 0; i < sizeof exact / sizeof *exact; i++)
        if (strcmp(key, exact[i]) == 0)
            return 1;
    for (size_t i = 0; i < sizeof prefix / sizeof *prefix; i++)
        if (strncmp(key, prefix[i], strlen(prefix[i])) == 0)
            return 1;
    return 0;
}

/* Prints s[0..len) whole, escaping like print_quoted. */
static void print_full(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
}

static int model_info(const char *path)
{
    fm_error err = {0};
    fm_model *m = NULL;
    if (fm_model_open(&m, path, 0, &err) != FM_OK) {
        fprintf(stderr, "facemill model info: %s\n", fm_error_text(&err));
        return 1;
    }
    size_t n_meta = fm_model_meta_count(m), n_tensors = fm_model_tensor_count(m);
    printf("file      %s\n", fm_model_path(m));
    printf("size      %" PRIu64 " bytes\n", fm_model_file_size(m));
    printf("version   %d\n", FM_MODEL_VERSION);

    int key_w = 3;
    for (size_t i = 0; i < n_meta; i++) {
        const char *key;
        fm_model_meta_at(m, i, &key, NULL);
        int len = (int)strlen(key);
        if (len > key_w)
            key_w = len > 40 ? 40 : len;
    }
    printf("metadata  %zu entries\n", n_meta);
    size_t n_lineage = 0;
    for (size_t i = 0; i < n_meta; i++) {
        const char *key;
        fm_model_meta_type type;
        char tbuf[32];
        fm_model_meta_at(m, i, &key, &type);
        format_type(tbuf, sizeof tbuf, m, key, type);
        printf("  %-*s  %-10s  ", key_w, key, tbuf);
        print_meta_value(m, key, type);
        putchar('\n');
        n_lineage += is_lineage_key(key);
    }
    if (n_lineage) {
        printf("lineage\n");
        for (size_t i = 0; i < n_meta; i++) {
            const char *key, *str;
            size_t len;
            fm_model_meta_type type;
            fm_model_meta_at(m, i, &key, &type);
            if (!is_lineage_key(key))
                continue;
            printf("  %-*s  ", key_w, key);
            if (type == FM_MODEL_META_STR && fm_model_meta_str(m, key, &str, &len, NULL) == FM_OK)
                print_full(str, len);
            else
                print_meta_value(m, key, type);
            putchar('\n');
        }
    }

    uint64_t total = 0, by_dtype[2] = {0, 0};
    int name_w = 4;
    for (size_t i = 0; i < n_tensors; i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        total += t->nbytes;
        by_dtype[t->dtype == FM_MODEL_DTYPE_F16]++;
        if ((int)t->name_len > name_w)
            name_w = t->name_len > 48 ? 48 : (int)t->name_len;
    }
    printf("tensors   %zu, %" PRIu64 " bytes of data (%.1f MiB)", n_tensors, total,
           (double)total / (1024.0 * 1024.0));
    if (by_dtype[1])
        printf("; %" PRIu64 " f32, %" PRIu64 " f16 (a compact file: expand it before use)",
               by_dtype[0], by_dtype[1]);
    putchar('\n');
    if (n_tensors)
        printf("  %5s  %-*s  %-5s  %-24s  %12s  %12s\n", "#", name_w, "name", "dtype",
               "shape", "offset", "bytes");
    for (size_t i = 0; i < n_tensors; i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        char shape[128];
        size_t n = (size_t)snprintf(shape, sizeof shape, "[");
        for (unsigned d = 0; d < t->ndim; d++)
            n += (size_t)snprintf(shape + n, sizeof shape - n, "%s%" PRIu64, d ? ", " : "",
                                  t->dims[d]);
        snprintf(shape + n, sizeof shape - n, "]");
        printf("  %5zu  %-*s  %-5s  %-24s  %12" PRIu64 "  %12" PRIu64 "\n", i, name_w,
               t->name, fm_model_dtype_name(t->dtype), shape, t->offset, t->nbytes);
    }
    fm_model_close(&m);
    return 0;
}

static int model_verify(int n, char **paths)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        fm_error err = {0};
        fm_model *m = NULL;
        if (fm_model_open(&m, paths[i], FM_MODEL_VERIFY_DATA, &err) != FM_OK) {
            fprintf(stderr, "facemill model verify: %s\n", fm_error_text(&err));
            bad = 1;
            continue;
        }
        printf("%s: ok (%zu metadata entries, %zu tensors, %" PRIu64 " bytes)\n", paths[i],
               fm_model_meta_count(m), fm_model_tensor_count(m), fm_model_file_size(m));
        fm_model_close(&m);
    }
    return bad;
}

/* `get`: the raw value for scripts (models/fetch reads expand.source_sha256 this way;
 * fmmcompact.py get prints the same text). */
static int model_get(const char *path, const char *key)
{
    fm_error err = {0};
    fm_model *m = NULL;
    if (fm_model_open(&m, path, 0, &err) != FM_OK) {
        fprintf(stderr, "facemill model get: %s\n", fm_error_text(&err));
        return 1;
    }
    int rc = 1;
    fm_model_meta_type type = FM_MODEL_META_I64;
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < fm_model_meta_count(m); i++) {
        const char *k;
        fm_model_meta_at(m, i, &k, &type);
        if (strcmp(k, key) == 0) {
            found = i;
            break;
        }
    }
    if (found == SIZE_MAX) {
        fprintf(stderr, "facemill model get: %s: no metadata '%s'\n", path, key);
        goto done;
    }
    int64_t i64;
    double f64;
    const char *str;
    const int64_t *i64s;
    const double *f64s;
    size_t len, count;
    switch (type) {
    case FM_MODEL_META_I64:
        fm_model_meta_i64(m, key, &i64, NULL);
        printf("%" PRId64 "\n", i64);
        break;
    case FM_MODEL_META_F64:
        fm_model_meta_f64(m, key, &f64, NULL);
        printf("%.17g\n", f64);
        break;
    case FM_MODEL_META_STR:
        fm_model_meta_str(m, key, &str, &len, NULL);
        fwrite(str, 1, len, stdout);
        putchar('\n');
        break;
    case FM_MODEL_META_I64_ARRAY:
        fm_model_meta_i64_array(m, key, &i64s, &count, NULL);
        for (size_t i = 0; i < count; i++)
            printf("%" PRId64 "\n", i64s[i]);
        break;
    case FM_MODEL_META_F64_ARRAY:
        fm_model_meta_f64_array(m, key, &f64s, &count, NULL);
        for (size_t i = 0; i < count; i++)
            printf("%.17g\n", f64s[i]);
        break;
    case FM_MODEL_META_STR_ARRAY:
        fm_model_meta_str_array(m, key, NULL, &count, NULL);
        for (size_t i = 0; i < count; i++) {
            fm_model_meta_str_array_at(m, key, i, &str, &len, NULL);
            fwrite(str, 1, len, stdout);
            putchar('\n');
        }
        break;
    }
    rc = 0;
done:
    fm_model_close(&m);
    return rc;
}

/* The file name part of path (after the last '/'). */
static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Copies every metadata entry of m into w except the expand.* keys: those describe
 * how one f32 file was made from one compact file, which is not true of the file
 * being written (expand adds its own; compact of an expanded file gives back the
 * compact file it came from). */
static fm_status copy_meta(fm_model_writer *w, const fm_model *m, fm_error *err)
{
    for (size_t i = 0; i < fm_model_meta_count(m); i++) {
        const char *key;
        fm_model_meta_at(m, i, &key, NULL);
        if (strncmp(key, "expand.", 7) == 0)
            continue;
        fm_status st = fm_model_writer_add_meta_from(w, m, i, err);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

/* What compact did to the values, for the report and the overflow refusal. */
typedef struct compact_stats {
    uint64_t values;       /* f32 values converted */
    uint64_t overflow;     /* finite values that became infinities */
    double overflow_max;   /* largest |x| among them */
    const char *overflow_tensor;
    uint64_t nonfinite;    /* infinities and NaNs already in the input (kept) */
    uint64_t below_normal; /* nonzero |x| < 2^-14: stored with fewer significant bits */
    uint64_t to_zero;      /* nonzero values that became zero */
    double max_abs;        /* largest |f16(x) - x| over finite results */
    const char *max_abs_tensor;
    double max_rel;        /* largest |f16(x) - x| / |x| over nonzero finite x */
    double max_rel_normal; /* the same over |x| >= 2^-14, where it is <= 2^-11 */
    double worst_rms;      /* largest ||f16(t) - t|| / ||t|| over tensors */
    const char *worst_rms_tensor;
} compact_stats;

/* Converts n floats to halfs and accumulates the error into s. */
static void compact_values(const float *x, uint16_t *h, uint64_t n, const char *tensor,
                           compact_stats *s)
{
    const double normal_min = ldexp(1, -14);
    double sse = 0, ssx = 0;
    for (uint64_t i = 0; i < n; i++) {
        h[i] = fm_model_f32_to_f16(x[i]);
        double xv = (double)x[i], hv = (double)fm_model_f16_to_f32(h[i]);
        if (!isfinite(xv)) {
            s->nonfinite++;
            continue;
        }
        if (!isfinite(hv)) {
            s->overflow++;
            if (fabs(xv) > s->overflow_max || !s->overflow_tensor) {
                s->overflow_max = fabs(xv);
                s->overflow_tensor = tensor;
            }
            continue;
        }
        double e = fabs(hv - xv);
        sse += e * e;
        ssx += xv * xv;
        if (e > s->max_abs || !s->max_abs_tensor) {
            s->max_abs = e;
            s->max_abs_tensor = tensor;
        }
        if (xv != 0) {
            double r = e / fabs(xv);
            if (r > s->max_rel)
                s->max_rel = r;
            if (fabs(xv) >= normal_min) {
                if (r > s->max_rel_normal)
                    s->max_rel_normal = r;
            } else {
                s->below_normal++;
            }
            if (hv == 0)
                s->to_zero++;
        }
    }
    s->values += n;
    double rms = ssx > 0 ? sqrt(sse / ssx) : 0;
    if (rms > s->worst_rms || !s->worst_rms_tensor) {
        s->worst_rms = rms;
        s->worst_rms_tensor = tensor;
    }
}

static int model_compact(const char *in, const char *out, int force)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_model_writer *w = NULL;
    uint16_t *buf = NULL;
    int rc = 1;
    compact_stats s = {0};
    size_t n_f32 = 0;
    /* Every value is read anyway: check the data CRC too, so a damaged file is not
     * turned into a good-looking compact one. */
    if (fm_model_open(&m, in, FM_MODEL_VERIFY_DATA, &err) != FM_OK)
        goto fail;
    if (!(w = fm_model_writer_new())) {
        fm_error_set(&err, FM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (copy_meta(w, m, &err) != FM_OK)
        goto fail;
    for (size_t i = 0; i < fm_model_tensor_count(m); i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        fm_status st;
        if (t->dtype == FM_MODEL_DTYPE_F16) {
            st = fm_model_writer_add_tensor_f16(w, t->name, t->ndim, t->dims, t->raw, &err);
        } else {
            uint16_t *nb = realloc(buf, (size_t)t->count * sizeof *buf);
            if (!nb) {
                fm_error_set(&err, FM_ERR_NOMEM, "%s: tensor '%s': out of memory", in, t->name);
                goto fail;
            }
            buf = nb;
            compact_values(t->data, buf, t->count, t->name, &s);
            n_f32++;
            st = fm_model_writer_add_tensor_f16(w, t->name, t->ndim, t->dims, buf, &err);
        }
        if (st != FM_OK)
            goto fail;
    }
    if (s.overflow && !force) {
        fprintf(stderr,
                "facemill model compact: %s: %" PRIu64 " values are beyond f16's range "
                "(largest |x| = %.9g in tensor '%s'; f16 holds at most 65504) and would "
                "become infinities; nothing written (--force writes them as infinities)\n",
                in, s.overflow, s.overflow_max, s.overflow_tensor);
        goto done;
    }
    if (fm_model_writer_save(w, out, &err) != FM_OK)
        goto fail;
    fm_model *o = NULL;
    uint64_t out_size = 0;
    if (fm_model_open(&o, out, 0, &err) == FM_OK)
        out_size = fm_model_file_size(o);
    fm_model_close(&o);
    printf("%s -> %s: %zu tensors, %zu converted to f16, %" PRIu64 " -> %" PRIu64 " bytes\n",
           in, out, fm_model_tensor_count(m), n_f32, fm_model_file_size(m), out_size);
    printf("  values           %" PRIu64 "; %" PRIu64 " overflowed to infinity, %" PRIu64
           " inf/NaN kept as they were\n",
           s.values, s.overflow, s.nonfinite);
    printf("  max abs error    %.3e (tensor '%s')\n", s.max_abs,
           s.max_abs_tensor ? s.max_abs_tensor : "-");
    printf("  max rel error    %.3e over |x| >= 2^-14 (f16's normal range); %.3e over all "
           "nonzero values\n",
           s.max_rel_normal, s.max_rel);
    printf("  below 2^-14      %" PRIu64 " nonzero values (fewer significant bits), %" PRIu64
           " of them became 0\n",
           s.below_normal, s.to_zero);
    printf("  worst tensor     relative RMS error %.3e (tensor '%s')\n", s.worst_rms,
           s.worst_rms_tensor ? s.worst_rms_tensor : "-");
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "facemill model compact: %s\n", fm_error_text(&err));
done:
    free(buf);
    fm_model_writer_destroy(&w);
    fm_model_close(&m);
    return rc;
}

static int model_expand(const char *in, const char *out)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_model_writer *w = NULL;
    float *buf = NULL;
    int rc = 1;
    size_t n_f16 = 0;
    char hex[2 * FM_SHA256_BYTES + 1];
    if (fm_model_open(&m, in, FM_MODEL_VERIFY_DATA, &err) != FM_OK)
        goto fail;
    if (fm_sha256_file(in, hex, &err) != FM_OK)
        goto fail;
    if (!(w = fm_model_writer_new())) {
        fm_error_set(&err, FM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (copy_meta(w, m, &err) != FM_OK ||
        fm_model_writer_add_str(w, "expand.source", base_name(in), &err) != FM_OK ||
        fm_model_writer_add_str(w, "expand.source_sha256", hex, &err) != FM_OK)
        goto fail;
    for (size_t i = 0; i < fm_model_tensor_count(m); i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        const float *data = t->data;
        if (t->dtype == FM_MODEL_DTYPE_F16) {
            float *nb = realloc(buf, (size_t)t->count * sizeof *buf);
            if (!nb) {
                fm_error_set(&err, FM_ERR_NOMEM, "%s: tensor '%s': out of memory", in, t->name);
                goto fail;
            }
            buf = nb;
            const uint16_t *h = t->raw;
            for (uint64_t k = 0; k < t->count; k++)
                buf[k] = fm_model_f16_to_f32(h[k]);
            data = buf;
            n_f16++;
        }
        if (fm_model_writer_add_tensor(w, t->name, t->ndim, t->dims, data, &err) != FM_OK)
            goto fail;
    }
    if (fm_model_writer_save(w, out, &err) != FM_OK)
        goto fail;
    printf("%s -> %s: %zu tensors, %zu expanded from f16; expand.source_sha256 %s\n", in, out,
           fm_model_tensor_count(m), n_f16, hex);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "facemill model expand: %s\n", fm_error_text(&err));
done:
    free(buf);
    fm_model_writer_destroy(&w);
    fm_model_close(&m);
    return rc;
}

int fm_cmd_model(int argc, char **argv)
{
    int force = 0;
    const cli_opt none[] = {CLI_END};
    const cli_opt compact_opts[] = {
        CLI_FLAG("--force", 0, &force,
                 "write values beyond f16's range (|x| >= 65520) as infinities instead of "
                 "refusing"),
        CLI_END,
    };
    const struct {
        const cli_cmd *cmd;
        const cli_opt *opts;
    } subs[] = {{&info_cmd, none}, {&verify_cmd, none}, {&get_cmd, none},
                {&compact_cmd, compact_opts}, {&expand_cmd, none}};
    const cli_cmd *cmd = &model_cmd;
    const cli_opt *opts = none;
    for (size_t k = 0; k < sizeof subs / sizeof subs[0]; k++)
        if (argc >= 2 && strcmp(argv[1], subs[k].cmd->name + strlen("model ")) == 0) {
            cmd = subs[k].cmd;
            opts = subs[k].opts;
            argc--;
            argv++;
            break;
        }
    fm_config c;
    cli_args a;
    int rc = cli_start(cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    char **v = a.operands;
    if (cmd == &info_cmd)
        return model_info(v[0]);
    if (cmd == &verify_cmd)
        return model_verify(a.n, v);
    if (cmd == &get_cmd)
        return model_get(v[0], v[1]);
    if (cmd == &compact_cmd)
        return model_compact(v[0], v[1], force);
    if (cmd == &expand_cmd)
        return model_expand(v[0], v[1]);
    return cli_usage_error(cmd, "unknown sub-command '%s'", v[0]);
}
