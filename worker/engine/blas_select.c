/* blas_select.c - which OpenBLAS kernel set runs (include/facemill/blas.h): the CPU's
 * instruction sets from cpuid, the decision, the re-execution with OPENBLAS_CORETYPE
 * and the numerical self-check of the new kernels in a child process.
 *
 * It exists because OpenBLAS decides once, when it loads, and may decide badly (an
 * unknown CPU gets SSE3 kernels) or dangerously (kernels that compute wrong results on
 * some CPU / release pairs); the only way to change its mind is a new process. The
 * state that crosses exec lives in two environment variables (OPENBLAS_CORETYPE and
 * FM_BLAS_ENV_MARK), so every step can be followed from outside and none repeats.
 */
#include "blas-impl.h"
#include "facemill/clock.h"

#include <cblas.h>

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define BLAS_X86 1
#else
#define BLAS_X86 0
#endif

#define CORETYPE "OPENBLAS_CORETYPE"
#define SELF_EXE "/proc/self/exe"
#define SELF_CMDLINE "/proc/self/cmdline"
#define CHECK_TIMEOUT_MS 20000

/* ---- the CPU ------------------------------------------------------------------- */

#if BLAS_X86
static unsigned long long xgetbv0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

void fm_blas_cpu_read(fm_blas_cpu *out)
{
    memset(out, 0, sizeof *out);
#if BLAS_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return;
    unsigned max = a;
    memcpy(out->vendor, &b, 4);
    memcpy(out->vendor + 4, &d, 4);
    memcpy(out->vendor + 8, &c, 4);
    out->known = 1;
    out->level = FM_BLAS_ISA_SSE2;
    if (max < 1 || !__get_cpuid(1, &a, &b, &c, &d))
        return;
    int sse3 = c & 1, fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
    int os_ymm = (xcr0 & 0x6) == 0x6;    /* XMM and YMM state */
    int os_zmm = (xcr0 & 0xe6) == 0xe6;  /* and opmask, ZMM_Hi256, Hi16_ZMM */
    int avx2 = 0, avx512 = 0;
    if (max >= 7 && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        avx2 = (b >> 5) & 1;
        /* F (16), DQ (17), CD (28), BW (30), VL (31): what SkylakeX kernels use */
        const unsigned need = 1u << 16 | 1u << 17 | 1u << 28 | 1u << 30 | 1u << 31;
        avx512 = (b & need) == need;
        if (__get_cpuid_count(7, 1, &a, &b, &c, &d))
            out->avx512_bf16 = (a >> 5) & 1;
    }
    if (avx512 && avx2 && fma && os_zmm)
        out->level = FM_BLAS_ISA_AVX512;
    else if (avx2 && fma && avx && os_ymm)
        out->level = FM_BLAS_ISA_AVX2;
    else if (avx && os_ymm)
        out->level = FM_BLAS_ISA_AVX;
    else if (sse3)
        out->level = FM_BLAS_ISA_SSE3;
    if (out->level < FM_BLAS_ISA_AVX512)
        out->avx512_bf16 = 0;
#endif
}

const char *fm_blas_isa_text(fm_blas_isa level)
{
    switch (level) {
    case FM_BLAS_ISA_AVX512: return "AVX-512";
    case FM_BLAS_ISA_AVX2: return "AVX2 and FMA";
    case FM_BLAS_ISA_AVX: return "AVX";
    case FM_BLAS_ISA_SSE3: return "SSE3";
    default: return "SSE2";
    }
}

/* ---- kernel sets ----------------------------------------------------------------- */

/* The x86-64 kernel sets of OpenBLAS 0.3.21 DYNAMIC_ARCH builds (its corename table),
 * with the instruction set each needs. */
