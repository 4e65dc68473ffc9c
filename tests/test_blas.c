/* test_blas.c - the choice of OpenBLAS kernels (include/facemill/blas.h,
 * worker/engine/blas_select.c).
 *
 * 1. The parts: kernel set names, the best set for a CPU, the decision for every
 *    setting against constructed CPUs, and the self-check, which passes on the kernels
 *    this process runs (in this process and in a forked child).
 * 2. Whole processes: this program run again as a probe (--probe SETTING) with an
 *    environment built for the case, calling fm_blas_select as a program's main does
 *    and printing what it got, how often it was started (the re-executions) and how
 *    long that took. keep does nothing; a NAME is run after its self-check; a forced
 *    failure of the self-check (FACEMILL_BLAS_SELFTEST_FAIL=1: wrong results, =crash:
 *    SIGILL) goes back to OpenBLAS's choice; a user's OPENBLAS_CORETYPE is never
 *    changed; auto does what the decision says for this CPU; inherited and stale marks.
 * OPENBLAS_CORETYPE and the other variables are set only in the probes' environments:
 * this process's own environment stays as it was found.
 */
#include "blas-impl.h"
#include "fm_test.h"

#include <cblas.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define STARTS "FACEMILL_TEST_BLAS_STARTS" /* probe: times main ran */
#define T0 "FACEMILL_TEST_BLAS_T0"         /* probe: first start, CLOCK_MONOTONIC ns */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the probe ------------------------------------------------------------------ */

static int probe(const char *setting)
{
    char buf[32];
    const char *s = getenv(STARTS);
    int starts = (s ? atoi(s) : 0) + 1;
    snprintf(buf, sizeof buf, "%d", starts);
    setenv(STARTS, buf, 1);
    if (!getenv(T0)) {
        snprintf(buf, sizeof buf, "%lld", (long long)now_ns());
        setenv(T0, buf, 1);
    }
    fm_blas_choice c;
    fm_error err = {0};
    memset(&c, 0, sizeof c);
    fm_status st = fm_blas_select(setting, &c, &err);
    double ms = (double)(now_ns() - atoll(getenv(T0))) / 1e6;
    char detail[256];
    const char *hook = getenv("FACEMILL_BLAS_SELFTEST_FAIL");
    int check = hook && strcmp(hook, "crash") == 0
                    ? -1 /* the hook would crash this check too */
                    : fm_blas_self_check(detail, sizeof detail); /* computing works */
    const char *mark = getenv(FM_BLAS_ENV_MARK), *ct = getenv("OPENBLAS_CORETYPE");
    fm_blas_choice again;
    printf("status=%d\nstarts=%d\ncore=%s\nrunning=%s\nswitched=%d\ncheck=%d\nmark=%s\n"
           "coretype=%s\nms=%.2f\ncheck_ms=%.2f\nselected=%d\nreason=%s\nerror=%s\n",
           (int)st, starts, c.core, openblas_get_corename(), c.switched, check,
           mark ? mark : "(unset)", ct ? ct : "(unset)", ms, c.check_ms,
           fm_blas_selected(&again) && strcmp(again.core, c.core) == 0, c.reason,
           st ? err.msg : "");
    return 0;
}

/* ---- running a probe ----------------------------------------------------------- */

typedef struct probe_out {
    char text[4096];
    int exit_code;
} probe_out;

/* The value of "key=..." in the probe's output, "" when absent. */
static const char *field(const probe_out *p, const char *key, char *buf, size_t size)
{
    size_t k = strlen(key);
    buf[0] = '\0';
    for (const char *line = p->text; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > k && strncmp(line, key, k) == 0 && line[k] == '=') {
            snprintf(buf, size, "%.*s", (int)(len - k - 1), line + k + 1);
            break;
        }
        line = end ? end + 1 : NULL;
    }
    return buf;
}

static int field_int(const probe_out *p, const char *key)
{
    char b[64];
    return atoi(field(p, key, b, sizeof b));
}

/* Runs self as a probe of setting in this environment without OPENBLAS_CORETYPE, the
 * mark and the test hook, plus extra ("NAME=VALUE", NULL-terminated). */
