/* cmd_submit.c - `facemill submit`, `facemill status` and `facemill label`: the user's
 * side of the service (include/facemill/client.h does the work).
 *
 * `facemill label` is the one-machine mode: it runs a broker and a sink as threads of
 * this process and the workers as child processes over ipc://, then submits its
 * inputs like `facemill submit`. Why threads for the broker and the sink: one process
 * holds the results database and the journal, so a Ctrl-C or a kill -9 of `facemill
 * label` takes both down together (nothing is left holding the database), and the
 * client reaches the broker over inproc:// without a socket file. Workers are
 * processes because a worker process owns a pipeline and its memory. When this process
 * dies without stopping them (kill -9), the broker and sink die with it, so there is
 * nothing to finish or hand back: facemill-worker runs with --die-with-parent and gets
 * SIGKILL from the kernel (PR_SET_PDEATHSIG), and so do its pipeline processes.
 *
 * Resuming: job ids are stable (tag "label", the image's name and content hash), so a
 * rerun skips every image the results database already holds and submits the rest;
 * the database is the only state that matters (the broker's journal lives in a
 * temporary run directory and starts empty every run).
 *
 * Exit codes: 0 every image labelled; 1 some images failed (error results); 2 usage;
 * 3 the run did not finish (interrupted, broker unreachable, worker died, ...).
 */
#define _GNU_SOURCE /* prctl's PR_SET_PDEATHSIG, mkdtemp */
#include "commands.h"
#include "facemill/broker.h"
#include "facemill/client.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/modelpath.h"
#include "facemill/sink.h"
#include "facemill/wire.h"

#include <zmq.h>

#include <errno.h>
#include <ftw.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_ALL_OK = 0, EXIT_SOME_FAILED = 1, EXIT_USAGE = 2, EXIT_INCOMPLETE = 3 };

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* SIGINT/SIGTERM set stop_flag; no SA_RESTART, so blocking waits return EINTR. */
static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int parse_progress(const char *s, fm_progress_mode *m)
{
    static const char *const names[] = {"auto", "bar", "lines", "none"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *m = (fm_progress_mode)i;
            return 0;
        }
    return -1;
}

static void print_summary(const char *what, const fm_client_summary *s, fm_status st)
{
    fprintf(stderr,
            "%s: %lld images: %lld committed, %lld already stored, %lld failed%s\n", what,
            (long long)s->total, (long long)s->committed, (long long)s->skipped,
            (long long)s->failed, st == FM_OK ? "" : " (run not finished)");
    if (s->slow_downs)
        fprintf(stderr, "%s: the broker asked to slow down %lld times\n", what,
                (long long)s->slow_downs);
}

static int exit_code(fm_status st, const fm_client_summary *s)
{
    if (st != FM_OK)
        return EXIT_INCOMPLETE;
    return s->failed ? EXIT_SOME_FAILED : EXIT_ALL_OK;
}

/* ---- facemill submit ------------------------------------------------------------- */

static void submit_usage(FILE *out)
{
    fprintf(out,
            "usage: facemill submit [--tag NAME] [--by-path] [--all]\n"
            "                       [--progress auto|bar|lines|none] INPUT...\n"
            "\n"
            "Submits every image of the INPUTs to the broker at broker.clients and waits\n"
            "until each result is stored by the sink. An INPUT is a directory (walked\n"
            "recursively), an image file, a tar or zip archive, or - for a list of paths\n"
            "on stdin (one per line). Directories and archives contribute files with image\n"
            "extensions (--all: every file).\n"
            "  --tag NAME   run name (default submit-HOST-TIME-PID); job ids derive from\n"
            "               it, so submitting again with the same tag resumes a run\n"
            "  --by-path    send absolute paths instead of bytes (workers share storage)\n"
            "Exit: 0 all images labelled, 1 some failed, 2 usage, 3 run not finished.\n"
            "Config options (--config FILE, --set KEY=VALUE) come before or after.\n");
}

