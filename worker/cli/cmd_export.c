/* cmd_export.c - `facemill export`: writes a results database out as JSONL (one
 * object per image) or CSV (one row per face) in the result schema of
 * proto/RESULTS.md, for people and programs that do not read SQLite. The database
 * may be written by a running sink meanwhile: the export is one consistent snapshot
 * (a read transaction in WAL mode). */
#include "commands.h"
#include "facemill/sink.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill export [--format jsonl|csv] [--times] [-o FILE] DB\n"
            "\n"
            "Writes every image of the results database DB, ordered by source, in the\n"
            "result schema that `facemill detect` and `facemill predict` print too\n"
            "(proto/RESULTS.md):\n"
            "  jsonl  one object per image: schema (2), source, width, height, error (null\n"
            "         or {code, name, text}), job_id, sha256, model and faces (box, score,\n"
            "         landmarks, age, age_std, gender, gender_probs, race, race_probs)\n"
            "  csv    a header, then one row per face and one per image without faces;\n"
            "         columns named after the JSON fields (box.x1, gender_probs.male, ...)\n"
            "--times adds the worker that labelled each image (NAME:PID/INDEX), the\n"
            "attempt and per-stage times (JSONL worker, attempt, times_ms; CSV columns\n"
            "after the others).\n"
            "Output goes to stdout unless -o FILE is given (written in place).\n");
}

int fm_cmd_export(int argc, char **argv)
{
    const char *format = "jsonl", *out_path = NULL, *db_path = NULL;
    int flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--format") == 0 && i + 1 < argc) {
            format = argv[++i];
        } else if (strncmp(a, "--format=", 9) == 0) {
            format = a + 9;
        } else if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && i + 1 < argc) {
            out_path = argv[++i];
        } else if (strcmp(a, "--times") == 0) {
            flags |= FM_EXPORT_TIMES;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "facemill export: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        } else if (!db_path) {
            db_path = a;
        } else {
            fprintf(stderr, "facemill export: more than one database given\n\n");
            usage(stderr);
            return 2;
        }
    }
    fm_export_format fmt;
    if (strcmp(format, "jsonl") == 0) {
        fmt = FM_EXPORT_JSONL;
    } else if (strcmp(format, "csv") == 0) {
        fmt = FM_EXPORT_CSV;
    } else {
        fprintf(stderr, "facemill export: unknown format '%s' (jsonl or csv)\n", format);
        return 2;
    }
    if (!db_path) {
        usage(stderr);
        return 2;
    }
    int code = 1;
    fm_error err = {0};
    fm_results *db = NULL;
    FILE *out = stdout;
    if (fm_results_open(&db, db_path, FM_RESULTS_READONLY, &err) != FM_OK) {
        fprintf(stderr, "facemill export: %s\n", fm_error_text(&err));
        goto done;
    }
    if (out_path && !(out = fopen(out_path, "w"))) {
        fprintf(stderr, "facemill export: %s: %s\n", out_path, strerror(errno));
        out = stdout;
        goto done;
    }
    if (fm_results_export(db, out, fmt, flags, &err) != FM_OK) {
        fprintf(stderr, "facemill export: %s\n", fm_error_text(&err));
        goto done;
    }
    code = 0;
done:
    if (out != stdout && fclose(out) != 0 && code == 0) {
        fprintf(stderr, "facemill export: %s: %s\n", out_path, strerror(errno));
        code = 1;
    }
    fm_results_close(&db);
    return code;
}
