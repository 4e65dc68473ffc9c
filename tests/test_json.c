/* test_json.c - the JSON writer produces exact, valid text (bytes that are not UTF-8
 * included); float32 values print as the shortest decimal that reads back as the same
 * float; the UTF-8 decoder, the identifier rules and the log escaping of text.h and
 * log.h. */
#include "facemill/json.h"
#include "facemill/log.h"
#include "facemill/text.h"
#include "fm_test.h"

#include <float.h>
#include <stdint.h>
#include <string.h>

/* Significant digits of a number's text: those of its mantissa without leading and
 * trailing zeros ("0.00120" and "1.2e-03" have 2, "176900" has 4). */
static int significant(const char *s)
{
    char d[64];
    int n = 0;
    for (; *s && *s != 'e' && n < 63; s++)
        if (*s >= '0' && *s <= '9' && (n > 0 || *s != '0'))
            d[n++] = *s;
    while (n > 1 && d[n - 1] == '0')
        n--;
    return n > 0 ? n : 1;
}

/* v printed by fm_json_format_f32 reads back as v, with no more significant digits
 * than the shortest decimal that does; returns 1 when so. */
static int f32_exact_and_short(float v)
{
    char buf[FM_JSON_F32_MAX], want[400];
    int n = fm_json_format_f32(buf, v);
    if (n <= 0 || n >= FM_JSON_F32_MAX || strtof(buf, NULL) != v)
        return 0;
    for (int p = 1; p <= 9; p++) {
        snprintf(want, sizeof want, "%.*g", p, (double)v);
        if (strtof(want, NULL) == v)
            return significant(buf) <= p;
    }
    return 0;
}

static void test_f32(void)
{
    const struct {
        float v;
        const char *want;
    } cases[] = {
        {0.5f, "0.5"},          {0.993f, "0.993"},         {406.508f, "406.508"},
        {1e-5f, "1e-05"},       {0.1f, "0.1"},             {100.f + 1.f / 3, "100.333336"},
        {200.f + 1.f / 3, "200.33333"}, {0.99999887f, "0.99999887"}, {26.f, "26"},
        {-0.0f, "-0"},          {FLT_MAX, "3.4028235e+38"}, {FLT_MIN, "1.1754944e-38"},
        {-FLT_MIN, "-1.1754944e-38"}, {FLT_TRUE_MIN, "1e-45"}, {-176900.f, "-176900"},
    };
    char buf[FM_JSON_F32_MAX];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fm_json_format_f32(buf, cases[i].v);
        CHECK_MSG(strcmp(buf, cases[i].want) == 0, "%.9g: got %s, want %s",
                  (double)cases[i].v, buf, cases[i].want);
    }
    CHECK(fm_json_format_f32(buf, NAN) == 0 && buf[0] == '\0');
    CHECK(fm_json_format_f32(buf, -INFINITY) == 0 && buf[0] == '\0');
    /* every finite float of a pseudo-random sample of bit patterns, and the floats
     * next to the powers of ten */
    uint32_t x = 12345, bad = 0, tried = 0;
    for (int i = 0; i < 300000; i++) {
        x = x * 1664525u + 1013904223u;
        float v;
        memcpy(&v, &x, sizeof v);
        if (!isfinite(v))
            continue;
        tried++;
        if (!f32_exact_and_short(v) && bad++ < 5)
            CHECK_MSG(0, "%.9g (bits %08x): %s", (double)v, (unsigned)x,
                      (fm_json_format_f32(buf, v), buf));
    }
    for (int e = -38; e <= 38; e++) {
        float p = (float)pow(10, e);
        float near[3] = {nextafterf(p, 0), p, nextafterf(p, INFINITY)};
        for (int k = 0; k < 3; k++, tried++)
            if (isfinite(near[k]) && !f32_exact_and_short(near[k]) && bad++ < 5)
                CHECK_MSG(0, "%.9g: %s", (double)near[k],
                          (fm_json_format_f32(buf, near[k]), buf));
    }
    CHECK_MSG(bad == 0, "%u of %u floats not printed exactly and shortest", bad, tried);
}

/* s written by fm_json_str, without the quotes' check: the text between them. */
static char *json_string(const char *s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fm_json j;
    fm_json_init(&j, f);
    fm_json_str(&j, s);
    fclose(f);
    return buf;
}