int fm_cmd_submit(int argc, char **argv)
{
    fm_config cfg;
    fm_error err = {0};
    fm_config_defaults(&cfg);
    if (fm_config_from_args(&cfg, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill submit: %s\n", fm_error_text(&err));
        return EXIT_USAGE;
    }
    fm_log_init("submit", cfg.log.level);
    fm_client_opts o;
    fm_client_opts_from_config(&o, &cfg);
    char **inputs = calloc((size_t)argc, sizeof *inputs);
    int n_inputs = 0;
    char tag[256];
    const char *tag_opt = NULL;
    if (!inputs)
        return EXIT_INCOMPLETE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            submit_usage(stdout);
            free(inputs);
            return 0;
        } else if (strcmp(a, "--tag") == 0 && i + 1 < argc) {
            tag_opt = argv[++i];
        } else if (strcmp(a, "--by-path") == 0) {
            o.by_path = 1;
        } else if (strcmp(a, "--all") == 0) {
            o.all_files = 1;
        } else if (strcmp(a, "--progress") == 0 && i + 1 < argc &&
                   parse_progress(argv[i + 1], &o.progress) == 0) {
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "facemill submit: unknown option '%s'\n\n", a);
            submit_usage(stderr);
            free(inputs);
            return EXIT_USAGE;
        } else {
            inputs[n_inputs++] = argv[i];
        }
    }
    if (n_inputs == 0) {
        submit_usage(stderr);
        free(inputs);
        return EXIT_USAGE;
    }
    if (tag_opt) {
        snprintf(tag, sizeof tag, "%s", tag_opt);
    } else {
        char host[64] = "host", when[32];
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y%m%dT%H%M%SZ", &tm);
        snprintf(tag, sizeof tag, "submit-%s-%s-%ld", host, when, (long)getpid());
        fprintf(stderr, "facemill submit: tag %s (pass --tag %s to resume this run)\n", tag,
                tag);
    }
    o.tag = tag;
    install_signals();
    o.stop = &stop_flag;
    fm_client_summary sum;
    fm_status st = fm_client_submit(&o, inputs, n_inputs, &sum, &err);
    if (st != FM_OK)
        fprintf(stderr, "facemill submit: %s\n", fm_error_text(&err));
    print_summary("facemill submit", &sum, st);
    free(inputs);
    return exit_code(st, &sum);
}

/* ---- facemill status ------------------------------------------------------------- */

int fm_cmd_status(int argc, char **argv)
{
    fm_config cfg;
    fm_error err = {0};
    fm_config_defaults(&cfg);
    if (fm_config_from_args(&cfg, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill status: %s\n", fm_error_text(&err));
        return EXIT_USAGE;
    }
    const char *tag = NULL;
    long timeout = 5000;
    fm_status_format format = FM_STATUS_TEXT;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tag") == 0 && i + 1 < argc) {
            tag = argv[++i];
        } else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc &&
                   (strcmp(argv[i + 1], "text") == 0 ||
                    strcmp(argv[i + 1], "prometheus") == 0)) {
            format = strcmp(argv[++i], "text") == 0 ? FM_STATUS_TEXT : FM_STATUS_PROMETHEUS;
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout = strtol(argv[++i], NULL, 10);
        } else {
            int help = strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
            fprintf(help ? stdout : stderr,
                    "usage: facemill status [--tag NAME] [--timeout MS] "
                    "[--format text|prometheus]\n"
                    "\n"
                    "Shows the broker's queue depth, workers and their credit, commit rate and\n"
                    "failures (and the counts of one run with --tag). --format prometheus\n"
                    "prints them in the Prometheus text format (facemill_jobs_queued, ...).\n");
            return help ? 0 : EXIT_USAGE;
        }
    }
    fm_log_init("status", cfg.log.level);
    if (fm_client_status_as(cfg.broker.clients, tag, timeout > 0 ? timeout : 5000,
                            cfg.net.max_msg_size, format, stdout, &err) != FM_OK) {
        fprintf(stderr, "facemill status: %s\n", fm_error_text(&err));
        return 1;
    }
    return 0;
}

/* ---- facemill label -------------------------------------------------------------- */

typedef struct service_thread {
    pthread_t th;
    int started;
    volatile sig_atomic_t stop;
    fm_broker *broker; /* one of the two */
    fm_sink *sink;
    fm_status rc;
    fm_error err;
} service_thread;