static void run_probe(const char *self, const char *setting, const char *const *extra,
                      probe_out *out)
{
    memset(out, 0, sizeof *out);
    out->exit_code = -1;
    size_t n = 0;
    while (environ[n])
        n++;
    size_t n_extra = 0;
    while (extra && extra[n_extra])
        n_extra++;
    char **env = calloc(n + n_extra + 1, sizeof *env);
    if (!env)
        return;
    size_t m = 0;
    static const char *const drop[] = {"OPENBLAS_CORETYPE=", FM_BLAS_ENV_MARK "=",
                                       "FACEMILL_BLAS_SELFTEST_FAIL=", STARTS "=", T0 "=",
                                       NULL};
    for (size_t i = 0; i < n; i++) {
        int keep = 1;
        for (int d = 0; drop[d]; d++)
            keep &= strncmp(environ[i], drop[d], strlen(drop[d])) != 0;
        if (keep)
            env[m++] = environ[i];
    }
    for (size_t i = 0; i < n_extra; i++)
        env[m++] = (char *)extra[i];
    int fds[2];
    if (pipe(fds) != 0) {
        free(env);
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        char *argv[] = {(char *)self, "--probe", (char *)setting, NULL};
        execve(self, argv, env);
        _exit(127);
    }
    close(fds[1]);
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fds[0], out->text + got, sizeof out->text - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    out->exit_code = pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    free(env);
}

/* ---- 1: the parts ---------------------------------------------------------------- */

static fm_blas_cpu cpu_of(const char *vendor, fm_blas_isa level, int bf16)
{
    fm_blas_cpu c;
    memset(&c, 0, sizeof c);
    c.known = 1;
    snprintf(c.vendor, sizeof c.vendor, "%s", vendor);
    c.level = level;
    c.avx512_bf16 = bf16;
    return c;
}

static void test_names(void)
{
    fm_blas_isa l = FM_BLAS_ISA_SSE2;
    CHECK(fm_blas_core_lookup("haswell", &l) && strcmp(fm_blas_core_lookup("haswell", &l),
                                                        "Haswell") == 0);
    CHECK(l == FM_BLAS_ISA_AVX2);
    CHECK(fm_blas_core_lookup("SKYLAKEX", &l) && l == FM_BLAS_ISA_AVX512);
    CHECK(fm_blas_core_lookup("Prescott", &l) && l == FM_BLAS_ISA_SSE3);
    CHECK(fm_blas_core_lookup("Sandybridge", &l) && l == FM_BLAS_ISA_AVX);
    CHECK(fm_blas_core_lookup("Zen", NULL) != NULL);
    CHECK(fm_blas_core_lookup("Haswel", NULL) == NULL);
    CHECK(fm_blas_core_lookup("", NULL) == NULL);
    CHECK(fm_blas_core_lookup(NULL, NULL) == NULL);
    /* whatever OpenBLAS runs here is a set this table knows (else auto cannot judge) */
    CHECK_MSG(fm_blas_core_lookup(openblas_get_corename(), NULL) != NULL, "%s",
              openblas_get_corename());

    fm_blas_cpu c = cpu_of("GenuineIntel", FM_BLAS_ISA_AVX512, 0);
    CHECK(strcmp(fm_blas_best_core(&c), "SkylakeX") == 0);
    c.avx512_bf16 = 1;
    CHECK(strcmp(fm_blas_best_core(&c), "Cooperlake") == 0);
    c = cpu_of("GenuineIntel", FM_BLAS_ISA_AVX2, 0);
    CHECK(strcmp(fm_blas_best_core(&c), "Haswell") == 0);
    c = cpu_of("AuthenticAMD", FM_BLAS_ISA_AVX2, 0);
    CHECK(strcmp(fm_blas_best_core(&c), "Zen") == 0);
    c = cpu_of("HygonGenuine", FM_BLAS_ISA_AVX2, 0);
    CHECK(strcmp(fm_blas_best_core(&c), "Zen") == 0);
    c = cpu_of("AuthenticAMD", FM_BLAS_ISA_AVX512, 1);
    CHECK(strcmp(fm_blas_best_core(&c), "Cooperlake") == 0);
    c = cpu_of("GenuineIntel", FM_BLAS_ISA_AVX, 0);
    CHECK(strcmp(fm_blas_best_core(&c), "Sandybridge") == 0);
    c.known = 0;
    CHECK(fm_blas_best_core(&c) == NULL);

    fm_blas_cpu here;
    fm_blas_cpu_read(&here);
#if defined(__x86_64__)
    CHECK(here.known && here.level >= FM_BLAS_ISA_SSE2 && here.level <= FM_BLAS_ISA_AVX512);
    fprintf(stderr, "this CPU: %s, %s%s; OpenBLAS runs %s\n", here.vendor,
            fm_blas_isa_text(here.level), here.avx512_bf16 ? " with BF16" : "",
            openblas_get_corename());
#endif
}

