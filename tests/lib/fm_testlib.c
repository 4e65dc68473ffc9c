/* fm_testlib.c - the helpers of fm_test.h, shared by every test program.
 *
 * Why it exists: each test used to carry its own copy of reading a file, running a
 * program, making a scratch directory, a random generator and a deadline loop; the
 * copies drifted (one kept the trailing NUL, one did not; one honoured TMPDIR, one
 * did not). One copy here, built once as a static library. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "fm_test.h"

#include "facemill/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int fm_test_checks;
int fm_test_failures;

/* ---- checks ---------------------------------------------------------------------- */

int fm_test_done(const char *name)
{
    fprintf(stderr, "%s: %d checks, %d failed\n", name, fm_test_checks, fm_test_failures);
    return fm_test_failures ? 1 : 0;
}

int fm_test_skip(const char *name, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: skipped: ", name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return FM_TEST_SKIP;
}

/* ---- where things are -------------------------------------------------------------- */

const char *fm_test_source_dir(void)
{
    const char *s = getenv("FACEMILL_SOURCE_DIR");
    return s && *s ? s : FM_TEST_SOURCE_DIR;
}

const char *fm_test_bin_dir(void)
{
    const char *s = getenv("FACEMILL_BIN_DIR");
    return s && *s ? s : FM_TEST_BIN_DIR;
}

static char *join(char *buf, size_t size, const char *dir, const char *name)
{
    int n = snprintf(buf, size, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "%s/%s: path longer than %zu bytes\n", dir, name, size);
        exit(1);
    }
    return buf;
}

char *fm_test_source_path(char *buf, size_t size, const char *rel)
{
    return join(buf, size, fm_test_source_dir(), rel);
}

char *fm_test_bin_path(char *buf, size_t size, const char *program)
{
    return join(buf, size, fm_test_bin_dir(), program);
}

/* ---- files and directories ---------------------------------------------------------- */

void *fm_test_read_stream(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger)
                free(buf);
            buf = bigger;
        }
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = '\0';
    if (len)
        *len = buf ? n : 0;
    return buf;
}

void *fm_test_read_back(FILE *f, size_t *len)
{
    rewind(f);
    return fm_test_read_stream(f, len);
}

void *fm_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (len)
            *len = 0;
        return NULL;
    }
    void *buf = fm_test_read_stream(f, len);
    fclose(f);
    return buf;
}

int fm_test_write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, size, f) == size;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok)
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
    return ok ? 0 : -1;
}

int fm_test_copy_file(const char *from, const char *to)
{
    size_t n = 0;
    void *buf = fm_test_read_file(from, &n);
    if (!buf) {
        fprintf(stderr, "cannot read %s: %s\n", from, strerror(errno));
        return -1;
    }
    int rc = fm_test_write_file(to, buf, n);
    free(buf);
    return rc;
}

int fm_test_tmpdir(char *dir, size_t size, const char *name)
{
    const char *t = getenv("TMPDIR");
    int n = snprintf(dir, size, "%s/fm_test_%s.XXXXXX", t && *t ? t : "/tmp", name);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "fm_test_tmpdir: the name of %s's directory is too long\n", name);
        return -1;
    }
    if (!mkdtemp(dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    int rc = type == FTW_DP ? rmdir(path) : unlink(path);
    if (rc != 0)
        fprintf(stderr, "cannot remove %s: %s\n", path, strerror(errno));
    return rc;
}

int fm_test_remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 && errno == ENOENT)
        return 0;
    /* depth first (a directory after what it holds), links not followed */
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

/* ---- child programs ---------------------------------------------------------------- */

pid_t fm_test_start(char *const argv[], int quiet)
{
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "fork for %s: %s\n", argv[0], strerror(errno));
        return -1;
    }
    if (pid == 0) {
        if (quiet) {
            int fd = open("/dev/null", O_WRONLY);
            if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0)
                _exit(127);
            close(fd);
        }
        execv(argv[0], argv);
        fprintf(stderr, "%s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

typedef struct reaping {
    pid_t pid;
    int status;
} reaping;

static int ended(void *ctx)
{
    reaping *r = ctx;
    return waitpid(r->pid, &r->status, WNOHANG) == r->pid;
}

int fm_test_reap(pid_t pid, int timeout_ms)
{
    reaping r = {pid, 0};
    if (timeout_ms < 0) {
        while (waitpid(pid, &r.status, 0) != pid)
            if (errno != EINTR)
                return -1;
        return r.status;
    }
    if (fm_test_wait_for(ended, &r, timeout_ms))
        return r.status;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

int fm_test_run(char *const argv[], int quiet)
{
    pid_t pid = fm_test_start(argv, quiet);
    if (pid < 0)
        return -1;
    int status = fm_test_reap(pid, -1);
    return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- time ---------------------------------------------------------------------------- */

void fm_test_sleep_ms(long ms)
{
    /* nanosleep: usleep is not POSIX 2008 */
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void on_alarm(int sig)
{
    (void)sig;
}

void fm_test_alarm(unsigned seconds)
{
    static struct sigaction old;
    static int armed;
    if (!seconds) {
        alarm(0);
        if (armed)
            sigaction(SIGALRM, &old, NULL);
        armed = 0;
        return;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    if (!armed)
        sigaction(SIGALRM, &sa, &old);
    armed = 1;
    alarm(seconds);
}

int fm_test_wait_for(int (*cond)(void *ctx), void *ctx, int timeout_ms)
{
    const double deadline = fm_now_ms() + timeout_ms;
    for (;;) {
        if (cond(ctx))
            return 1;
        if (fm_now_ms() >= deadline)
            return 0;
        fm_test_sleep_ms(10);
    }
}

/* ---- random numbers ------------------------------------------------------------------ */

uint64_t fm_test_rng_next(fm_test_rng *r)
{
    r->state ^= r->state << 13;
    r->state ^= r->state >> 7;
    r->state ^= r->state << 17;
    return r->state;
}

uint32_t fm_test_rng_u32(fm_test_rng *r)
{
    return (uint32_t)(fm_test_rng_next(r) >> 16);
}

int fm_test_rng_int(fm_test_rng *r, int n)
{
    return (int)(fm_test_rng_u32(r) % (uint32_t)n);
}

double fm_test_rng_uniform(fm_test_rng *r)
{
    return (double)(fm_test_rng_next(r) >> 11) / 9007199254740992.0; /* 2^53 */
}

double fm_test_rng_range(fm_test_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * fm_test_rng_uniform(r);
}

float fm_test_rng_signed(fm_test_rng *r)
{
    return (float)((double)fm_test_rng_u32(r) / 4294967296.0 * 2.0 - 1.0);
}

/* ---- memory -------------------------------------------------------------------------- */

void *fm_test_alloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", size);
        exit(1);
    }
    return p;
}