static void *run_service(void *arg)
{
    service_thread *t = arg;
    if (t->broker)
        t->rc = fm_broker_run(t->broker, &t->stop, &t->err);
    else
        t->rc = fm_sink_run(t->sink, &t->stop, &t->err);
    if (t->rc != FM_OK)
        fm_log_error("%s", fm_error_text(&t->err));
    return NULL;
}

typedef struct worker_child {
    pid_t pid;
    int status;
    int exited;
} worker_child;

/* tick callback: stop the run when the worker program has exited. */
static int check_worker(void *arg, fm_error *err)
{
    worker_child *w = arg;
    if (w->exited || waitpid(w->pid, &w->status, WNOHANG) != w->pid)
        return 0;
    w->exited = 1;
    fm_error_set(err, FM_ERR_INTERNAL, "facemill-worker exited (%s %d) before the run ended",
                 WIFEXITED(w->status) ? "status" : "signal",
                 WIFEXITED(w->status) ? WEXITSTATUS(w->status) : WTERMSIG(w->status));
    return 1;
}

static void stop_worker(worker_child *w)
{
    if (w->pid <= 0 || w->exited)
        return;
    kill(w->pid, SIGTERM);
    for (int i = 0; i < 150; i++) { /* up to 15 s to finish or hand back */
        if (waitpid(w->pid, &w->status, WNOHANG) == w->pid) {
            w->exited = 1;
            return;
        }
        nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
    }
    fm_log_warn("facemill-worker did not stop in time: killed");
    kill(w->pid, SIGKILL);
    waitpid(w->pid, &w->status, 0);
    w->exited = 1;
}

/* The facemill-worker next to this program, or $FACEMILL_WORKER. */
static void worker_program(char *buf, size_t size)
{
    const char *env = getenv("FACEMILL_WORKER");
    if (env && env[0]) {
        snprintf(buf, size, "%s", env);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        snprintf(buf, size, "facemill-worker");
        return;
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash)
        slash[1] = '\0';
    size_t len = strlen(self);
    if (len + sizeof "facemill-worker" > size) {
        snprintf(buf, size, "facemill-worker");
        return;
    }
    memcpy(buf, self, len);
    memcpy(buf + len, "facemill-worker", sizeof "facemill-worker");
}

static pid_t spawn_worker(char **args, fm_error *err)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fm_error_set(err, FM_ERR_IO, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* Die with the label process, however it dies. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        execv(args[0], args);
        fprintf(stderr, "facemill label: cannot run %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Removes the run directories of label processes that died without cleaning up
 * (kill -9, power loss): those whose "pid" file names no living process. */
static void remove_stale_run_dirs(void)
{
    glob_t g;
    if (glob("/tmp/facemill-label.*/pid", 0, NULL, &g) != 0)
        return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        FILE *f = fopen(g.gl_pathv[i], "r");
        long pid = 0;
        if (!f)
            continue;
        int n = fscanf(f, "%ld", &pid);
        fclose(f);
        if (n != 1 || pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH)) {
            char *slash = strrchr(g.gl_pathv[i], '/');
            *slash = '\0';
            nftw(g.gl_pathv[i], remove_entry, 8, FTW_DEPTH | FTW_PHYS);
        }
    }
    globfree(&g);
}

static void label_usage(FILE *out)
{
    fprintf(out,
            "usage: facemill label INPUT... -o RESULTS.db [-j N] [--by-path] [--all]\n"
            "                      [--progress auto|bar|lines|none] [--worker-arg ARG]...\n"
            "\n"
            "Labels every image of the INPUTs on this machine: runs a broker and a sink in\n"
            "this process and N worker processes (-j N; default worker.processes, 0: one\n"
            "per core) over ipc://, and stores the results in RESULTS.db (export it with\n"
            "`facemill export`). INPUTs are as for `facemill submit`. Running it again on\n"
            "the same inputs and database skips what is stored and labels the rest, so an\n"
            "interrupted run (Ctrl-C, kill, power loss) is resumed by rerunning it.\n"
            "--worker-arg passes ARG to facemill-worker (e.g. --decode-only).\n"
            "Exit: 0 all images labelled, 1 some failed, 2 usage, 3 run not finished.\n");
}

/* Removes --config/--set options from argv into the worker's arguments (they are
 * read again by fm_config_from_args for this process). */
