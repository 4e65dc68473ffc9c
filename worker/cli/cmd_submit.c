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
 * Exit codes: 0 every image labelled; 1 some images failed (error results, unreadable
 * images included) or a folder was skipped; 2 usage (also a missing INPUT, or a -o that
 * is no results database or cannot be created: a rerun would not fix those); 3 the run
 * did not finish (interrupted, broker unreachable, worker died, ...): rerunning resumes.
 */
#define _GNU_SOURCE /* prctl's PR_SET_PDEATHSIG, mkdtemp */
#include "cli_opts.h"
#include "commands.h"
#include "facemill/auth.h"
#include "facemill/broker.h"
#include "facemill/client.h"
#include "facemill/clock.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/modelpath.h"
#include "facemill/sink.h"
#include "facemill/text.h"
#include "facemill/wire.h"

#include <zmq.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* 0 every image labelled, 1 some failed (CLI_EXIT_FAILURE), 2 usage (CLI_EXIT_USAGE) */
enum { EXIT_INCOMPLETE = 3 };

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
    sigaction(SIGHUP, &sa, NULL); /* a terminal closed: stop as on Ctrl-C, with a summary */
}

/* The signals a child of `facemill label` must not inherit handled or blocked: a
 * SIGTERM that reaches it between fork and exec would run this process's handler
 * (setting a flag nobody reads) and be lost, leaving a worker that never stops. */
static void child_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGCHLD);
}

/* Indexed by fm_progress_mode. */
static const char *const progress_names[] = {"auto", "bar", "lines", "none", NULL};
_Static_assert(FM_PROGRESS_AUTO == 0 && FM_PROGRESS_BAR == 1 && FM_PROGRESS_LINES == 2 &&
                   FM_PROGRESS_NONE == 3,
               "progress_names is indexed by fm_progress_mode");

/* The options submit and label share. */
typedef struct input_opts {
    int by_path, all_files, progress;
} input_opts;

#define INPUT_OPTS(x)                                                                   \
    CLI_FLAG("--by-path", 0, &(x).by_path,                                              \
             "send absolute paths instead of bytes (workers share storage)"),           \
    CLI_FLAG("--all", 0, &(x).all_files,                                                \
             "directories and archives contribute every file, not only images"),        \
    CLI_ENUM("--progress", 0, progress_names, &(x).progress,                            \
             "progress on stderr: a bar, plain lines (client.progress_ms) or none; "    \
             "auto (default): the bar on a terminal, lines otherwise")

/* The client's options from the configuration and the command line. */
static void client_opts(fm_client_opts *o, const fm_config *cfg, const input_opts *x)
{
    fm_client_opts_from_config(o, cfg);
    o->by_path = x->by_path;
    o->all_files = x->all_files;
    o->progress = (fm_progress_mode)x->progress;
}

static void print_summary(const char *what, const fm_client_summary *s, fm_status st)
{
    char folders[64] = "";
    if (s->folders_skipped)
        snprintf(folders, sizeof folders, ", %lld folder%s skipped",
                 (long long)s->folders_skipped, s->folders_skipped == 1 ? "" : "s");
    fprintf(stderr,
            "%s: %lld images: %lld committed, %lld already stored, %lld failed%s%s\n", what,
            (long long)s->total, (long long)s->committed, (long long)s->skipped,
            (long long)s->failed, folders, st == FM_OK ? "" : " (run not finished)");
    if (s->repeated)
        fprintf(stderr, "%s: %lld repeat%s of an image the inputs name already (each "
                        "image is labelled once)\n",
                what, (long long)s->repeated, s->repeated == 1 ? "" : "s");
    if (s->slow_downs)
        fprintf(stderr, "%s: the broker asked to slow down %lld times\n", what,
                (long long)s->slow_downs);
    if (s->archive_links)
        fprintf(stderr, "%s: %lld hard or symbolic link%s in archives not labelled "
                        "themselves: their targets are, when the archive holds them (the "
                        "log names each, at level info)\n",
                what, (long long)s->archive_links, s->archive_links == 1 ? "" : "s");
}

static int exit_code(fm_status st, const fm_client_summary *s)
{
    if (st != FM_OK)
        return EXIT_INCOMPLETE;
    /* A skipped folder's images are neither labelled nor failed: not everything is
     * labelled, and a rerun alone would skip it again. */
    return s->failed || s->folders_skipped ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
}

