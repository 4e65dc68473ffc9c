/* worker_main.c - the facemill-worker program: N pipeline processes that take jobs from
 * the broker by credit and push results to the sink (protocol: proto/README.md). This
 * file is the parent: options and configuration, forking and supervising the
 * processes, signals and systemd notification. A process itself is
 * pipeline_process.c, its link to the broker and the sink broker_link.c.
 *
 * Why processes, not threads: each process owns one pipeline (decoder, detector,
 * backbone, arenas) and the OS shares the read-only model pages between them, so a
 * crash on one image takes down one process, which the parent restarts; the broker
 * re-queues its jobs.
 *
 * Lifetimes: a pipeline process gets SIGTERM when its parent dies (PR_SET_PDEATHSIG),
 * so killing the parent never leaves orphans working. With --die-with-parent (what
 * `facemill label` starts) the parent also dies with whoever started it, and both
 * levels die by SIGKILL: the broker and sink they served died with that process, so
 * there is nothing to finish or hand back.
 *
 * Under systemd (include/facemill/notify.h) only the parent speaks for the service:
 * READY=1 once every pipeline process has opened its pipeline and connected, a
 * STATUS= line and the watchdog from its loop. SIGHUP reopens log.file in the parent,
 * which passes it on to every pipeline process, each reopening the file for itself.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "pipeline_process.h"
#include "facemill/clock.h"
#include "facemill/blas.h"
#include "facemill/auth.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/notify.h"
#include "facemill/wire.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Set by SIGTERM and SIGINT. A pipeline process inherits the handlers at fork and
 * watches its own copy (pipeline_process_run). */
static volatile sig_atomic_t stop_flag;

/* The pipeline processes' slots (pipeline_process.h), one per process index, in
 * memory shared with them. */
static proc_slot *slots;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        fm_log_request_reopen(); /* the loop reopens the file; never a reason to stop */
    else
        stop_flag = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The signals the parent's loop waits for: blocked there, so one that comes between
 * its look at stop_flag and its wait stays pending and ends the wait at once. */
static void parent_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGCHLD);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

/* Forks pipeline process index (slots are mapped). It gets death_sig when this
 * process dies; the getppid check covers a parent that died before prctl took
 * effect. */
static pid_t spawn(const fm_config *cfg, int index, int decode_only, int death_sig)
{
    pid_t parent = getpid();
    atomic_store(&slots[index].ready, 0);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, death_sig);
        if (getppid() != parent)
            _exit(0);
        /* The parent keeps its signals blocked for its wait (main); a pipeline
         * process takes them through its handlers, has no children to wait for, and
         * only the parent notifies systemd. */
        sigset_t waited;
        parent_signals(&waited);
        sigprocmask(SIG_UNBLOCK, &waited, NULL);
        fm_notify_disable();
        _exit(pipeline_process_run(cfg, index, decode_only, &slots[index], &stop_flag));
    }
    if (pid < 0)
        fm_log_error("fork: %s", strerror(errno));
    return pid;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: facemill-worker [--processes N] [--decode-only] [--die-with-parent]\n"
            "                       [--config FILE] [--set KEY=VALUE]...\n"
            "       facemill-worker --version | --help\n"
            "Forks N pipeline processes (worker.processes; 0 = one per core) that take\n"
            "jobs from the broker (broker.workers) and push results to the sink\n"
            "(sink.results). A process that dies is restarted. SIGTERM: every process\n"
            "finishes its batch, hands back what it has not started, and exits.\n"
            "--decode-only: decode and hash, no models (tests, wire benchmarks).\n"
            "--die-with-parent: every process is killed at once when the program that\n"
            "started facemill-worker dies (facemill label, whose broker and sink die\n"
            "with it).\n"
            "SIGHUP reopens log.file (for logrotate) in every process.\n");
}

/* Under systemd, the parent's loop takes a turn at least this often: pipeline
 * processes become ready without a signal, and READY=1 should follow soon after
 * (fm_notify_cap_wait shortens the turn for the watchdog and the status). */
#define PARENT_TURN_MS 250

/* One turn of systemd notification in the parent: READY=1 once every living
 * pipeline process serves, the watchdog, and "N processes running, M images done". */
static void parent_notify(const pid_t *pids, long procs)
{
    if (!fm_notify_enabled())
        return;
    long running = 0, serving = 0;
    uint_least64_t done = 0;
    for (long i = 0; i < procs; i++) {
        if (pids[i] > 0) {
            running++;
            serving += atomic_load(&slots[i].ready) != 0;
        }
        done += atomic_load(&slots[i].done);
    }
    if (running > 0 && serving == running)
        fm_notify_ready();
    if (fm_notify_tick())
        fm_notify_status("%ld of %ld processes running, %ld serving; %llu images done",
                         running, procs, serving, (unsigned long long)done);
}