static int collect_config_args(int argc, char **argv, char **wargs, int *nw)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "--set") == 0) &&
            i + 1 < argc) {
            wargs[(*nw)++] = argv[i];
            wargs[(*nw)++] = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0 || strncmp(argv[i], "--set=", 6) == 0) {
            wargs[(*nw)++] = argv[i];
        }
    }
    return 0;
}

int fm_cmd_label(int argc, char **argv)
{
    int code = EXIT_INCOMPLETE;
    fm_config cfg;
    fm_error err = {0};
    /* worker argv: program, --processes N, config args, endpoint overrides, extras */
    char **wargs = calloc((size_t)argc * 2 + 16, sizeof *wargs);
    char **inputs = calloc((size_t)argc + 1, sizeof *inputs);
    if (!wargs || !inputs) {
        free(wargs);
        free(inputs);
        return EXIT_INCOMPLETE;
    }
    int nw = 3, n_inputs = 0; /* slots 0..2: program, --processes, N */
    collect_config_args(argc, argv, wargs, &nw);
    fm_config_defaults(&cfg);
    if (fm_config_from_args(&cfg, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill label: %s\n", fm_error_text(&err));
        free(wargs);
        free(inputs);
        return EXIT_USAGE;
    }
    fm_log_init("label", cfg.log.level);
    fm_client_opts o;
    fm_client_opts_from_config(&o, &cfg);
    const char *db_path = NULL;
    long procs = cfg.worker.processes;
    char **extra = calloc((size_t)argc + 1, sizeof *extra);
    int n_extra = 0;
    if (!extra) {
        free(wargs);
        free(inputs);
        return EXIT_INCOMPLETE;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            label_usage(stdout);
            code = 0;
            goto out_args;
        } else if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && i + 1 < argc) {
            db_path = argv[++i];
        } else if ((strcmp(a, "-j") == 0 || strcmp(a, "--workers") == 0) && i + 1 < argc) {
            procs = strtol(argv[++i], NULL, 10);
        } else if (strcmp(a, "--by-path") == 0) {
            o.by_path = 1;
        } else if (strcmp(a, "--all") == 0) {
            o.all_files = 1;
        } else if (strcmp(a, "--progress") == 0 && i + 1 < argc &&
                   parse_progress(argv[i + 1], &o.progress) == 0) {
            i++;
        } else if (strcmp(a, "--worker-arg") == 0 && i + 1 < argc) {
            extra[n_extra++] = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "facemill label: unknown option '%s'\n\n", a);
            label_usage(stderr);
            code = EXIT_USAGE;
            goto out_args;
        } else {
            inputs[n_inputs++] = argv[i];
        }
    }
    if (!db_path || n_inputs == 0 || procs < 0 || procs > 4096) {
        label_usage(stderr);
        code = EXIT_USAGE;
        goto out_args;
    }
    if (procs == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        procs = cores > 0 ? cores : 1;
    }
    /* The models the workers will open, found now: a missing one is one clear line
     * before any process starts, not an error in every worker's log. */
    int decode_only = 0;
    for (int i = 0; i < n_extra; i++)
        decode_only |= strcmp(extra[i], "--decode-only") == 0;
    if (!decode_only) {
        fm_config *rc = malloc(sizeof *rc);
        fm_status st = rc ? FM_OK : FM_ERR_NOMEM;
        if (rc) {
            *rc = cfg;
            st = fm_config_resolve_models(rc, FM_RESOLVE_ALL, &err);
            free(rc);
        }
        if (st != FM_OK) {
            fprintf(stderr, "facemill label: %s\n",
                    st == FM_ERR_NOMEM ? "out of memory" : fm_error_text(&err));
            goto out_args; /* EXIT_INCOMPLETE: nothing was labelled */
        }
    }

    /* The run directory: ipc sockets and the broker's journal of this run. */
    remove_stale_run_dirs();
    char dir[] = "/tmp/facemill-label.XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "facemill label: mkdtemp: %s\n", strerror(errno));
        goto out_args;
    }
    char pidfile[sizeof dir + 8];
    snprintf(pidfile, sizeof pidfile, "%s/pid", dir);
    FILE *pf = fopen(pidfile, "w");
    if (pf) {
        fprintf(pf, "%ld\n", (long)getpid());
        fclose(pf);
    }
    snprintf(cfg.broker.clients, sizeof cfg.broker.clients, "inproc://label-clients");
    snprintf(cfg.sink.commits, sizeof cfg.sink.commits, "inproc://label-commits");
    snprintf(cfg.broker.workers, sizeof cfg.broker.workers, "ipc://%s/workers", dir);
    snprintf(cfg.sink.results, sizeof cfg.sink.results, "ipc://%s/results", dir);
    snprintf(cfg.broker.journal, sizeof cfg.broker.journal, "%s/journal.db", dir);
    cfg.broker.fsync = FM_BROKER_FSYNC_OFF; /* the results database is what persists */

    char program[PATH_MAX], nbuf[32], set_workers[PATH_MAX + 64], set_results[PATH_MAX + 64];
    worker_program(program, sizeof program);
    snprintf(nbuf, sizeof nbuf, "%ld", procs);
    snprintf(set_workers, sizeof set_workers, "broker.workers=%s", cfg.broker.workers);
    snprintf(set_results, sizeof set_results, "sink.results=%s", cfg.sink.results);
    wargs[0] = program;
    wargs[1] = "--processes";
    wargs[2] = nbuf;
    wargs[nw++] = "--die-with-parent";
    wargs[nw++] = "--set";
    wargs[nw++] = set_workers;
    wargs[nw++] = "--set";
    wargs[nw++] = set_results;
    for (int i = 0; i < n_extra; i++)
        wargs[nw++] = extra[i];
    wargs[nw] = NULL;

    install_signals();
    void *zctx = zmq_ctx_new();
    service_thread bt = {0}, sk = {0};
    worker_child wc = {0};
    fm_results *db = NULL;
    fm_client_summary sum = {0};
    fm_status st = FM_ERR_INTERNAL;
    if (!zctx) {
        fprintf(stderr, "facemill label: cannot create a ZeroMQ context\n");
        goto out_dir;
    }
    fm_sink_opts so = {.db_path = db_path, .results = cfg.sink.results,
                       .commits = cfg.sink.commits, .batch = cfg.sink.batch,
                       .batch_ms = cfg.sink.batch_ms, .heartbeat_ms = cfg.broker.heartbeat_ms,
                       .max_msg_size = cfg.net.max_msg_size, .name = "label-sink"};
    if (fm_broker_open(&bt.broker, &cfg, zctx, &err) != FM_OK ||
        fm_sink_open(&sk.sink, zctx, &so, &err) != FM_OK ||
        fm_results_open(&db, db_path, FM_RESULTS_READONLY, &err) != FM_OK) {
        fprintf(stderr, "facemill label: %s\n", fm_error_text(&err));
        goto out_services;
    }
    if (pthread_create(&bt.th, NULL, run_service, &bt) != 0)
        goto out_services;
    bt.started = 1;
    if (pthread_create(&sk.th, NULL, run_service, &sk) != 0)
        goto out_services;
    sk.started = 1;
    if ((wc.pid = spawn_worker(wargs, &err)) < 0) {
        fprintf(stderr, "facemill label: %s\n", fm_error_text(&err));
        goto out_services;
    }
    fm_log_info("labelling into %s with %ld worker processes", db_path, procs);

    o.endpoint = cfg.broker.clients;
    o.zctx = zctx;
    o.tag = "label";
    o.skip = db;
    o.stop = &stop_flag;
    o.tick = check_worker;
    o.tick_arg = &wc;
    st = fm_client_submit(&o, inputs, n_inputs, &sum, &err);
    if (st != FM_OK)
        fprintf(stderr, "facemill label: %s\n", fm_error_text(&err));
    print_summary("facemill label", &sum, st);
    code = exit_code(st, &sum);

out_services:
    /* Workers first (they finish or hand back), then the broker, then the sink, which
     * commits whatever it still holds. */
    stop_worker(&wc);
    bt.stop = 1;
    if (bt.started)
        pthread_join(bt.th, NULL);
    sk.stop = 1;
    if (sk.started)
        pthread_join(sk.th, NULL);
    fm_results_close(&db);
    fm_broker_close(&bt.broker);
    fm_sink_close(&sk.sink);
    if (zctx)
        zmq_ctx_term(zctx);
out_dir:
    nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
out_args:
    free(extra);
    free(wargs);
    free(inputs);
    return code;
}