/* ---- facemill submit ------------------------------------------------------------- */

static const cli_cmd submit_cmd = {
    "submit", "[options] INPUT...", 1, -1,
    "Submits every image of the INPUTs to the broker at broker.clients and waits\n"
    "until each result is stored by the sink. An INPUT is a directory (walked\n"
    "recursively), an image file, a tar or zip archive, or - for a list of paths\n"
    "on stdin (one per line). Directories and archives contribute files with image\n"
    "extensions (--all: every file); the archives a directory holds are opened.\n",
    "exit status: 0 all images labelled, 1 some failed or a folder skipped, 2 usage "
    "error, 3 run not finished",
    NULL};

/* A run name of its own: submit-HOST-TIME-PID. */
static void default_tag(char *tag, size_t size)
{
    char host[64] = "host", when[32];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(tag, size, "submit-%s-%s-%ld", host, when, (long)getpid());
    fprintf(stderr, "facemill submit: tag %s (pass --tag %s to resume this run)\n", tag, tag);
}

int fm_cmd_submit(int argc, char **argv)
{
    const char *tag_opt = NULL;
    input_opts x = {0, 0, FM_PROGRESS_AUTO};
    const cli_opt opts[] = {
        CLI_STR("--tag", 0, "NAME", &tag_opt,
                "run name (default submit-HOST-TIME-PID); job ids derive from it, so "
                "submitting again with the same tag resumes a run"),
        INPUT_OPTS(x),
        CLI_END,
    };
    fm_config cfg;
    cli_args a;
    int code = cli_start(&submit_cmd, opts, argc, argv, &cfg, &a);
    if (code >= 0)
        return code;
    /* The broker would reject every job of a run with such a tag, one line each. */
    char why[FM_TEXT_WHY_MAX];
    if (tag_opt && fm_text_check(tag_opt, FM_TEXT_TAG_MAX, why, sizeof why))
        return cli_usage_error(&submit_cmd, "--tag: %s (a tag is at most %d bytes of "
                               "UTF-8 without control characters)", why, FM_TEXT_TAG_MAX);
    fm_error err = {0};
    if (fm_client_check_inputs(a.operands, a.n, &err) != FM_OK)
        return cli_usage_error(&submit_cmd, "%s", fm_error_text(&err));
    fm_client_opts o;
    client_opts(&o, &cfg, &x);
    char tag[FM_TEXT_TAG_MAX + 1];
    if (tag_opt)
        snprintf(tag, sizeof tag, "%s", tag_opt);
    else
        default_tag(tag, sizeof tag);
    o.tag = tag;
    fm_auth *auth = NULL;
    if (fm_auth_open(&auth, &cfg, FM_AUTH_CLIENT, NULL, &err) != FM_OK) {
        char shown[FM_LOG_ESCAPED_MAX];
        fprintf(stderr, "facemill submit: %s\n",
                fm_log_escape(fm_error_text(&err), shown, sizeof shown));
        return EXIT_INCOMPLETE;
    }
    o.auth = auth;
    install_signals();
    o.stop = &stop_flag;
    fm_client_summary sum;
    fm_status st = fm_client_submit(&o, a.operands, a.n, &sum, &err);
    if (st != FM_OK)
        fprintf(stderr, "facemill submit: %s\n", fm_error_text(&err));
    print_summary("facemill submit", &sum, st);
    if (st == FM_ERR_INTERRUPTED && !sum.broker_heard)
        fprintf(stderr, "facemill submit: the broker never answered, so it holds none of "
                        "these jobs; run the same command again once it is up\n");
    else if (st == FM_ERR_INTERRUPTED)
        fprintf(stderr, "facemill submit: the broker goes on with the jobs it took; "
                        "submitting again with this tag counts them as already stored\n");
    fm_auth_close(&auth);
    return exit_code(st, &sum);
}

/* ---- facemill status ------------------------------------------------------------- */

static const cli_cmd status_cmd = {
    "status", "[options]", 0, 0,
    "Shows the broker's queue depth, workers and their credit, commit rate and\n"
    "failures (and the counts of one run with --tag).\n",
    "exit status: 0 success, 1 the broker did not answer (or another failure), 2 usage "
    "error", NULL};

