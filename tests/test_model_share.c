/* test_model_share.c - two processes that open the same model share its pages.
 *
 * Why it exists: the design relies on every worker process on a machine mapping the
 * model read-only and shared, so N workers cost one copy of the weights in RAM, not
 * N. A private mapping, or a reader that copied tensors out, would still pass every
 * functional test; this one looks at what the kernel reports. Parent and child (fork)
 * each open the file with fm_model_open and touch every page; then /proc/PID/smaps of
 * both must show the whole mapping as Shared_* (pages mapped by more than one
 * process) and nothing private and dirty. The figures are printed.
 * Skips (77) when /proc/PID/smaps is not available.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include "facemill/model.h"
#include "fm_test.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BIG_FLOATS (2u * 1024 * 1024) /* 8 MiB tensor */

typedef struct smaps_figures {
    int found;
    long size, rss, pss, shared_clean, shared_dirty, private_clean, private_dirty;
} smaps_figures;

/* Sums the figures (kB) of every mapping of `file` in /proc/PID/smaps. Returns 0 when
 * the smaps file cannot be read. */
static int read_smaps(pid_t pid, const char *file, smaps_figures *out)
{
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%ld/smaps", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    memset(out, 0, sizeof *out);
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        int pos = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &pos) == 2 && pos > 0) {
            char *name = line + pos;
            name[strcspn(name, "\n")] = '\0';
            in = strcmp(name, file) == 0;
            out->found += in;
            continue;
        }
        if (!in)
            continue;
        char key[64];
        long kb;
        if (sscanf(line, "%63[^:]: %ld kB", key, &kb) != 2)
            continue;
        if (strcmp(key, "Size") == 0)
            out->size += kb;
        else if (strcmp(key, "Rss") == 0)
            out->rss += kb;
        else if (strcmp(key, "Pss") == 0)
            out->pss += kb;
        else if (strcmp(key, "Shared_Clean") == 0)
            out->shared_clean += kb;
        else if (strcmp(key, "Shared_Dirty") == 0)
            out->shared_dirty += kb;
        else if (strcmp(key, "Private_Clean") == 0)
            out->private_clean += kb;
        else if (strcmp(key, "Private_Dirty") == 0)
            out->private_dirty += kb;
    }
    fclose(f);
    return 1;
}

/* Reads one float in every page the model's tensors cover; the index pages were read
 * by fm_model_open. Returns a value that depends on every read. */
static double touch_pages(const fm_model *m, long page)
{
    volatile double sum = 0;
    size_t step = (size_t)page / sizeof(float);
    for (size_t i = 0; i < fm_model_tensor_count(m); i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        for (uint64_t k = 0; k < t->count; k += step)
            sum += t->data[k];
        sum += t->data[t->count - 1];
    }
    return sum;
}

static void print_figures(const char *who, pid_t pid, const smaps_figures *s)
{
    printf("%-6s pid %-7ld Size %6ld kB  Rss %6ld kB  Pss %6ld kB  Shared_Clean %6ld kB  "
           "Shared_Dirty %6ld kB  Private_Clean %6ld kB  Private_Dirty %6ld kB\n",
           who, (long)pid, s->size, s->rss, s->pss, s->shared_clean, s->shared_dirty,
           s->private_clean, s->private_dirty);
}