typedef struct plan_case {
    const char *setting, *running, *user_env;
    const char *vendor;
    fm_blas_isa level;
    int bf16;
    const char *target; /* NULL: keep */
    const char *why;    /* a part of the reason */
} plan_case;

static void test_plans(void)
{
    static const plan_case cases[] = {
        /* auto switches only up an instruction set */
        {"auto", "Prescott", NULL, "GenuineIntel", FM_BLAS_ISA_AVX2, 0, "Haswell", "Prescott"},
        {"auto", "Prescott", NULL, "AuthenticAMD", FM_BLAS_ISA_AVX2, 0, "Zen", "AVX2 and FMA"},
        {"auto", "Prescott", NULL, "GenuineIntel", FM_BLAS_ISA_AVX512, 0, "SkylakeX", "AVX-512"},
        {"auto", "Haswell", NULL, "GenuineIntel", FM_BLAS_ISA_AVX512, 1, "Cooperlake", "AVX2"},
        {"auto", "Sandybridge", NULL, "GenuineIntel", FM_BLAS_ISA_AVX2, 0, "Haswell", "AVX"},
        {"auto", "Nehalem", NULL, "GenuineIntel", FM_BLAS_ISA_AVX, 0, "Sandybridge", "SSE3"},
        {"auto", "Haswell", NULL, "GenuineIntel", FM_BLAS_ISA_AVX2, 0, NULL, "own choice"},
        {"auto", "Haswell", NULL, "AuthenticAMD", FM_BLAS_ISA_AVX2, 0, NULL, "own choice"},
        {"auto", "Zen", NULL, "AuthenticAMD", FM_BLAS_ISA_AVX2, 0, NULL, "own choice"},
        {"auto", "SkylakeX", NULL, "GenuineIntel", FM_BLAS_ISA_AVX512, 0, NULL, "own choice"},
        {"auto", "Prescott", NULL, "GenuineIntel", FM_BLAS_ISA_SSE3, 0, NULL, "own choice"},
        {"auto", "Prescott", NULL, "", FM_BLAS_ISA_SSE2, 0, NULL, "no x86 CPU"}, /* known 0 */
        {"auto", "armv8", NULL, "GenuineIntel", FM_BLAS_ISA_AVX2, 0, NULL, "does not know"},
        /* keep does nothing; a name is that name */
        {"keep", "Prescott", NULL, "GenuineIntel", FM_BLAS_ISA_AVX512, 0, NULL, "keep"},
        {"Haswell", "Prescott", NULL, "GenuineIntel", FM_BLAS_ISA_AVX2, 0, "Haswell", "Haswell"},
        {"prescott", "Zen", NULL, "AuthenticAMD", FM_BLAS_ISA_AVX2, 0, "Prescott", "Prescott"},
        {"zen", "Zen", NULL, "AuthenticAMD", FM_BLAS_ISA_AVX2, 0, NULL, "own choice too"},
        /* the user's OPENBLAS_CORETYPE wins over every setting */
        {"auto", "Prescott", "Prescott", "GenuineIntel", FM_BLAS_ISA_AVX512, 0, NULL,
         "OPENBLAS_CORETYPE=Prescott"},
        {"SkylakeX", "Haswell", "Haswell", "GenuineIntel", FM_BLAS_ISA_AVX512, 0, NULL,
         "the user's choice"},
        {"keep", "Haswell", "", "GenuineIntel", FM_BLAS_ISA_AVX2, 0, NULL, "environment"},
        /* ... and one older than the CPU could run is said, with the better set */
        {"auto", "Haswell", "Haswell", "AuthenticAMD", FM_BLAS_ISA_AVX512, 1, NULL,
         "could run Cooperlake, for AVX-512: unset OPENBLAS_CORETYPE"},
        {"auto", "Zen", "Prescott", "AuthenticAMD", FM_BLAS_ISA_AVX2, 0, NULL,
         "could run Zen, for AVX2 and FMA"},
        {"auto", "Haswell", "Haswell", "GenuineIntel", FM_BLAS_ISA_AVX2, 0, NULL,
         "(the user's choice)"},
        {"auto", "Zen", "Haswell", "AuthenticAMD", FM_BLAS_ISA_AVX2, 0, NULL,
         "(the user's choice)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const plan_case *k = &cases[i];
        fm_blas_cpu cpu = cpu_of(k->vendor, k->level, k->bf16);
        cpu.known = k->vendor[0] != '\0';
        fm_blas_plan p;
        fm_error e = {0};
        fm_status st = fm_blas_plan_for(k->setting, k->running, k->user_env, &cpu, &p, &e);
        CHECK_MSG(st == FM_OK, "case %zu: %s", i, e.msg);
        CHECK_MSG(p.change == (k->target != NULL), "case %zu (%s, %s): change %d", i,
                  k->setting, k->running, p.change);
        if (k->target && p.change)
            CHECK_MSG(strcmp(p.target, k->target) == 0, "case %zu: %s, expected %s", i,
                      p.target, k->target);
        CHECK_MSG(strstr(p.why, k->why) != NULL, "case %zu: reason '%s' lacks '%s'", i,
                  p.why, k->why);
    }
    fm_blas_cpu cpu = cpu_of("GenuineIntel", FM_BLAS_ISA_AVX2, 0);
    fm_blas_plan p;
    fm_error e = {0};
    const char *bad[] = {"Haswel", "", "AUTO", "auto ", "best", NULL};
    for (int i = 0; bad[i]; i++) {
        CHECK_MSG(fm_blas_plan_for(bad[i], "Haswell", NULL, &cpu, &p, &e) == FM_ERR_INVALID,
                  "setting '%s'", bad[i]);
        CHECK(strstr(e.msg, "engine.blas_kernels") && strstr(e.msg, "auto, keep"));
    }
    /* a bad setting is an error even when the user's variable makes it moot */
    CHECK(fm_blas_plan_for("nonsense", "Haswell", "Haswell", &cpu, &p, &e) == FM_ERR_INVALID);
}

static void test_self_check(void)
{
    char detail[256];
    int64_t t0 = now_ns();
    int r = fm_blas_self_check(detail, sizeof detail);
    double in_ms = (double)(now_ns() - t0) / 1e6;
    CHECK_MSG(r == 0, "in process: %s", detail);
    double child_ms = 0;
    r = fm_blas_self_check_child(20000, detail, sizeof detail, &child_ms);
    CHECK_MSG(r == 0, "in a child: %s", detail);
    CHECK(strstr(detail, "agree"));
    fprintf(stderr, "self-check on %s: %.1f ms in this process, %.1f ms in a child (fork, "
            "check, wait)\n", openblas_get_corename(), in_ms, child_ms);
}

/* ---- 2: whole processes ----------------------------------------------------------- */

static void test_processes(const char *self)
{
    probe_out p;
    char b[512], b2[512];
    /* keep: nothing happens */
    run_probe(self, "keep", NULL, &p);
    CHECK_MSG(p.exit_code == 0, "probe: exit %d\n%s", p.exit_code, p.text);
    char own[64];
    snprintf(own, sizeof own, "%s", field(&p, "core", b, sizeof b));
    CHECK(own[0] != '\0');
    CHECK(field_int(&p, "starts") == 1 && field_int(&p, "switched") == 0);
    CHECK(field_int(&p, "check") == 0 && field_int(&p, "selected") == 1);
    CHECK(strcmp(field(&p, "coretype", b, sizeof b), "(unset)") == 0);
    CHECK(strcmp(field(&p, "mark", b, sizeof b), "(unset)") == 0);
    CHECK(strstr(field(&p, "reason", b, sizeof b), "keep") != NULL);
    fprintf(stderr, "OpenBLAS's own choice here: %s; keep: %.2f ms to decide\n", own,
            atof(field(&p, "ms", b, sizeof b)));

    /* a name: re-executed once, checked, running it */
    const char *name = strcmp(own, "Prescott") != 0 ? "Prescott" : "Core2";
    char setting[64], expect_mark[128];
    snprintf(setting, sizeof setting, "%s", name);
    run_probe(self, setting, NULL, &p);
    CHECK_MSG(strcmp(field(&p, "core", b, sizeof b), name) == 0, "%s\n%s", name, p.text);
    CHECK(strcmp(field(&p, "running", b, sizeof b), name) == 0);
    CHECK(field_int(&p, "starts") == 2 && field_int(&p, "switched") == 1);
    CHECK(field_int(&p, "check") == 0 && field_int(&p, "selected") == 1);
    snprintf(expect_mark, sizeof expect_mark, "ok:%s:%s", name, own);
    CHECK_MSG(strcmp(field(&p, "mark", b, sizeof b), expect_mark) == 0, "%s", b);
    CHECK(strcmp(field(&p, "coretype", b, sizeof b), name) == 0);
    CHECK(strstr(field(&p, "reason", b, sizeof b), "self-check passed") != NULL);
    fprintf(stderr, "%s by name: started twice, %.2f ms from the first start to the answer "
            "(self-check %.2f ms)\n", name, atof(field(&p, "ms", b, sizeof b)),
            atof(field(&p, "check_ms", b2, sizeof b2)));
    /* the name in any case */
    char lower[64];
    for (size_t i = 0; i <= strlen(name); i++)
        lower[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
    run_probe(self, lower, NULL, &p);
    CHECK_MSG(strcmp(field(&p, "core", b, sizeof b), name) == 0, "%s", p.text);

    /* a self-check that fails, or crashes: back to OpenBLAS's choice, started 3 times */
    const char *fail_env[][2] = {{"FACEMILL_BLAS_SELFTEST_FAIL=1", "wrong results"},
                                 {"FACEMILL_BLAS_SELFTEST_FAIL=crash", "crashed (signal"}};
    for (int f = 0; f < 2; f++) {
        const char *extra[] = {fail_env[f][0], NULL};
        run_probe(self, setting, extra, &p);
        CHECK_MSG(strcmp(field(&p, "core", b, sizeof b), own) == 0, "%s\n%s", fail_env[f][0],
                  p.text);
        CHECK(field_int(&p, "starts") == 3 && field_int(&p, "switched") == 0);
        CHECK(strcmp(field(&p, "coretype", b, sizeof b), "(unset)") == 0);
        snprintf(expect_mark, sizeof expect_mark, "failed:%s:%s:", name, own);
        CHECK_MSG(strncmp(field(&p, "mark", b, sizeof b), expect_mark, strlen(expect_mark)) ==
                      0, "%s", b);
        field(&p, "reason", b, sizeof b);
        CHECK_MSG(strstr(b, "failed the self-check") && strstr(b, fail_env[f][1]), "%s", b);
        /* the hook lives in the self-check only: the probe's own check (run after the
         * choice, with the hook still set) fails, or here, crashes the probe */
        if (f == 0)
            CHECK(field_int(&p, "check") == 1);
    }

    /* the user's OPENBLAS_CORETYPE is never changed, whatever the setting */
    char user[64];
    snprintf(user, sizeof user, "OPENBLAS_CORETYPE=%s", name);
    const char *user_env[] = {user, NULL};
    const char *settings[] = {"auto", "keep", "SkylakeX", NULL};
    for (int s = 0; settings[s]; s++) {
        run_probe(self, settings[s], user_env, &p);
        CHECK_MSG(strcmp(field(&p, "core", b, sizeof b), name) == 0, "%s: %s", settings[s],
                  p.text);
        CHECK(field_int(&p, "starts") == 1);
        CHECK(strcmp(field(&p, "coretype", b, sizeof b), name) == 0);
        CHECK(strstr(field(&p, "reason", b, sizeof b), "the user's choice") != NULL);
    }

    /* auto: what the decision says for this CPU */
    fm_blas_cpu cpu;
    fm_blas_cpu_read(&cpu);
    fm_blas_plan plan;
    CHECK(fm_blas_plan_for("auto", own, NULL, &cpu, &plan, NULL) == FM_OK);
    run_probe(self, "auto", NULL, &p);
    const char *want = plan.change ? plan.target : own;
    CHECK_MSG(strcmp(field(&p, "core", b, sizeof b), want) == 0, "auto: %s\n%s", want, p.text);
    CHECK(field_int(&p, "starts") == (plan.change ? 2 : 1));
    CHECK(field_int(&p, "check") == 0);
    fprintf(stderr, "auto here: %s (%s), %.2f ms\n", field(&p, "core", b, sizeof b),
            field(&p, "reason", b2, sizeof b2), atof(field(&p, "ms", b, sizeof b)));

    /* a mark inherited from a facemill parent is followed without a new check; one
     * that does not match the environment is dropped */
    char inherited[128];
    snprintf(inherited, sizeof inherited, FM_BLAS_ENV_MARK "=ok:%s:%s", name, own);
    const char *child_env[] = {user, inherited, NULL};
    run_probe(self, "auto", child_env, &p);
    CHECK_MSG(strcmp(field(&p, "core", b, sizeof b), name) == 0, "%s", p.text);
    CHECK(field_int(&p, "starts") == 1 && atof(field(&p, "check_ms", b, sizeof b)) == 0);
    CHECK(strstr(field(&p, "reason", b, sizeof b), "started this one") != NULL);
    const char *stale_env[] = {inherited, NULL};
    run_probe(self, "keep", stale_env, &p);
    CHECK(strcmp(field(&p, "core", b, sizeof b), own) == 0);
    CHECK(strcmp(field(&p, "mark", b, sizeof b), "(unset)") == 0);
    CHECK(field_int(&p, "starts") == 1);
    /* a failure inherited: no retry */
    char failed[160];
    snprintf(failed, sizeof failed, FM_BLAS_ENV_MARK "=failed:%s:%s:wrong results", name,
             own);
    const char *failed_env[] = {failed, NULL};
    run_probe(self, setting, failed_env, &p);
    CHECK(strcmp(field(&p, "core", b, sizeof b), own) == 0);
    CHECK(field_int(&p, "starts") == 1);

    /* a bad setting: an error, nothing else */
    run_probe(self, "Haswel", NULL, &p);
    CHECK(field_int(&p, "status") == FM_ERR_INVALID && field_int(&p, "starts") == 1);
    CHECK(strstr(field(&p, "error", b, sizeof b), "engine.blas_kernels 'Haswel'") != NULL);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--probe") == 0)
        return probe(argv[2]);
    const char *before = getenv("OPENBLAS_CORETYPE");
    char saved[64];
    snprintf(saved, sizeof saved, "%s", before ? before : "(unset)");
#if !defined(__x86_64__)
    fprintf(stderr, "skip: the kernel sets tested are x86-64 ones\n");
    return FM_TEST_SKIP;
#endif
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "skip: /proc/self/exe unreadable\n");
        return FM_TEST_SKIP;
    }
    self[n] = '\0';
    test_names();
    test_plans();
    test_self_check();
    test_processes(self);
    const char *after = getenv("OPENBLAS_CORETYPE");
    CHECK(strcmp(saved, after ? after : "(unset)") == 0);
    return fm_test_done("test_blas");
}
