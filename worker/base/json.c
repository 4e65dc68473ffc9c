/* json.c - the streaming JSON writer of json.h. */
#include "facemill/json.h"
#include "facemill/text.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void fm_json_init(fm_json *j, FILE *out)
{
    j->out = out;
    j->depth = 0;
    j->after_key = 0;
    for (int i = 0; i < FM_JSON_MAX_DEPTH; i++)
        j->need_comma[i] = 0;
}

/* Writes the separator a new value needs at this position. */
static void value_prefix(fm_json *j)
{
    if (j->after_key) {
        j->after_key = 0;
        return;
    }
    if (j->need_comma[j->depth])
        fputc(',', j->out);
    j->need_comma[j->depth] = 1;
}

static void open_scope(fm_json *j, int c)
{
    value_prefix(j);
    fputc(c, j->out);
    if (j->depth < FM_JSON_MAX_DEPTH - 1)
        j->depth++;
    j->need_comma[j->depth] = 0;
}

static void close_scope(fm_json *j, int c)
{
    fputc(c, j->out);
    if (j->depth > 0)
        j->depth--;
}

void fm_json_obj_begin(fm_json *j) { open_scope(j, '{'); }
void fm_json_obj_end(fm_json *j) { close_scope(j, '}'); }
void fm_json_arr_begin(fm_json *j) { open_scope(j, '['); }
void fm_json_arr_end(fm_json *j) { close_scope(j, ']'); }

/* Writes s as a JSON string. Bytes that are not valid UTF-8 (an old database, a file
 * name in another encoding) become U+FFFD each, so every line is valid JSON (RFC 8259
 * asks for UTF-8) and the same bytes always give the same text. */
static void write_escaped(FILE *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)p);
    fputc('"', out);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = fm_utf8_next(p + i, n - i, &cp);
        if (k == 0) {
            fputs("\\ufffd", out);
            i++;
            continue;
        }
        switch (cp) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (cp < 0x20)
                fprintf(out, "\\u%04x", (unsigned)cp);
            else
                fwrite(p + i, 1, (size_t)k, out);
        }
        i += (size_t)k;
    }
    fputc('"', out);
}

void fm_json_key(fm_json *j, const char *key)
{
    value_prefix(j);
    write_escaped(j->out, key);
    fputc(':', j->out);
    j->after_key = 1;
}

void fm_json_str(fm_json *j, const char *s)
{
    value_prefix(j);
    write_escaped(j->out, s);
}

void fm_json_int(fm_json *j, int64_t v)
{
    value_prefix(j);
    fprintf(j->out, "%lld", (long long)v);
}

void fm_json_num(fm_json *j, double v, int digits)
{
    value_prefix(j);
    if (!isfinite(v))
        fputs("null", j->out);
    else
        fprintf(j->out, "%.*g", digits, v);
}

int fm_json_format_f32(char buf[FM_JSON_F32_MAX], float v)
{
    /* Any decimal of 6 significant digits or fewer survives a round trip through a
     * normal float, so when a shorter one reads back as v, %.6g prints it (trailing
     * zeros dropped); 9 digits always read back. Subnormals hold fewer digits: they
     * are tried from 1. */
    char text[FM_JSON_F32_MAX] = "";
    int n = 0;
    for (int digits = fabsf(v) < FLT_MIN ? 1 : 6; isfinite(v) && digits <= 9; digits++) {
        n = snprintf(text, sizeof text, "%.*g", digits, (double)v);
        if (strtof(text, NULL) == v)
            break;
    }
    memcpy(buf, text, sizeof text);
    return n;
}

void fm_json_f32(fm_json *j, float v)
{
    char buf[FM_JSON_F32_MAX];
    value_prefix(j);
    fputs(fm_json_format_f32(buf, v) ? buf : "null", j->out);
}

void fm_json_bool(fm_json *j, int v)
{
    value_prefix(j);
    fputs(v ? "true" : "false", j->out);
}

void fm_json_null(fm_json *j)
{
    value_prefix(j);
    fputs("null", j->out);
}

void fm_json_newline(fm_json *j)
{
    fputc('\n', j->out);
    fflush(j->out);
    j->need_comma[0] = 0;
}