int main(void)
{
    smaps_figures probe;
    if (!read_smaps(getpid(), "", &probe))
        return fm_test_skip("test_model_share", "/proc/self/smaps unavailable");
    long page = sysconf(_SC_PAGESIZE);
    char dir[256], file[320], real[PATH_MAX];
    if (fm_test_tmpdir(dir, sizeof dir, "share") != 0)
        return 1;
    snprintf(file, sizeof file, "%s/shared.fmm", dir);

    /* A model of a bit more than 8 MiB: one big tensor and a few small ones. */
    fm_error err = {0};
    fm_model_writer *w = fm_model_writer_new();
    float *big = malloc(BIG_FLOATS * sizeof *big);
    float small[100];
    CHECK(w && big);
    if (!w || !big)
        return 1;
    for (uint32_t i = 0; i < BIG_FLOATS; i++)
        big[i] = (float)(i % 1000) * 0.5f;
    for (int i = 0; i < 100; i++)
        small[i] = (float)i;
    const uint64_t d_big[] = {2048, 1024}, d_small[] = {100};
    CHECK(fm_model_writer_add_str(w, "general.architecture", "share.test", &err) == FM_OK);
    CHECK(fm_model_writer_add_tensor(w, "a", 1, d_small, small, &err) == FM_OK);
    CHECK(fm_model_writer_add_tensor(w, "big", 2, d_big, big, &err) == FM_OK);
    CHECK(fm_model_writer_add_tensor(w, "z", 1, d_small, small, &err) == FM_OK);
    CHECK_MSG(fm_model_writer_save(w, file, &err) == FM_OK, "%s", err.msg);
    fm_model_writer_destroy(&w);
    free(big);
    if (!realpath(file, real)) {
        perror("realpath");
        return 1;
    }
    struct stat sb;
    CHECK(stat(file, &sb) == 0);
    long map_kb = (long)((sb.st_size + page - 1) / page * page / 1024);

    int ready[2], hold[2];
    if (pipe(ready) != 0 || pipe(hold) != 0) {
        perror("pipe");
        return 1;
    }
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        /* Child: open its own mapping, touch every page, report, and keep the mapping
         * until the parent closes the hold pipe. */
        close(ready[0]);
        close(hold[1]);
        fm_model *m = NULL;
        char c = 'x';
        if (fm_model_open(&m, file, 0, NULL) == FM_OK) {
            touch_pages(m, page);
            c = 'r';
        }
        if (write(ready[1], &c, 1) != 1)
            _exit(3);
        while (read(hold[0], &c, 1) > 0)
            ;
        fm_model_close(&m);
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);

    fm_model *m = NULL;
    CHECK_MSG(fm_model_open(&m, file, 0, &err) == FM_OK, "%s", err.msg);
    if (m)
        touch_pages(m, page);
    char c = 0;
    ssize_t n;
    while ((n = read(ready[0], &c, 1)) < 0 && errno == EINTR)
        ;
    CHECK_MSG(n == 1 && c == 'r', "child did not open and touch the model");

    smaps_figures ps = {0}, cs = {0};
    CHECK(read_smaps(getpid(), real, &ps));
    CHECK(read_smaps(child, real, &cs));
    printf("model file %s: %jd bytes, mapping %ld kB (page %ld bytes)\n", real,
           (intmax_t)sb.st_size, map_kb, page);
    print_figures("parent", getpid(), &ps);
    print_figures("child", child, &cs);

    const smaps_figures *both[] = {&ps, &cs};
    for (int i = 0; i < 2; i++) {
        const smaps_figures *s = both[i];
        const char *who = i ? "child" : "parent";
        CHECK_MSG(s->found == 1, "%s: %d mappings of the model", who, s->found);
        CHECK_MSG(s->size == map_kb, "%s: Size %ld kB, want %ld", who, s->size, map_kb);
        CHECK_MSG(s->rss == map_kb, "%s: Rss %ld kB: not every page is resident", who,
                  s->rss);
        CHECK_MSG(s->shared_clean + s->shared_dirty == map_kb,
                  "%s: Shared_Clean + Shared_Dirty %ld kB, want the whole mapping %ld kB",
                  who, s->shared_clean + s->shared_dirty, map_kb);
        CHECK_MSG(s->private_clean == 0 && s->private_dirty == 0,
                  "%s: private pages %ld + %ld kB", who, s->private_clean, s->private_dirty);
        CHECK_MSG(s->pss <= map_kb / 2 + 4, "%s: Pss %ld kB is not about half of %ld kB", who,
                  s->pss, map_kb);
    }
    printf("shared: parent %ld kB, child %ld kB of %ld kB; Pss %ld + %ld kB = one copy\n",
           ps.shared_clean + ps.shared_dirty, cs.shared_clean + cs.shared_dirty, map_kb,
           ps.pss, cs.pss);

    close(hold[1]); /* lets the child exit */
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0);
    fm_model_close(&m);
    fm_test_remove_tree(dir);
    return fm_test_done("test_model_share");
}