int main(int argc, char **argv)
{
    fm_config cfg;
    fm_error err = {0};
    fm_config_defaults(&cfg);
    fm_log_init("worker", -1);
    if (fm_config_from_args(&cfg, &argc, argv, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 2;
    }
    int decode_only = 0, die_with_parent = 0;
    long procs = (long)cfg.worker.processes;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("facemill-worker %s\n", FACEMILL_VERSION);
            return 0;
        }
        if (strcmp(argv[i], "--processes") == 0) {
            char *end = NULL;
            if (i + 1 < argc)
                procs = strtol(argv[++i], &end, 10);
            if (!end || end == argv[i] || *end || procs < 0 || procs > 4096) {
                fprintf(stderr, "facemill-worker: --processes needs a number of processes "
                                "from 0 (one per core) to 4096%s%s%s\n",
                        end ? ", not '" : "", end ? argv[i] : "", end ? "'" : "");
                return 2;
            }
        } else if (strcmp(argv[i], "--decode-only") == 0) {
            decode_only = 1;
        } else if (strcmp(argv[i], "--die-with-parent") == 0) {
            die_with_parent = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "facemill-worker: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    fm_log_init(NULL, cfg.log.level);
    if (fm_log_open_file(cfg.log.file, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 1;
    }
    if (!decode_only) { /* the kernel set, settled before any process computes */
        fm_blas_choice blas;
        if (fm_blas_select(cfg.engine.blas_kernels, &blas, &err) != FM_OK) {
            fm_log_error("%s", fm_error_text(&err));
            return 1;
        }
        fm_log_info("BLAS kernels %s: %s", blas.core, blas.reason);
        fm_log_debug("engine kernels %s", fm_nn_isa_name(fm_nn_isa_now()));
    }
    /* The keys, read once here too: a missing or wrong file is one line and exit 1,
     * not a failure of every pipeline process. */
    fm_auth *auth = NULL;
    if (fm_auth_open(&auth, &cfg, FM_AUTH_WORKER, NULL, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 1;
    }
    fm_auth_close(&auth);
    /* Started by `facemill label` (--die-with-parent), this is not the service's
     * main process, whatever NOTIFY_SOCKET the environment carries. */
    if (!die_with_parent)
        fm_notify_init();
    if (procs == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        procs = n > 0 ? n : 1;
    }
    /* The starter set a death signal before exec (it survives exec); make it
     * SIGKILL, which also tells the children to use SIGKILL. */
    if (die_with_parent)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    int death_sig = die_with_parent ? SIGKILL : SIGTERM;
    install_signals();
    pid_t *pids = calloc((size_t)procs, sizeof *pids);
    int64_t *started = calloc((size_t)procs, sizeof *started);
    if (!pids || !started) {
        fm_log_error("out of memory");
        free(pids);
        free(started);
        return 1;
    }
    size_t slots_bytes = (size_t)procs * sizeof *slots;
    void *map = mmap(NULL, slots_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (map == MAP_FAILED) {
        fm_log_error("shared memory for %ld processes: %s", procs, strerror(errno));
        free(pids);
        free(started);
        return 1;
    }
    slots = map; /* zero-filled: nobody ready, nothing done */
    /* SIGCHLD, SIGTERM, SIGINT and SIGHUP stay blocked here so the loop can wait for
     * a child, a signal or its next turn without missing one that comes in between
     * (sigtimedwait below takes it, and the loop acts on it as the handler would);
     * spawn unblocks them in every pipeline process. */
    sigset_t waited;
    parent_signals(&waited);
    sigprocmask(SIG_BLOCK, &waited, NULL);
    fm_log_info("starting %ld worker processes", procs);
    for (long i = 0; i < procs; i++) {
        pids[i] = spawn(&cfg, (int)i, decode_only, death_sig);
        started[i] = fm_now_ms();
    }
    int failures = 0;
    while (!stop_flag) {
        if (fm_log_reopen_if_requested())
            for (long i = 0; i < procs; i++)
                if (pids[i] > 0)
                    kill(pids[i], SIGHUP); /* each reopens the file for itself */
        parent_notify(pids, procs);
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0) {
            /* Nobody exited yet. Returns with a child's SIGCHLD, a stop or reopen
             * signal (pending since before the wait, or come during it) or, under
             * systemd, the end of the turn (EAGAIN); the loop looks again either way.
             * Outside systemd it sleeps until something happens. */
            long ms = fm_notify_cap_wait(PARENT_TURN_MS);
            struct timespec turn = {ms / 1000, (ms % 1000) * 1000000L};
            int sig = sigtimedwait(&waited, NULL, fm_notify_enabled() ? &turn : NULL);
            if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP)
                on_signal(sig);
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ECHILD) { /* every child failed to start */
                failures = 1;
                break;
            }
        }
        for (long i = 0; i < procs; i++) {
            if (pids[i] != pid)
                continue;
            pids[i] = 0;
            if (stop_flag)
                break;
            if (WIFEXITED(status) && WEXITSTATUS(status) == 1 &&
                fm_now_ms() - started[i] < 2000) {
                fm_log_error("worker process %ld failed at start; not restarted", i);
                failures = 1;
                break;
            }
            fm_log_warn("worker process %ld (pid %d) died (%s %d): restarting", i, (int)pid,
                        WIFSIGNALED(status) ? "signal" : "exit",
                        WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            sleep(WIFSIGNALED(status) ? 0 : 1);
            pids[i] = spawn(&cfg, (int)i, decode_only, death_sig);
            started[i] = fm_now_ms();
        }
        int alive = 0;
        for (long i = 0; i < procs; i++)
            alive += pids[i] > 0;
        if (!alive)
            break;
    }
    fm_notify_stopping();
    for (long i = 0; i < procs; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    for (long i = 0; i < procs; i++)
        while (pids[i] > 0 && waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
            ;
    munmap(map, slots_bytes);
    slots = NULL;
    free(pids);
    free(started);
    return failures ? 1 : 0;
}
