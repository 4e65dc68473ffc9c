/* cmd_report.c - `facemill report DB -o PAGE.html`: one self-contained HTML page about
 * a results database (include/facemill/report.h makes it; this file reads the
 * command line and prints what was made). */
#include "cmd_util.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/report.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill report DB -o PAGE.html [--thumbs DIR] [--root DIR]\n"
            "                       [--title TEXT] [--per-cell N] [--extremes N]\n"
            "                       [--failures N] [--thumb-px N]\n"
            "\n"
            "Writes one HTML page about the results database DB (inline CSS, SVG and\n"
            "script; it opens from file:// and loads nothing from elsewhere):\n"
            "  summary        images, faces, images without faces, failures by kind, the\n"
            "                 models and runs that labelled them, time span and rate\n"
            "  distributions  age, gender, ethnicity, faces per image, detection score,\n"
            "                 face size, confidences, age spread (SVG charts)\n"
            "  faces          a sample of faces per gender x ethnicity x age band, the\n"
            "                 least confident and the smallest faces, with filters\n"
            "  failed images  each with its reason, up to a bound\n"
            "Thumbnails are cut from the original photos named by each result's source:\n"
            "a file, or ARCHIVE:MEMBER inside a tar or zip archive; a missing original\n"
            "gets a placeholder. Counts and charts are SQL aggregates, so a database of\n"
            "millions of images is reported in bounded memory.\n"
            "\n"
            "  -o, --output PAGE  the page to write (replaced when complete)\n"
            "  --thumbs DIR       write thumbnails as JPEG files into DIR (linked from the\n"
            "                     page) instead of inlining them\n"
            "  --root DIR         resolve relative sources against DIR (default: the\n"
            "                     current directory, as `facemill label` saw them)\n"
            "  --title TEXT       the page's title\n"
            "  --per-cell N       sampled faces per gender x ethnicity x age band (1..20,\n"
            "                     default 3)\n"
            "  --extremes N       least confident and smallest faces shown (1..200,\n"
            "                     default 24 each)\n"
            "  --failures N       failed images listed (1..10000, default 100)\n"
            "  --thumb-px N       thumbnail side in pixels (32..256, default 96)\n"
            "decode.max_pixels (--set) bounds the originals decoded.\n"
            "Exit: 0 written, 1 failed, 2 usage.\n");
}

/* An integer option in [lo, hi] into *out; -1 (after a message) when it is not one. */
static int int_opt(const char *name, const char *v, int lo, int hi, int *out)
{
    double d;
    if (fm_cmd_parse_num(v, lo, hi, &d) != 0 || d != (int)d) {
        fprintf(stderr, "facemill report: %s takes a whole number in %d..%d\n", name, lo, hi);
        return -1;
    }
    *out = (int)d;
    return 0;
}

/* Sets the option names[k] of o to v; returns 0, or -1 for a bad value. */
static int set_opt(int k, const char *v, fm_report_opts *o)
{
    switch (k) {
    case 0:
    case 1: o->out_path = v; return 0;
    case 2: o->thumbs_dir = v; return 0;
    case 3: o->root = v; return 0;
    case 4: o->title = v; return 0;
    case 5: return int_opt("--per-cell", v, 1, FM_REPORT_MAX_PER_CELL, &o->per_cell);
    case 6: return int_opt("--extremes", v, 1, FM_REPORT_MAX_EXTREMES, &o->extremes);
    case 7: return int_opt("--failures", v, 1, FM_REPORT_MAX_FAILURES, &o->max_failures);
    default: return int_opt("--thumb-px", v, 32, 256, &o->thumb_px);
    }
}

/* Reads the command's own options into o; returns 0, or 2 for a usage error. */
static int parse(int argc, char **argv, fm_report_opts *o)
{
    static const char *const names[] = {"-o", "--output", "--thumbs", "--root", "--title",
                                        "--per-cell", "--extremes", "--failures",
                                        "--thumb-px"};
    for (int i = 1; i < argc; i++) {
        const char *v = NULL, *a = argv[i];
        int m = 0, k = 0;
        for (; k < (int)(sizeof names / sizeof names[0]) && m == 0; k++)
            m = fm_cmd_take_opt(argc, argv, &i, names[k], &v);
        if (m < 0) {
            fprintf(stderr, "facemill report: %s needs a value\n\n", a);
            return 2;
        }
        if (m > 0) {
            if (set_opt(k - 1, v, o) != 0)
                return 2;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "facemill report: unknown option '%s'\n\n", a);
            return 2;
        } else if (!o->db_path) {
            o->db_path = a;
        } else {
            fprintf(stderr, "facemill report: more than one database given\n\n");
            return 2;
        }
    }
    if (!o->db_path || !o->out_path) {
        fprintf(stderr, "facemill report: %s\n\n",
                !o->db_path ? "no database given" : "no output given (-o PAGE.html)");
        return 2;
    }
    return 0;
}

int fm_cmd_report(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    fm_config c;
    fm_error err = {0};
    fm_config_defaults(&c);
    if (fm_config_from_args(&c, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill report: %s\n", fm_error_text(&err));
        return 2;
    }
    fm_log_init("report", c.log.level);
    fm_report_opts o = {0};
    o.max_pixels = c.decode.max_pixels;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    fm_report_stats s;
    if (fm_report_write(&o, &s, &err) != FM_OK) {
        fprintf(stderr, "facemill report: %s\n", fm_error_text(&err));
        return 1;
    }
    fprintf(stderr,
            "facemill report: %s: %lld images, %lld faces, %lld failed; %d thumbnails "
            "(%d placeholders), %d failures listed; %zu bytes; %.1f s (queries %.1f s, "
            "originals %.1f s, page %.1f s)\n",
            o.out_path, (long long)s.images, (long long)s.faces, (long long)s.failed,
            s.thumbs, s.placeholders, s.failures_listed, s.page_bytes,
            (s.query_ms + s.thumb_ms + s.page_ms) / 1000, s.query_ms / 1000,
            s.thumb_ms / 1000, s.page_ms / 1000);
    return 0;
}