int fm_cmd_status(int argc, char **argv)
{
    const char *tag = NULL;
    int64_t timeout = 5000;
    int format = FM_STATUS_TEXT;
    static const char *const formats[] = {"text", "prometheus", NULL};
    const cli_opt opts[] = {
        CLI_STR("--tag", 0, "NAME", &tag, "also show the counts of the run NAME"),
        CLI_INT("--timeout", 0, "MS", 1, 3600000, &timeout,
                "how long to wait for the broker's answer, in milliseconds (default "
                "5000)"),
        CLI_ENUM("--format", 0, formats, &format,
                 "text (default) for people, or prometheus: the Prometheus text format "
                 "(facemill_jobs_queued, ...), as facemill-broker writes to metrics.file"),
        CLI_END,
    };
    fm_config cfg;
    cli_args a;
    int code = cli_start(&status_cmd, opts, argc, argv, &cfg, &a);
    if (code >= 0)
        return code;
    fm_error err = {0};
    fm_auth *auth = NULL;
    code = CLI_EXIT_OK;
    if (fm_auth_open(&auth, &cfg, FM_AUTH_CLIENT, NULL, &err) != FM_OK ||
        fm_client_status_as(cfg.broker.clients, auth, tag, timeout, cfg.net.max_msg_size,
                            (fm_status_format)format, stdout, &err) != FM_OK)
        code = cli_fail(&status_cmd, "%s", fm_error_text(&err));
    fm_auth_close(&auth);
    return code;
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

/* SIGTERM, then up to 15 s to finish or hand back. SIGCHLD is blocked in this
 * process (fm_cmd_label), so the wait wakes as the worker exits; a timeout bounds each
 * wait however the signal is delivered. SIGTERM goes again every half second: a
 * program that is still starting may not have its handler yet, or may look at its
 * flag just before it settles into a wait, and must not sleep through its stop. */
static void stop_worker(worker_child *w)
{
    if (w->pid <= 0 || w->exited)
        return;
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    int64_t start = fm_now_ms(), next_term = start;
    while (fm_now_ms() - start < 15000) {
        if (waitpid(w->pid, &w->status, WNOHANG) == w->pid) {
            w->exited = 1;
            return;
        }
        if (fm_now_ms() >= next_term) {
            kill(w->pid, SIGTERM);
            next_term += 500;
        }
        sigtimedwait(&chld, NULL, &(struct timespec){0, 50 * 1000 * 1000});
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
    /* SIGTERM and SIGINT wait (blocked) across the fork: the child sets them back to
     * their defaults before it takes them, so one sent to it before exec ends it at
     * once instead of being swallowed by an inherited handler. */
    sigset_t sigs, old;
    child_signals(&sigs);
    pthread_sigmask(SIG_BLOCK, &sigs, &old);
    pid_t pid = fork();
    if (pid < 0) {
        fm_error_set(err, FM_ERR_IO, "fork: %s", strerror(errno));
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return -1;
    }
    if (pid == 0) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        sigprocmask(SIG_UNBLOCK, &sigs, NULL);
        /* Die with the label process, however it dies. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        execv(args[0], args);
        fprintf(stderr, "facemill label: cannot run %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
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

/* Longest folder a run directory goes in: its sockets' paths (FOLDER/facemill-label.
 * XXXXXX/workers) must fit a Unix socket address, 107 bytes. */
#define RUN_BASE_MAX 72

/* Where the run directory goes: $TMPDIR when it names an absolute folder this user
 * may write, short enough for the sockets; /tmp otherwise. */
static const char *run_base(void)
{
    const char *t = getenv("TMPDIR");
    struct stat st;
    if (t && t[0] == '/' && strlen(t) <= RUN_BASE_MAX && stat(t, &st) == 0 &&
        S_ISDIR(st.st_mode) && access(t, W_OK | X_OK) == 0)
        return t;
    return "/tmp";
}

/* Removes the run directories in base of label processes that died without cleaning
 * up (kill -9, power loss): those whose "pid" file names no living process. Read with
 * readdir, not glob: base may hold glob's special characters. */
static void remove_stale_run_dirs(const char *base)
{
    DIR *dir = opendir(base);
    if (!dir)
        return;
    const char prefix[] = "facemill-label.";
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (strncmp(e->d_name, prefix, sizeof prefix - 1) != 0)
            continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s/pid", base, e->d_name) >= (int)sizeof path)
            continue;
        FILE *f = fopen(path, "r");
        long pid = 0;
        if (!f)
            continue;
        int n = fscanf(f, "%ld", &pid);
        fclose(f);
        if (n != 1 || pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH)) {
            *strrchr(path, '/') = '\0';
            nftw(path, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
        }
    }
    closedir(dir);
}

static const cli_cmd label_cmd = {
    "label", "INPUT... -o RESULTS.db [options]", 1, -1,
    "Labels every image of the INPUTs on this machine: runs a broker and a sink in\n"
    "this process and N worker processes (-j N; default worker.processes, 0: one\n"
    "per core) over ipc://, and stores the results in RESULTS.db (export it with\n"
    "`facemill export`). INPUTs are as for `facemill submit`. Running it again on\n"
    "the same inputs and database skips what is stored and labels the rest, so an\n"
    "interrupted run (Ctrl-C, kill, power loss) is resumed by rerunning it.\n",
    "exit status: 0 all images labelled, 1 some failed or a folder skipped, 2 usage "
    "error (also a missing INPUT, a RESULTS.db that is no results database or cannot be "
    "created), 3 run not finished (a model missing, interrupted, a worker died, ...)",
    NULL};

/* --worker-arg: the arguments given, in order (argc slots). */
typedef struct arg_list {
    char **v;
    int n;
} arg_list;

static int take_worker_arg(void *target, const char *value)
{
    arg_list *l = target;
    l->v[l->n++] = (char *)value;
    return 0;
}

/* Checks -o before anything starts, and creates nothing: an existing file must be a
 * results database (or empty), a new one must have a folder to be created in. A
 * rerun cannot fix either, so they are usage errors, one line naming the file, not
 * an unfinished run. Returns -1 when path may be used, else the exit code. */
static int check_results_path(const char *path)
{
    char shown[FM_LOG_ESCAPED_MAX], dir[PATH_MAX];
    fm_log_escape(path, shown, sizeof shown);
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return cli_usage_error(&label_cmd, "-o %s: a directory, not a results "
                                   "database", shown);
        if (access(path, R_OK | W_OK) != 0)
            return cli_usage_error(&label_cmd, "-o %s: %s", shown, strerror(errno));
        if (S_ISREG(st.st_mode) && st.st_size == 0)
            return -1; /* an empty file: the sink makes the database in it */
        fm_results *db = NULL;
        fm_error e = {0};
        fm_status rs = fm_results_open(&db, path, FM_RESULTS_READONLY, &e);
        fm_results_close(&db);
        if (rs == FM_ERR_VERSION || rs == FM_ERR_IO)
            return cli_usage_error(&label_cmd, "-o %s: %s", shown, e.msg);
        if (rs != FM_OK)
            return cli_usage_error(&label_cmd, "-o %s: not a facemill results database",
                                   shown);
        return -1;
    }
    if (errno != ENOENT)
        return cli_usage_error(&label_cmd, "-o %s: %s", shown, strerror(errno));
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        slash[slash == dir] = '\0'; /* "/x.db" lives in "/" */
    if (stat(dir, &st) != 0)
        return cli_usage_error(&label_cmd, "-o %s: cannot create it: %s", shown,
                               strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return cli_usage_error(&label_cmd, "-o %s: cannot create it: %s", shown,
                               strerror(ENOTDIR));
    if (access(dir, W_OK | X_OK) != 0)
        return cli_usage_error(&label_cmd, "-o %s: cannot create it: %s", shown,
                               strerror(errno));
    return -1;
}

/* One `facemill label` at a time writes a results database: a second one on the same
 * file would label every image the first has not stored yet a second time, both
 * counting them as theirs. An exclusive flock on the database file, held for the run,
 * says so at once. flock, not fcntl: SQLite takes fcntl locks on the same file, which
 * flock's do not meet on a local file system; and since closing any descriptor of the
 * file drops this process's fcntl locks, the descriptor is closed only after SQLite's
 * handles are (fm_cmd_label). The file is made when missing, as the sink is about to.
 * Returns the descriptor, or -1 after a line on stderr. */
static int lock_results(const char *path)
{
    char shown[FM_LOG_ESCAPED_MAX];
    fm_log_escape(path, shown, sizeof shown);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "facemill label: %s: %s\n", shown, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            fprintf(stderr,
                    "facemill label: %s: another facemill label is writing it; run this "
                    "again when it has finished (it resumes where that one stopped)\n",
                    shown);
        else
            fprintf(stderr, "facemill label: %s: cannot lock it: %s\n", shown,
                    strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* The models the workers will open, found now: a missing one is one clear line before
 * any process starts, not an error in every worker's log. */
static fm_status check_models(const fm_config *cfg, const arg_list *extra, fm_error *err)
{
    for (int i = 0; i < extra->n; i++)
        if (strcmp(extra->v[i], "--decode-only") == 0)
            return FM_OK;
    fm_config *rc = malloc(sizeof *rc);
    if (!rc)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    *rc = *cfg;
    fm_status st = fm_config_resolve_models(rc, FM_RESOLVE_ALL, err);
    free(rc);
    return st;
}

/* One run of `facemill label`: its directory, the services in this process and the
 * worker program. */
typedef struct label_run {
    char dir[RUN_BASE_MAX + 24]; /* ipc sockets, the broker's journal, the workers'
                                    config: in $TMPDIR or /tmp (run_base) */
    void *zctx;
    service_thread broker, sink;
    worker_child worker;
    fm_results *db;           /* the results, read to skip what is stored */
} label_run;

/* The run directory, named in a pid file so a later run can tell it is stale; the
 * configuration moves the services there. */
static fm_status make_run_dir(label_run *r, fm_config *cfg, fm_error *err)
{
    const char *base = run_base();
    for (;;) {
        remove_stale_run_dirs(base);
        snprintf(r->dir, sizeof r->dir, "%s/facemill-label.XXXXXX", base);
        if (mkdtemp(r->dir))
            break;
        int e = errno;
        r->dir[0] = '\0';
        if (strcmp(base, "/tmp") == 0)
            return fm_error_set(err, FM_ERR_IO, "cannot make a run directory in /tmp: %s",
                                strerror(e));
        fm_log_info("cannot make a run directory in $TMPDIR (%s): %s; in /tmp instead", base,
                    strerror(e));
        base = "/tmp"; /* $TMPDIR looked usable and is not (/proc, a read-only mount) */
    }
    char pidfile[sizeof r->dir + 8];
    snprintf(pidfile, sizeof pidfile, "%s/pid", r->dir);
    FILE *pf = fopen(pidfile, "w");
    if (pf) {
        fprintf(pf, "%ld\n", (long)getpid());
        fclose(pf);
    }
    snprintf(cfg->broker.clients, sizeof cfg->broker.clients, "inproc://label-clients");
    snprintf(cfg->sink.commits, sizeof cfg->sink.commits, "inproc://label-commits");
    snprintf(cfg->broker.workers, sizeof cfg->broker.workers, "ipc://%s/workers", r->dir);
    snprintf(cfg->sink.results, sizeof cfg->sink.results, "ipc://%s/results", r->dir);
    snprintf(cfg->broker.journal, sizeof cfg->broker.journal, "%s/journal.db", r->dir);
    cfg->broker.fsync = FM_BROKER_FSYNC_OFF; /* the results database is what persists */
    /* Private sockets (inproc, and ipc in a directory only this user can enter) reach
     * no other machine: no CURVE for them, whatever keys the configuration names. The
     * workers read this configuration (write_worker_config), so they go without too. */
    cfg->security.cert[0] = '\0';
    return FM_OK;
}

/* The configuration of this run, as a file the workers read with --config: they run
 * with exactly this process's settings (its --config, --set and log options, and the
 * run's endpoints). */
static fm_status write_worker_config(const label_run *r, const fm_config *cfg, char *path,
                                     size_t size, fm_error *err)
{
    snprintf(path, size, "%s/config.yaml", r->dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
    fm_status st = fm_config_dump(cfg, f);
    if (fclose(f) != 0 || st != FM_OK)
        return fm_error_set(err, FM_ERR_IO, "%s: write failed", path);
    return FM_OK;
}

/* The broker and the sink as threads of this process, and the results database. */
static fm_status start_services(label_run *r, const fm_config *cfg, const char *db_path,
                                fm_error *err)
{
    fm_status st;
    if (!(r->zctx = zmq_ctx_new()))
        return fm_error_set(err, FM_ERR_INTERNAL, "cannot create a ZeroMQ context");
    fm_sink_opts so = {.db_path = db_path, .results = cfg->sink.results,
                       .commits = cfg->sink.commits, .batch = cfg->sink.batch,
                       .batch_ms = cfg->sink.batch_ms, .heartbeat_ms = cfg->broker.heartbeat_ms,
                       .max_msg_size = cfg->net.max_msg_size, .name = "label-sink",
                       .max_faces = cfg->detect.max_faces};
    if ((st = fm_broker_open(&r->broker.broker, cfg, r->zctx, err)) != FM_OK ||
        (st = fm_sink_open(&r->sink.sink, r->zctx, &so, err)) != FM_OK ||
        (st = fm_results_open(&r->db, db_path, FM_RESULTS_READONLY, err)) != FM_OK)
        return st;
    if (pthread_create(&r->broker.th, NULL, run_service, &r->broker) != 0)
        return fm_error_set(err, FM_ERR_INTERNAL, "cannot start the broker's thread");
    r->broker.started = 1;
    if (pthread_create(&r->sink.th, NULL, run_service, &r->sink) != 0)
        return fm_error_set(err, FM_ERR_INTERNAL, "cannot start the sink's thread");
    r->sink.started = 1;
    return FM_OK;
}

/* Workers first (they finish or hand back), then the broker, then the sink, which
 * commits whatever it still holds; then the run directory goes. */
static void stop_run(label_run *r)
{
    stop_worker(&r->worker);
    r->broker.stop = 1;
    if (r->broker.started)
        pthread_join(r->broker.th, NULL);
    r->sink.stop = 1;
    if (r->sink.started)
        pthread_join(r->sink.th, NULL);
    fm_results_close(&r->db);
    fm_broker_close(&r->broker.broker);
    fm_sink_close(&r->sink.sink);
    if (r->zctx)
        zmq_ctx_term(r->zctx);
    if (r->dir[0])
        nftw(r->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* facemill-worker with N processes, this run's configuration and the extra
 * arguments, dying with this process. */
static fm_status start_worker(label_run *r, const fm_config *cfg, int64_t procs,
                              const arg_list *extra, fm_error *err)
{
    char program[PATH_MAX], nbuf[32], config[sizeof r->dir + 16];
    fm_status st = write_worker_config(r, cfg, config, sizeof config, err);
    if (st != FM_OK)
        return st;
    worker_program(program, sizeof program);
    snprintf(nbuf, sizeof nbuf, "%lld", (long long)procs);
    char **args = calloc((size_t)extra->n + 8, sizeof *args);
    if (!args)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    int n = 0;
    args[n++] = program;
    args[n++] = "--processes";
    args[n++] = nbuf;
    args[n++] = "--die-with-parent";
    args[n++] = "--config";
    args[n++] = config;
    for (int i = 0; i < extra->n; i++)
        args[n++] = extra->v[i];
    r->worker.pid = spawn_worker(args, err);
    free(args);
    return r->worker.pid < 0 ? FM_ERR_IO : FM_OK;
}

/* Submits the inputs to the run's broker, skipping what the database holds (but for
 * its failures with retry_failed), until every image is committed, the worker program
 * exits or a signal comes. */
static int submit_inputs(label_run *r, const fm_config *cfg, const input_opts *x,
                         int retry_failed, const char *db_path, char **inputs, int n)
{
    fm_client_opts o;
    fm_client_summary sum = {0};
    fm_error err = {0};
    client_opts(&o, cfg, x);
    o.endpoint = cfg->broker.clients;
    o.zctx = r->zctx;
    o.tag = "label";
    o.skip = r->db;
    o.skip_db = db_path; /* `--all .` with the database in `.`: not an image */
    o.retry_failed = retry_failed;
    o.stop = &stop_flag;
    o.tick = check_worker;
    o.tick_arg = &r->worker;
    fm_status st = fm_client_submit(&o, inputs, n, &sum, &err);
    if (st != FM_OK)
        fprintf(stderr, "facemill label: %s\n", fm_error_text(&err));
    print_summary("facemill label", &sum, st);
    /* the workers finish the images they hold while everything stops, and the sink
     * stores them after the count above was taken */
    if (st == FM_ERR_INTERRUPTED)
        fprintf(stderr, "facemill label: images being labelled when it stopped may be "
                        "stored as well; the next run counts them as already stored\n");
    return exit_code(st, &sum);
}

int fm_cmd_label(int argc, char **argv)
{
    const char *db_path = NULL;
    int64_t procs = -1; /* -1: worker.processes */
    input_opts x = {0, 0, FM_PROGRESS_AUTO};
    int retry_failed = 0, lock_fd = -1;
    arg_list extra = {calloc((size_t)argc + 1, sizeof(char *)), 0};
    if (!extra.v)
        return EXIT_INCOMPLETE;
    const cli_opt opts[] = {
        CLI_PATH("--output", 'o', "RESULTS.db", &db_path,
                 "the results database, created when missing (required)"),
        CLI_INT("--workers", 'j', "N", 0, 4096, &procs,
                "worker processes (default worker.processes; 0: one per core)"),
        INPUT_OPTS(x),
        CLI_FLAG("--retry-failed", 0, &retry_failed,
                 "label again the images whose stored result is a failure (a read error, "
                 "a timeout, a format since enabled); their new results replace those "
                 "rows"),
        CLI_CALL("--worker-arg", 0, "ARG", "an argument", take_worker_arg, &extra,
                 "pass ARG to facemill-worker (e.g. --decode-only); any number"),
        CLI_END,
    };
    fm_config *cfg = malloc(sizeof *cfg);
    label_run r = {0};
    fm_error err = {0};
    cli_args a;
    int code = EXIT_INCOMPLETE;
    if (!cfg)
        goto out;
    if ((code = cli_start(&label_cmd, opts, argc, argv, cfg, &a)) >= 0)
        goto out;
    if (!db_path) {
        code = cli_usage_error(&label_cmd, "-o RESULTS.db is required");
        goto out;
    }
    /* Missing inputs and an unusable -o are said now, in one line each, before any
     * process starts or any file is created. */
    if (fm_client_check_inputs(a.operands, a.n, &err) != FM_OK) {
        code = cli_usage_error(&label_cmd, "%s", fm_error_text(&err));
        goto out;
    }
    if ((code = check_results_path(db_path)) >= 0)
        goto out;
    if (procs < 0)
        procs = cfg->worker.processes;
    if (procs == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        procs = cores > 0 ? cores : 1;
    }
    code = EXIT_INCOMPLETE; /* nothing labelled until the run ends */
    /* Texts of other modules name files as they are: escaped for the terminal (the
     * client's own texts are escaped where they are made). */
    char shown[FM_LOG_ESCAPED_MAX];
    if (check_models(cfg, &extra, &err) != FM_OK || make_run_dir(&r, cfg, &err) != FM_OK) {
        fprintf(stderr, "facemill label: %s\n",
                fm_log_escape(fm_error_text(&err), shown, sizeof shown));
        goto out;
    }
    /* --by-path: the workers open the files the user named on this command line, as
     * the user, on this machine; confining them to a root would only refuse some of
     * the user's own inputs. A cluster's workers keep their worker.path_root. */
    if (x.by_path)
        snprintf(cfg->worker.path_root, sizeof cfg->worker.path_root, "/");
    if ((lock_fd = lock_results(db_path)) < 0)
        goto out;
    install_signals();
    /* SIGCHLD stays blocked in every thread (the services' threads inherit this mask),
     * so stop_worker can wait for it without a window to miss it in. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, NULL);
    if (start_services(&r, cfg, db_path, &err) != FM_OK ||
        start_worker(&r, cfg, procs, &extra, &err) != FM_OK) {
        fprintf(stderr, "facemill label: %s\n",
                fm_log_escape(fm_error_text(&err), shown, sizeof shown));
        goto out;
    }
    fm_log_info("labelling into %s with %lld worker processes",
                fm_log_escape(db_path, shown, sizeof shown), (long long)procs);
    code = submit_inputs(&r, cfg, &x, retry_failed, db_path, a.operands, a.n);
out:
    stop_run(&r);
    if (lock_fd >= 0) /* after SQLite's handles: see lock_results */
        close(lock_fd);
    free(cfg);
    free(extra.v);
    return code;
}
