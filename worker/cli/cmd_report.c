/* cmd_report.c - `facemill report DB -o PAGE.html`: one self-contained HTML page about
 * a results database (include/facemill/report.h makes it; this file reads the
 * command line and prints what was made). */
#include "cli_opts.h"
#include "cmd_util.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/report.h"

#include <stdio.h>

static const cli_cmd cmd = {
    "report", "[options] DB -o PAGE.html", 1, 1,
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
    "millions of images is reported in bounded memory. decode.max_pixels (--set)\n"
    "bounds the originals decoded.\n",
    "exit status: 0 written, 1 failed, 2 usage error", NULL};

int fm_cmd_report(int argc, char **argv)
{
    fm_report_opts o = {0};
    o.per_cell = FM_REPORT_DEFAULT_PER_CELL;
    o.extremes = FM_REPORT_DEFAULT_EXTREMES;
    o.max_failures = FM_REPORT_DEFAULT_FAILURES;
    o.thumb_px = FM_REPORT_DEFAULT_THUMB_PX;
    const cli_opt opts[] = {
        CLI_PATH("--output", 'o', "PAGE", &o.out_path,
                 "the page to write (required; replaced when complete)"),
        CLI_PATH("--thumbs", 0, "DIR", &o.thumbs_dir,
                 "write thumbnails as JPEG files into DIR (linked from the page; made "
                 "when missing) instead of inlining them"),
        CLI_PATH("--root", 0, "DIR", &o.root,
                 "resolve relative sources against DIR (default: the current directory, "
                 "as `facemill label` saw them)"),
        CLI_STR("--title", 0, "TEXT", &o.title, "the page's title"),
        CLI_INT("--per-cell", 0, "N", 1, FM_REPORT_MAX_PER_CELL, &o.per_cell,
                "sampled faces per gender x ethnicity x age band (default 3)"),
        CLI_INT("--extremes", 0, "N", 1, FM_REPORT_MAX_EXTREMES, &o.extremes,
                "least confident and smallest faces shown (default 24 each)"),
        CLI_INT("--failures", 0, "N", 1, FM_REPORT_MAX_FAILURES, &o.max_failures,
                "failed images listed (default 100)"),
        CLI_INT("--thumb-px", 0, "N", 32, 256, &o.thumb_px,
                "thumbnail side in pixels (default 96)"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    if (!o.out_path)
        return cli_usage_error(&cmd, "no output given (-o PAGE.html)");
    o.db_path = a.operands[0];
    if ((rc = cli_check_output(&cmd, o.out_path, o.db_path)) >= 0)
        return rc;
    o.max_pixels = c.decode.max_pixels;
    fm_report_stats s;
    fm_error err = {0};
    /* --thumbs DIR with its missing parents, as --draw-dir (the report makes DIR alone) */
    if (o.thumbs_dir && fm_cmd_make_dirs(o.thumbs_dir, &err) != FM_OK)
        return cli_fail(&cmd, "--thumbs: %s", fm_error_text(&err));
    if (fm_report_write(&o, &s, &err) != FM_OK)
        return cli_fail(&cmd, "%s", fm_error_text(&err));
    fprintf(stderr,
            "facemill report: %s: %lld images, %lld faces, %lld failed; %d thumbnails "
            "(%d placeholders), %d failures listed; %zu bytes; %.1f s (queries %.1f s, "
            "originals %.1f s, page %.1f s)\n",
            o.out_path, (long long)s.images, (long long)s.faces, (long long)s.failed,
            s.thumbs, s.placeholders, s.failures_listed, s.page_bytes,
            (s.query_ms + s.thumb_ms + s.page_ms) / 1000, s.query_ms / 1000,
            s.thumb_ms / 1000, s.page_ms / 1000);
    return CLI_EXIT_OK;
}