static const struct {
    const char *name;
    fm_blas_isa level;
} cores[] = {
    {"Katmai", FM_BLAS_ISA_SSE2},       {"Coppermine", FM_BLAS_ISA_SSE2},
    {"Northwood", FM_BLAS_ISA_SSE2},    {"Banias", FM_BLAS_ISA_SSE2},
    {"Athlon", FM_BLAS_ISA_SSE2},       {"Opteron", FM_BLAS_ISA_SSE2},
    {"Prescott", FM_BLAS_ISA_SSE3},     {"Atom", FM_BLAS_ISA_SSE3},
    {"Core2", FM_BLAS_ISA_SSE3},        {"Penryn", FM_BLAS_ISA_SSE3},
    {"Dunnington", FM_BLAS_ISA_SSE3},   {"Nehalem", FM_BLAS_ISA_SSE3},
    {"Opteron_SSE3", FM_BLAS_ISA_SSE3}, {"Barcelona", FM_BLAS_ISA_SSE3},
    {"Nano", FM_BLAS_ISA_SSE3},         {"Bobcat", FM_BLAS_ISA_SSE3},
    {"Sandybridge", FM_BLAS_ISA_AVX},   {"Bulldozer", FM_BLAS_ISA_AVX},
    {"Piledriver", FM_BLAS_ISA_AVX},    {"Steamroller", FM_BLAS_ISA_AVX},
    {"Excavator", FM_BLAS_ISA_AVX},     {"Haswell", FM_BLAS_ISA_AVX2},
    {"Zen", FM_BLAS_ISA_AVX2},          {"SkylakeX", FM_BLAS_ISA_AVX512},
    {"Cooperlake", FM_BLAS_ISA_AVX512},
};
#define N_CORES (sizeof cores / sizeof cores[0])

const char *fm_blas_core_lookup(const char *name, fm_blas_isa *level)
{
    for (size_t i = 0; name && i < N_CORES; i++)
        if (strcasecmp(name, cores[i].name) == 0) {
            if (level)
                *level = cores[i].level;
            return cores[i].name;
        }
    return NULL;
}

const char *fm_blas_best_core(const fm_blas_cpu *cpu)
{
    if (!cpu->known)
        return NULL;
    int amd = strcmp(cpu->vendor, "AuthenticAMD") == 0 ||
              strcmp(cpu->vendor, "HygonGenuine") == 0;
    switch (cpu->level) {
    case FM_BLAS_ISA_AVX512: return cpu->avx512_bf16 ? "Cooperlake" : "SkylakeX";
    case FM_BLAS_ISA_AVX2: return amd ? "Zen" : "Haswell";
    case FM_BLAS_ISA_AVX: return "Sandybridge";
    case FM_BLAS_ISA_SSE3: return "Prescott";
    default: return NULL;
    }
}

static int same_name(const char *a, const char *b)
{
    return a && b && strcasecmp(a, b) == 0;
}