static void test_utf8(void)
{
    /* Each invalid byte becomes \ufffd, valid sequences (2, 3, 4 bytes) stay as they
     * are: a truncated sequence, a lone continuation byte, overlong forms, a
     * surrogate, beyond U+10FFFF. */
    const struct {
        const char *in, *want;
    } cases[] = {
        {"ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\"ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""},
        {"a\xff" "b", "\"a\\ufffdb\""},
        {"\x80", "\"\\ufffd\""},
        {"\xc3", "\"\\ufffd\""},
        {"\xc0\x80", "\"\\ufffd\\ufffd\""},
        {"\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\""},
        {"\xed\xa0\x80x", "\"\\ufffd\\ufffd\\ufffdx\""},
        {"\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""},
        {"\xe2\x82", "\"\\ufffd\\ufffd\""},
        {"\x1b[31m\x7f", "\"\\u001b[31m\x7f\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = json_string(cases[i].in);
        CHECK_MSG(got && strcmp(got, cases[i].want) == 0, "case %zu: got %s, want %s", i,
                  got ? got : "", cases[i].want);
        free(got);
    }
}

static void test_text_rules(void)
{
    char why[FM_TEXT_WHY_MAX];
    CHECK(fm_text_check("job-1 \xc3\xa9t\xc3\xa9", 256, why, sizeof why) == NULL);
    const char *r = fm_text_check("", 256, why, sizeof why);
    CHECK(r && strcmp(r, "empty") == 0);
    CHECK(fm_text_check(NULL, 256, why, sizeof why) != NULL);
    r = fm_text_check("a\xffX", 256, why, sizeof why);
    CHECK_MSG(r && strstr(r, "not valid UTF-8 (byte 0xff at 1)"), "%s", r ? r : "");
    r = fm_text_check("w\n\x1b[31m", 256, why, sizeof why);
    CHECK_MSG(r && strstr(r, "control character U+000A at byte 1"), "%s", r ? r : "");
    r = fm_text_check("tab\there", 256, why, sizeof why);
    CHECK(r && strstr(r, "U+0009"));
    r = fm_text_check("del\x7f", 256, why, sizeof why);
    CHECK(r && strstr(r, "U+007F"));
    r = fm_text_check("c1\xc2\x85", 256, why, sizeof why); /* NEL, a C1 control */
    CHECK(r && strstr(r, "U+0085"));
    char longer[300];
    memset(longer, 'x', sizeof longer - 1);
    longer[257] = '\0';
    r = fm_text_check(longer, 256, why, sizeof why);
    CHECK_MSG(r && strcmp(r, "longer than 256 bytes (257)") == 0, "%s", r ? r : "");
    longer[256] = '\0';
    CHECK(fm_text_check(longer, 256, why, sizeof why) == NULL);
}

static void test_log_escape(void)
{
    char buf[64];
    const char *e = fm_log_escape("w\n2026 INFO forged\x1b[31m\\\xff\xc2\x85\xc3\xa9", buf,
                                  sizeof buf);
    CHECK_MSG(strcmp(e, "w\\x0a2026 INFO forged\\x1b[31m\\\\\\xff\\u0085\xc3\xa9") == 0,
              "got %s", e);
    for (const char *p = e; *p; p++)
        CHECK_MSG((unsigned char)*p >= 0x20 && *p != 0x7f, "raw control 0x%02x", *p);
    char small[16];
    e = fm_log_escape("abcdefghijklmnopqrstuvwxyz", small, sizeof small);
    CHECK_MSG(strcmp(e, "abcdefghijkl...") == 0, "cut: %s", e);
    e = fm_log_escape(NULL, small, sizeof small);
    CHECK(e[0] == '\0');
}

int main(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fm_json j;
    fm_json_init(&j, f);
    fm_json_obj_begin(&j);
    fm_json_key(&j, "path");
    fm_json_str(&j, "a\"b\\c\n\t\x01\xc3\xa9");
    fm_json_key(&j, "n");
    fm_json_int(&j, -42);
    fm_json_key(&j, "xs");
    fm_json_arr_begin(&j);
    fm_json_num(&j, 0.5, 6);
    fm_json_num(&j, NAN, 6);
    fm_json_arr_begin(&j);
    fm_json_arr_end(&j);
    fm_json_obj_begin(&j);
    fm_json_key(&j, "ok");
    fm_json_bool(&j, 1);
    fm_json_obj_end(&j);
    fm_json_arr_end(&j);
    fm_json_key(&j, "e");
    fm_json_null(&j);
    fm_json_key(&j, "f");
    fm_json_arr_begin(&j);
    fm_json_f32(&j, 0.993f);
    fm_json_f32(&j, NAN);
    fm_json_arr_end(&j);
    fm_json_obj_end(&j);
    fm_json_newline(&j);
    fm_json_arr_begin(&j);
    fm_json_int(&j, 1);
    fm_json_int(&j, 2);
    fm_json_arr_end(&j);
    fm_json_newline(&j);
    fclose(f);
    const char *want = "{\"path\":\"a\\\"b\\\\c\\n\\t\\u0001\xc3\xa9\",\"n\":-42,"
                       "\"xs\":[0.5,null,[],{\"ok\":true}],\"e\":null,\"f\":[0.993,null]}\n"
                       "[1,2]\n";
    CHECK_MSG(strcmp(buf, want) == 0, "got %s", buf);
    free(buf);
    test_f32();
    test_utf8();
    test_text_rules();
    test_log_escape();
    return fm_test_done("test_json");
}
