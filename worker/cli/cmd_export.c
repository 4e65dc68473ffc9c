/* cmd_export.c - `facemill export`: writes a results database out as JSONL (one
 * object per image) or CSV (one row per face) in the result schema of
 * proto/RESULTS.md, for people and programs that do not read SQLite. The database
 * may be written by a running sink meanwhile: the export is one consistent snapshot
 * (a read transaction in WAL mode). */
#include "cli_opts.h"
#include "commands.h"
#include "facemill/sink.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const cli_cmd cmd = {
    "export", "[options] DB", 1, 1,
    "Writes every image of the results database DB, ordered by source, in the\n"
    "result schema that `facemill detect` and `facemill predict` print too\n"
    "(proto/RESULTS.md):\n"
    "  jsonl  one object per image: schema (2), source, width, height, error (null\n"
    "         or {code, name, text}), job_id, sha256, model and faces (box, score,\n"
    "         landmarks, age, age_std, gender, gender_probs, race, race_probs)\n"
    "  csv    a header, then one row per face and one per image without faces;\n"
    "         columns named after the JSON fields (box.x1, gender_probs.male, ...)\n",
    NULL, NULL};

/* Indexed by fm_export_format. */
static const char *const formats[] = {"jsonl", "csv", NULL};
_Static_assert(FM_EXPORT_JSONL == 0 && FM_EXPORT_CSV == 1, "formats[] is indexed by it");

int fm_cmd_export(int argc, char **argv)
{
    const char *out_path = NULL;
    int format = FM_EXPORT_JSONL, times = 0;
    const cli_opt opts[] = {
        CLI_ENUM("--format", 0, formats, &format, "what to write (default jsonl)"),
        CLI_FLAG("--times", 0, &times,
                 "add the worker that labelled each image (NAME:PID/INDEX), the attempt "
                 "and per-stage times (JSONL worker, attempt, times_ms; CSV columns after "
                 "the others)"),
        CLI_PATH("--output", 'o', "FILE", &out_path,
                 "write to FILE (in place) instead of stdout"),
        CLI_END,
    };
    fm_config cfg;
    cli_args a;
    int code = cli_start(&cmd, opts, argc, argv, &cfg, &a);
    if (code >= 0)
        return code;
    const char *db_path = a.operands[0];
    if ((code = cli_check_output(&cmd, out_path, db_path)) >= 0)
        return code;
    code = CLI_EXIT_FAILURE;
    fm_error err = {0};
    fm_results *db = NULL;
    FILE *out = stdout;
    if (fm_results_open(&db, db_path, FM_RESULTS_READONLY | FM_RESULTS_AS_IS, &err) !=
        FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&err));
        goto done;
    }
    if (out_path && !(out = fopen(out_path, "w"))) {
        cli_fail(&cmd, "%s: %s", out_path, strerror(errno));
        out = stdout;
        goto done;
    }
    if (fm_results_export(db, out, (fm_export_format)format, times ? FM_EXPORT_TIMES : 0,
                          &err) != FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&err));
        goto done;
    }
    code = CLI_EXIT_OK;
done:
    if (out != stdout && fclose(out) != 0 && code == CLI_EXIT_OK)
        code = cli_fail(&cmd, "%s: %s", out_path, strerror(errno));
    fm_results_close(&db);
    return code;
}