fm_status fm_blas_plan_for(const char *setting, const char *running, const char *user_env,
                           const fm_blas_cpu *cpu, fm_blas_plan *out, fm_error *err)
{
    memset(out, 0, sizeof *out);
    int is_auto = setting && strcmp(setting, "auto") == 0;
    int is_keep = setting && strcmp(setting, "keep") == 0;
    const char *name = is_auto || is_keep ? NULL : fm_blas_core_lookup(setting, NULL);
    if (!is_auto && !is_keep && !name)
        return fm_error_set(err, FM_ERR_INVALID,
                            "engine.blas_kernels '%s': auto, keep or an OpenBLAS kernel set "
                            "(Prescott, Nehalem, Sandybridge, Haswell, Zen, SkylakeX, "
                            "Cooperlake, ...)", setting ? setting : "(null)");
    if (user_env) {
        /* Respected, but a set older than the CPU could run is said: on a Zen 4 with
         * AVX-512, OPENBLAS_CORETYPE=Haswell halves cblas_sgemm's speed. */
        fm_blas_isa env_level;
        const char *best = fm_blas_best_core(cpu);
        if (best && fm_blas_core_lookup(user_env, &env_level) && env_level < cpu->level)
            snprintf(out->why, sizeof out->why, "%s=%s in the environment (the user's "
                     "choice; this CPU could run %s, for %s: unset %s to let "
                     "engine.blas_kernels choose)", CORETYPE, user_env, best,
                     fm_blas_isa_text(cpu->level), CORETYPE);
        else
            snprintf(out->why, sizeof out->why, "%s=%s in the environment (the user's choice)",
                     CORETYPE, user_env);
        return FM_OK;
    }
    if (is_keep) {
        snprintf(out->why, sizeof out->why, "OpenBLAS's own choice (engine.blas_kernels: "
                 "keep)");
        return FM_OK;
    }
    if (name) {
        if (same_name(name, running)) {
            snprintf(out->why, sizeof out->why, "engine.blas_kernels: %s, OpenBLAS's own "
                     "choice too", name);
            return FM_OK;
        }
        out->change = 1;
        out->target = name;
        snprintf(out->why, sizeof out->why, "engine.blas_kernels: %s (OpenBLAS chose %s)",
                 name, running);
        return FM_OK;
    }
    const char *best = fm_blas_best_core(cpu);
    fm_blas_isa have;
    if (!best) {
        snprintf(out->why, sizeof out->why, "OpenBLAS's own choice (no x86 CPU to compare "
                 "with)");
        return FM_OK;
    }
    if (!fm_blas_core_lookup(running, &have)) {
        snprintf(out->why, sizeof out->why, "OpenBLAS's own choice (a kernel set facemill "
                 "does not know; the CPU supports %s)", fm_blas_isa_text(cpu->level));
        return FM_OK;
    }
    if (have >= cpu->level) {
        snprintf(out->why, sizeof out->why, "OpenBLAS's own choice, made for what the CPU "
                 "supports (%s)", fm_blas_isa_text(cpu->level));
        return FM_OK;
    }
    out->change = 1;
    out->target = best;
    snprintf(out->why, sizeof out->why, "engine.blas_kernels auto: OpenBLAS chose %s (%s), "
             "the CPU supports %s", running, fm_blas_isa_text(have),
             fm_blas_isa_text(cpu->level));
    return FM_OK;
}

/* ---- the self-check ---------------------------------------------------------------- */

typedef struct gemm_case {
    int m, n, k;
    int ta, tb;  /* 1: that operand is stored transposed */
    float beta;
} gemm_case;

/* Odd sizes reach the kernels' edge loops; some are shaped like the engine's
 * convolutions (few rows, many columns) and dense layers; the last ones are thin but
 * long in one dimension, past the blocking OpenBLAS does along M, N and K. About 1.4
 * million multiply-adds: a few milliseconds with the reference loop. */
static const gemm_case check_cases[] = {
    {1, 1, 1, 0, 0, 0.0f},     {3, 5, 7, 0, 1, 0.0f},    {7, 13, 5, 1, 0, 1.0f},
    {33, 65, 129, 0, 0, 0.0f}, {64, 48, 96, 1, 0, 1.0f}, {17, 40, 200, 0, 1, 1.0f},
    {10, 300, 27, 0, 0, 0.0f}, {32, 66, 144, 0, 0, 1.0f}, {9, 64, 130, 0, 1, 0.0f},
    {5, 7, 400, 0, 1, 0.0f},   {13, 20, 520, 1, 0, 1.0f}, {777, 5, 9, 0, 0, 0.0f},
    {3, 1030, 7, 0, 0, 1.0f},
};
#define N_CHECK_CASES (sizeof check_cases / sizeof check_cases[0])

