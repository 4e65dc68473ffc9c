/* broker_main.c - the facemill-broker program: configuration, signals, and one
 * fm_broker serving until SIGTERM or SIGINT. SIGHUP reopens log.file. Under systemd
 * it says READY=1 once its sockets are bound (include/facemill/notify.h).
 * --recover copies what a damaged journal still holds into a new one, and exits. */
#include "facemill/broker.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/notify.h"
#include "journal-impl.h"

#include <inttypes.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        fm_log_request_reopen(); /* the loop reopens the file; never a reason to stop */
    else
        stop_flag = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: facemill-broker [--config FILE] [--set KEY=VALUE]... [--recover]\n"
               "       facemill-broker --version | --help\n"
               "Serves clients (broker.clients) and workers (broker.workers), journals\n"
               "jobs (broker.journal) and takes commits from the sink (sink.commits).\n"
               "SIGTERM or SIGINT stops it; the journal keeps every unfinished job.\n"
               "SIGHUP reopens log.file (for logrotate). With metrics.file set, writes\n"
               "its metrics there every metrics.interval_ms (Prometheus text format).\n"
               "  --recover  the journal is damaged (the broker refuses to start): copy\n"
               "             every job it can read into a new journal, keep the damaged\n"
               "             file aside as JOURNAL.damaged-SECONDS, say what was kept,\n"
               "             and exit; then start the broker as usual\n");
}

/* --recover: a journal that opens and passes its check is left alone; a missing one
 * is an error, not a new empty journal (a relative broker.journal run from another
 * directory than the broker's, or a configuration without the unit's path, would
 * otherwise "recover" a file nobody uses and leave the damaged one as it was). */
static int recover(const fm_config *cfg)
{
    fm_error err = {0};
    fm_journal *j = NULL;
    const char *path = cfg->broker.journal;
    char abs[4096];
    fm_journal_abs_path(path, abs, sizeof abs);
    struct stat sb;
    const char *why = NULL;
    if (stat(path, &sb) != 0)
        why = strerror(errno);
    else if (!S_ISREG(sb.st_mode))
        why = "not a regular file";
    if (why) {
        fm_log_error("no journal at %s (%s): nothing to recover; broker.journal names the "
                     "journal (a relative path is taken from the current directory): give "
                     "the broker's own, e.g. --set "
                     "broker.journal=/var/lib/facemill/journal.db",
                     abs, why);
        return 1;
    }
    if (fm_journal_open(&j, path, cfg->broker.fsync, &err) == FM_OK) {
        fm_journal_close(&j);
        fm_log_info("journal %s passes its check: nothing to recover", abs);
        return 0;
    }
    if (err.code != FM_ERR_FORMAT) { /* no sign of damage: a full disk, say */
        fm_log_error("%s; nothing recovered, the journal is as it was",
                     fm_error_text(&err));
        return 1;
    }
    fm_log_warn("%s", fm_error_text(&err));
    char aside[4200];
    uint64_t pending = 0, committed = 0;
    if (fm_journal_recover(path, cfg->broker.fsync, aside, sizeof aside, &pending,
                           &committed, &err) != FM_OK) {
        if (aside[0])
            fm_log_error("recovery of %s failed: %s (the damaged file is at %s)", abs,
                         fm_error_text(&err), aside);
        else
            fm_log_error("recovery of %s failed: %s (the journal is as it was)", abs,
                         fm_error_text(&err));
        return 1;
    }
    fm_log_info("journal %s recovered: %" PRIu64 " jobs not yet committed and %" PRIu64
                " committed ids kept in a new journal; the damaged file is at %s. Jobs "
                "it held that could not be read are lost from the queue: submit their "
                "inputs again (job ids are stable: the sink stores each job once). Start "
                "facemill-broker to finish the kept jobs",
                path, pending, committed, aside);
    return 0;
}

int main(int argc, char **argv)
{
    fm_config cfg;
    fm_error err = {0};
    fm_config_defaults(&cfg);
    fm_log_init("broker", -1);
    if (fm_config_from_args(&cfg, &argc, argv, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 2;
    }
    int recover_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("facemill-broker %s\n", FACEMILL_VERSION);
            return 0;
        }
        if (strcmp(argv[i], "--recover") == 0) {
            recover_only = 1;
            continue;
        }
        fprintf(stderr, "facemill-broker: unknown argument '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }
    fm_log_init(NULL, cfg.log.level);
    if (fm_log_open_file(cfg.log.file, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 1;
    }
    if (recover_only)
        return recover(&cfg);
    fm_notify_init();
    long open_files = fm_notify_raise_fd_limit();
    fm_log_debug("open files: up to %ld", open_files);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    fm_broker *b = NULL;
    if (fm_broker_open(&b, &cfg, NULL, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 1;
    }
    fm_notify_ready(); /* journal open, every socket bound */
    fm_status st = fm_broker_run(b, &stop_flag, &err);
    fm_notify_stopping();
    if (st != FM_OK)
        fm_log_error("%s", fm_error_text(&err));
    fm_broker_close(&b);
    return st == FM_OK ? 0 : 1;
}
