/* sink_main.c - the facemill-sink program: reads the configuration, opens the sink
 * and serves until SIGINT/SIGTERM (include/facemill/sink.h says what it does).
 * SIGHUP reopens log.file. With metrics.file set it writes its metrics there every
 * metrics.interval_ms. Under systemd it says READY=1 once the database is open
 * and sink.results bound (include/facemill/notify.h).
 *
 *   facemill-sink [--config FILE] [--set KEY=VALUE]... [--db PATH]
 *
 * Exit codes: 0 after a clean stop, 1 on errors, 2 on usage errors.
 */
#include "facemill/auth.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/metrics.h"
#include "facemill/notify.h"
#include "facemill/sink.h"

#include <zmq.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        fm_log_request_reopen(); /* the loop reopens the file; never a reason to stop */
    else
        stop_flag = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill-sink [--config FILE] [--set KEY=VALUE]... [--db PATH]\n"
            "       facemill-sink --version | --help\n"
            "\n"
            "Receives results on sink.results (PULL), stores them in the SQLite database\n"
            "sink.db (or --db PATH) and reports commits to the broker at sink.commits.\n"
            "Stops on SIGINT or SIGTERM after committing what it holds. SIGHUP reopens\n"
            "log.file (for logrotate). With metrics.file set, writes its metrics there\n"
            "every metrics.interval_ms (Prometheus text format).\n");
}

int main(int argc, char **argv)
{
    fm_config cfg;
    fm_error err = {0};
    fm_config_defaults(&cfg);
    fm_log_init("sink", -1);
    if (fm_config_from_args(&cfg, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill-sink: %s\n", fm_error_text(&err));
        return 2;
    }
    fm_log_init(NULL, cfg.log.level);
    const char *db = cfg.sink.db;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("facemill-sink %s\n", FACEMILL_VERSION);
            return 0;
        }
        if (strcmp(argv[i], "--db") == 0) {
            /* as sink.db: "" would be SQLite's private temporary database, whose
             * results vanish at exit */
            if (i + 1 >= argc || !argv[i + 1][0]) {
                fprintf(stderr, "facemill-sink: --db needs a database path%s\n",
                        i + 1 >= argc ? "" : ", not an empty one");
                usage(stderr);
                return 2;
            }
            db = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "facemill-sink: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    if (fm_log_open_file(cfg.log.file, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 1;
    }
    fm_notify_init();
    long open_files = fm_notify_raise_fd_limit();
    fm_log_debug("open files: up to %ld", open_files);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    char name[128], host[64] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(name, sizeof name, "sink@%s:%ld", host, (long)getpid());

    int code = 1;
    fm_sink *sink = NULL;
    fm_auth *auth = NULL;
    void *zctx = zmq_ctx_new();
    if (!zctx) {
        fm_log_error("cannot create a ZeroMQ context");
        return 1;
    }
    char metrics[FM_CONFIG_STRING_MAX + 64] = "";
    if (fm_metrics_path(metrics, sizeof metrics, cfg.metrics.file, "sink") != 0) {
        fm_log_error("metrics.file: path too long");
        goto done;
    }
    /* Keys before sockets: the ZAP handler must be there before sink.results binds. */
    if (fm_auth_open(&auth, &cfg, FM_AUTH_SINK, zctx, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        goto done;
    }
    fm_sink_opts o = {
        .db_path = db,
        .results = cfg.sink.results,
        .commits = cfg.sink.commits,
        .batch = cfg.sink.batch,
        .batch_ms = cfg.sink.batch_ms,
        .heartbeat_ms = cfg.broker.heartbeat_ms,
        .max_msg_size = cfg.net.max_msg_size,
        .max_faces = cfg.detect.max_faces,
        .name = name,
        .auth = auth,
        .metrics_file = metrics,
        .metrics_interval_ms = cfg.metrics.interval_ms,
    };
    if (fm_sink_open(&sink, zctx, &o, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        goto done;
    }
    fm_log_info("storing results from %s in %s; commits to %s", cfg.sink.results, db,
                cfg.sink.commits);
    fm_notify_ready(); /* database open, sink.results bound */
    fm_status run = fm_sink_run(sink, &stop_flag, &err);
    fm_notify_stopping();
    if (run != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        goto done;
    }
    fm_sink_stats st;
    fm_sink_get_stats(sink, &st);
    fm_log_info("stopped: %lld results received, %lld stored, %lld duplicates, %lld dropped, "
                "%lld refused by the broker",
                (long long)st.received, (long long)st.stored, (long long)st.duplicates,
                (long long)st.dropped, (long long)st.refused);
    code = 0;
done:
    fm_sink_close(&sink);
    fm_auth_close(&auth); /* after the sockets it admits peers to */
    zmq_ctx_term(zctx);
    return code;
}