static float lcg_value(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

int fm_blas_self_check(char *detail, size_t size)
{
    const char *hook = getenv("FACEMILL_BLAS_SELFTEST_FAIL");
    if (hook && strcmp(hook, "crash") == 0) {
        signal(SIGILL, SIG_DFL);
        raise(SIGILL); /* what kernels using an instruction the CPU lacks do */
    }
    int corrupt = hook && strcmp(hook, "1") == 0;
    size_t most = 0;
    for (size_t i = 0; i < N_CHECK_CASES; i++) {
        const gemm_case *g = &check_cases[i];
        size_t need = (size_t)g->m * g->k + (size_t)g->k * g->n + 2 * (size_t)g->m * g->n;
        most = need > most ? need : most;
    }
    float *buf = malloc(most * sizeof *buf);
    if (!buf) {
        snprintf(detail, size, "out of memory");
        return 1;
    }
    unsigned seed = 20240517u;
    int bad = 0;
    for (size_t i = 0; i < N_CHECK_CASES && !bad; i++) {
        const gemm_case *g = &check_cases[i];
        const int m = g->m, n = g->n, k = g->k;
        float *a = buf, *b = a + (size_t)m * k, *c = b + (size_t)k * n;
        float *c0 = c + (size_t)m * n;
        for (size_t j = 0; j < (size_t)m * k + (size_t)k * n + (size_t)m * n; j++)
            a[j] = lcg_value(&seed);
        memcpy(c0, c, (size_t)m * n * sizeof *c);
        const int lda = g->ta ? m : k, ldb = g->tb ? k : n;
        cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                    g->tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, g->beta,
                    c, n);
        if (corrupt && i == N_CHECK_CASES / 2)
            c[(size_t)m * n / 2] += 1.0f;
        for (int r = 0; r < m && !bad; r++) {
            for (int q = 0; q < n; q++) {
                double sum = 0, mag = 0;
                for (int t = 0; t < k; t++) {
                    double x = g->ta ? a[(size_t)t * lda + r] : a[(size_t)r * lda + t];
                    double y = g->tb ? b[(size_t)q * ldb + t] : b[(size_t)t * ldb + q];
                    sum += x * y;
                    mag += fabs(x * y);
                }
                double c_in = c0[(size_t)r * n + q];
                double ref = sum + (double)g->beta * c_in;
                mag += fabs((double)g->beta * c_in);
                double got = c[(size_t)r * n + q];
                /* float32 sums of k products: errors far below 1e-4 of the magnitude */
                if (!(fabs(got - ref) <= 1e-4 * mag + 1e-30)) {
                    snprintf(detail, size, "sgemm %s%s %dx%dx%d, beta %g: C[%d,%d] = %.7g, "
                             "expected %.7g", g->ta ? "A^T" : "A", g->tb ? " B^T" : " B", m,
                             n, k, (double)g->beta, r, q, got, ref);
                    bad = 1;
                    break;
                }
            }
        }
    }
    free(buf);
    if (!bad)
        snprintf(detail, size, "%zu sgemm cases agree with the reference", N_CHECK_CASES);
    return bad;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

int fm_blas_self_check_child(int timeout_ms, char *detail, size_t size, double *ms)
{
    double t0 = now_ms();
    int fds[2];
    if (pipe(fds) != 0) {
        snprintf(detail, size, "no pipe for the check: %s", strerror(errno));
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(detail, size, "cannot fork the check: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return 1;
    }
    if (pid == 0) { /* the child: check, report, leave without atexit handlers */
        close(fds[0]);
        char msg[256];
        openblas_set_num_threads(1);
        int r = fm_blas_self_check(msg, sizeof msg);
        ssize_t w = write(fds[1], msg, strlen(msg));
        (void)w;
        _exit(r ? 1 : 0);
    }
    close(fds[1]);
    char msg[256];
    size_t got = 0;
    int timed_out = 0;
    double deadline = t0 + timeout_ms;
    for (;;) {
        double left = deadline - now_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd p = {fds[0], POLLIN, 0};
        int r = poll(&p, 1, (int)left + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            timed_out = r == 0;
            break;
        }
        ssize_t n = read(fds[0], msg + got, sizeof msg - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* end of file: the child is gone */
        got += (size_t)n;
        if (got == sizeof msg - 1)
            break;
    }
    msg[got] = '\0';
    close(fds[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (ms)
        *ms = now_ms() - t0;
    if (timed_out) {
        snprintf(detail, size, "no answer in %d ms", timeout_ms);
        return 1;
    }
    if (WIFSIGNALED(status)) {
        snprintf(detail, size, "crashed (signal %d, %s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
        return 1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(detail, size, "wrong results: %s", got ? msg : "(no detail)");
        return 1;
    }
    snprintf(detail, size, "%s", msg);
    return 0;
}

/* ---- selection ------------------------------------------------------------------- */

static fm_blas_choice last_choice;
static int have_choice;

const char *fm_blas_core(void)
{
    return openblas_get_corename();
}

int fm_blas_selected(fm_blas_choice *out)
{
    if (have_choice && out)
        *out = last_choice;
    return have_choice;
}

/* The mark "STATE:NAME:ORIGINAL[:DETAIL]" split into its fields (empty when absent). */
typedef struct mark {
    char state[16], name[32], orig[32], detail[256];
} mark;

static void mark_parse(const char *s, mark *m)
{
    memset(m, 0, sizeof *m);
    if (!s)
        return;
    char *fields[4] = {m->state, m->name, m->orig, m->detail};
    size_t sizes[4] = {sizeof m->state, sizeof m->name, sizeof m->orig, sizeof m->detail};
    for (int f = 0; f < 4 && *s; f++) {
        const char *end = f < 3 ? strchr(s, ':') : NULL;
        size_t len = end ? (size_t)(end - s) : strlen(s);
        snprintf(fields[f], sizes[f], "%.*s", (int)len, s);
        s += len + (end ? 1 : 0);
    }
}

static int mark_set(const char *state, const char *name, const char *orig,
                    const char *detail)
{
    char v[400];
    snprintf(v, sizeof v, "%s:%s:%s%s%s", state, name, orig, detail ? ":" : "",
             detail ? detail : "");
    return setenv(FM_BLAS_ENV_MARK, v, 1);
}

/* Fills out, remembers it for fm_blas_selected, returns FM_OK. */
static fm_status done(fm_blas_choice *out, int switched, double check_ms, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));
static fm_status done(fm_blas_choice *out, int switched, double check_ms, const char *fmt,
                      ...)
{
    fm_blas_choice c;
    memset(&c, 0, sizeof c);
    snprintf(c.core, sizeof c.core, "%s", openblas_get_corename());
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c.reason, sizeof c.reason, fmt, ap);
    va_end(ap);
    c.switched = switched;
    c.check_ms = check_ms;
    last_choice = c;
    have_choice = 1;
    if (out)
        *out = c;
    return FM_OK;
}

/* Replaces the process image with this program, its command line as it was started
 * (/proc/self/cmdline) and the environment as it now is. Returns only on failure,
 * with the reason in why. */
static void reexec(char *why, size_t size)
{
    FILE *f = fopen(SELF_CMDLINE, "rb");
    char *text = NULL, **argv = NULL;
    size_t len = 0, cap = 0;
    if (!f) {
        snprintf(why, size, "%s: %s", SELF_CMDLINE, strerror(errno));
        return;
    }
    for (;;) { /* the whole file: its size is not known in advance */
        if (len + 4096 + 1 > cap) {
            char *t = realloc(text, cap = 2 * cap + 4096 + 1);
            if (!t)
                break;
            text = t;
        }
        size_t n = fread(text + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    int read_error = ferror(f);
    fclose(f);
    int argc = 0;
    for (size_t i = 0; text && i < len; i++)
        argc += text[i] == '\0';
    if (text && !read_error && len > 0 && text[len - 1] == '\0' &&
        (argv = calloc((size_t)argc + 1, sizeof *argv)) != NULL) {
        for (size_t i = 0, a = 0; i < len; i += strlen(text + i) + 1)
            argv[a++] = text + i;
        fflush(NULL);
        execv(SELF_EXE, argv);
        snprintf(why, size, "%s", strerror(errno));
    } else {
        snprintf(why, size, "%s could not be read", SELF_CMDLINE);
    }
    free(argv);
    free(text);
}

/* The re-executed process: OPENBLAS_CORETYPE is m->name, chosen for `why`. Checks
 * the kernels; on failure goes back to OpenBLAS's choice by one more exec. */
static fm_status run_check(const mark *m, const char *why, fm_blas_choice *out,
                           fm_error *err)
{
    char detail[256];
    double ms = 0;
    const char *running = openblas_get_corename();
    int failed;
    if (!same_name(running, m->name)) {
        snprintf(detail, sizeof detail, "OpenBLAS runs %s when asked for it", running);
        failed = 1;
    } else {
        failed = fm_blas_self_check_child(CHECK_TIMEOUT_MS, detail, sizeof detail, &ms);
    }
    if (!failed) {
        mark_set("ok", m->name, m->orig, NULL);
        return done(out, 1, ms, "%s; self-check passed (%s, %.1f ms)", why, detail, ms);
    }
    mark_set("failed", m->name, m->orig, detail);
    unsetenv(CORETYPE);
    char text[128];
    reexec(text, sizeof text);
    return fm_error_set(err, FM_ERR_INTERNAL,
                        "BLAS kernels %s failed the self-check (%s) and this program could "
                        "not re-execute itself with OpenBLAS's own choice: %s", m->name,
                        detail, text);
}

fm_status fm_blas_select(const char *setting, fm_blas_choice *out, fm_error *err)
{
    if (!setting)
        return fm_error_set(err, FM_ERR_INVALID, "fm_blas_select: NULL argument");
    fm_blas_cpu cpu;
    fm_blas_cpu_read(&cpu);
    const char *running = openblas_get_corename();
    const char *env = getenv(CORETYPE);
    fm_blas_plan plan;
    /* the setting is checked whatever the state, so a bad one never goes unnoticed */
    fm_status st = fm_blas_plan_for(setting, running, env, &cpu, &plan, err);
    if (st != FM_OK)
        return st;
    mark m;
    mark_parse(getenv(FM_BLAS_ENV_MARK), &m);
    if (strcmp(m.state, "check") == 0 && same_name(env, m.name)) {
        /* why the first process switched: the decision it made, from its view */
        fm_blas_plan first;
        if (fm_blas_plan_for(setting, m.orig, NULL, &cpu, &first, NULL) != FM_OK ||
            !first.change)
            snprintf(first.why, sizeof first.why, "switched from %s", m.orig);
        return run_check(&m, first.why, out, err);
    }
    if (strcmp(m.state, "ok") == 0 && same_name(env, m.name))
        return done(out, 0, 0, "chosen and self-checked by the facemill process that "
                    "started this one (OpenBLAS chose %s)", m.orig);
    if (strcmp(m.state, "failed") == 0 && !env)
        return done(out, 0, 0, "OpenBLAS's own choice: %s failed the self-check (%s)",
                    m.name, m.detail);
    if (getenv(FM_BLAS_ENV_MARK))
        unsetenv(FM_BLAS_ENV_MARK); /* not ours to follow: the environment changed */
    if (!plan.change)
        return done(out, 0, 0, "%s", plan.why);
    char why[128];
    if (access(SELF_EXE, X_OK) != 0)
        return done(out, 0, 0, "OpenBLAS's own choice: %s would be better (%s), but %s "
                    "cannot be executed (%s)", plan.target, plan.why, SELF_EXE,
                    strerror(errno));
    if (setenv(CORETYPE, plan.target, 1) != 0 || mark_set("check", plan.target, running,
                                                          NULL) != 0)
        return done(out, 0, 0, "OpenBLAS's own choice: no room in the environment for %s",
                    plan.target);
    reexec(why, sizeof why);
    unsetenv(CORETYPE);
    unsetenv(FM_BLAS_ENV_MARK);
    return done(out, 0, 0, "OpenBLAS's own choice: re-executing for %s (%s) failed: %s",
                plan.target, plan.why, why);
}

double fm_blas_sgemm_gflops(void)
{
    const int n = 1024;
    float *a = malloc(sizeof(float) * (size_t)n * n * 3);
    if (!a)
        return 0.0;
    for (size_t i = 0; i < (size_t)n * n * 3; i++)
        a[i] = (float)(i % 7) * 0.25f - 0.75f;
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = fm_now_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n,
                    a + (size_t)n * n, n, 0.0f, a + (size_t)2 * n * n, n);
        double t = fm_now_ms() - t0;
        best = t < best ? t : best;
    }
    free(a);
    return 2.0 * n * n * n / best * 1e-6;
}
