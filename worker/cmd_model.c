/* cmd_model.c - `facemill model`: look inside model files and check them.
 *
 * Why it exists: a model file is the one artefact that moves between converters, the
 * trainer and every worker machine. Operators need to see what a file holds (its
 * metadata and tensor table) and to check a copy end to end, data CRC included,
 * before a fleet maps it:
 *   facemill model info FILE
 *   facemill model verify FILE...
 */
#include "commands.h"
#include "facemill/model.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define ARRAY_SHOWN 16   /* array elements printed by `info` before "..." */
#define STRING_SHOWN 160 /* bytes of a string printed by `info` before "..." */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill model info FILE       metadata and tensor table\n"
            "       facemill model verify FILE...  full check, data CRC included;\n"
            "                                      exit 1 when any file is bad\n");
}

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
    for (size_t i = 0; i < n_meta; i++) {
        const char *key;
        fm_model_meta_type type;
        char tbuf[32];
        fm_model_meta_at(m, i, &key, &type);
        format_type(tbuf, sizeof tbuf, m, key, type);
        printf("  %-*s  %-10s  ", key_w, key, tbuf);
        print_meta_value(m, key, type);
        putchar('\n');
    }

    uint64_t total = 0;
    int name_w = 4;
    for (size_t i = 0; i < n_tensors; i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        total += t->nbytes;
        if ((int)t->name_len > name_w)
            name_w = t->name_len > 48 ? 48 : (int)t->name_len;
    }
    printf("tensors   %zu, %" PRIu64 " bytes of data (%.1f MiB)\n", n_tensors, total,
           (double)total / (1024.0 * 1024.0));
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
               t->name, "f32", shape, t->offset, t->nbytes);
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

int fm_cmd_model(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "info") == 0)
        return model_info(argv[2]);
    if (argc >= 3 && strcmp(argv[1], "verify") == 0)
        return model_verify(argc - 2, argv + 2);
    usage(stderr);
    return 2;
}
