/* cmd_bench.c - `facemill bench`: what labelling costs on this machine, end to end, in
 * images per second per core, milliseconds and share per stage, the GFLOPS the
 * networks reach against cblas_sgemm, and memory per process.
 *
 * It exists so a user can measure their own machine with the code `facemill label`
 * runs, and so changes to the engine are judged by a number. Each case runs the
 * labelling pipeline (worker/pipeline, as every worker process runs it: images held
 * in memory, worker.credit of them per fm_pipeline_run call, faces batched by
 * embed.batch) in one forked process per core at once, for a time or a count per
 * process, after one warm-up batch each. The broker, the sink and the SHA-256 of each
 * image, which `facemill label` adds around the pipeline, are not measured.
 *
 * Cases:
 *   chips   200x200 face chips: a folder given with --chips (UTKFace's, say), or
 *           chips cut from the sample photos' faces (a square 1.6 times the face
 *           box, resized); detected with detect.pad --chips-pad (0.25), as archives
 *           of face chips need
 *   photos  the six sample photos (models/cache/samples, found through the model
 *           search path), in rotation
 *   12mp    the first sample photo resized to 4000x3000 and encoded (JPEG quality
 *           92): a camera photo
 * Stage times are what the pipeline records for each image (fm_pipeline_times; the
 * detector's three networks in fm_detect_times); "other" is the rest of the wall
 * time. The networks' work is counted from their layer shapes as they run
 * (fm_arena_flop), so GFLOPS are effective figures of whole stages: P-Net's time
 * includes sampling the pyramid and its NMS. cblas_sgemm 1024^3 on one thread is
 * measured in the same run, before the cases, for comparison.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, mkdtemp */
#include "cli_opts.h"
#include "cmd_blas.h"
#include "cmd_util.h"
#include "commands.h"
#include "facemill/align.h"
#include "facemill/blas.h"
#include "facemill/clock.h"
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/image.h"
#include "facemill/json.h"
#include "facemill/log.h"
#include "facemill/modelpath.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"


#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define N_SAMPLES 6
#define MAX_CHIPS 1000   /* files read from a --chips folder */
#define MAX_PROCS 64
#define CHIP_SIDE 200
#define CHIP_SCALE 1.6   /* chip side / face box side */

enum { CASE_CHIPS, CASE_PHOTOS, CASE_12MP, N_CASES };
static const char *const case_names[N_CASES] = {"chips", "photos", "12mp"};

/* Images of one case, encoded, in memory. */
typedef struct bench_case {
    int on;
    char what[256];      /* one line: where the images come from */
    int n;
    uint8_t **data;      /* n, owned */
    size_t *size;        /* n */
    double pad;          /* detect.pad for this case */
} bench_case;

/* What one process measured in one case (shared memory: the parent reads it). */
typedef struct bench_stats {
    int ok;                       /* 1: the part finished */
    char error[256];
    long images, failed, faces, chips, levels, rnet_crops, onet_crops;
    double wall_ms;               /* from the start signal to the last result */
    double decode, detect, pnet, rnet, onet, align, embed, heads; /* ms, summed */
    double pnet_flop, rnet_flop, onet_flop, embed_flop, pnet_pixels;
    long rss_kb, pss_kb;          /* /proc/self/smaps_rollup at the end; -1 unknown */
} bench_stats;

typedef struct shared {
    atomic_int ready; /* processes past their warm-up (or failed) */
    atomic_int go;    /* 1: start timing */
    bench_stats st[MAX_PROCS];
} shared;

typedef struct bench {
    fm_config cfg;
    int procs, credit;
    double seconds;   /* per case and process, when count is 0 */
    int64_t count;     /* images per case and process; 0: seconds */
    int json;
    const char *chips_dir;
    double chips_pad;
    bench_case cases[N_CASES];
    shared *sh;
    double sgemm_gflops;
    char cpu[128];
} bench;

static const cli_cmd cmd = {
    "bench", "[options]", 0, 0,
    "Measures labelling on this machine with the code `facemill label` runs: one\n"
    "pipeline process per core, each labelling images held in memory, for a time or\n"
    "a number of images per case; prints images/s per core, milliseconds and share\n"
    "per stage (decode, detect with P-Net, R-Net and O-Net, align, embed, heads),\n"
    "the GFLOPS of the detector's networks and the backbone next to cblas_sgemm\n"
    "1024^3 on one thread measured in the same run, and RSS and PSS per process.\n"
    "\n"
    "Cases (--case NAME, repeatable; default all three):\n"
    "  chips   200x200 face chips: --chips DIR (a UTKFace folder, say; at most 1000\n"
    "          are read), or chips cut from the sample photos' faces; detect.pad is\n"
    "          --chips-pad\n"
    "  photos  the six sample photos, in rotation\n"
    "  12mp    the first sample photo resized to 4000x3000 and encoded\n"
    "Settings: every pipeline setting (detect.*, embed.*, heads.model, models.dir,\n"
    "engine.threads, engine.blas_kernels, worker.credit: images per pipeline call).\n"
    "The sample photos come with the models (facemill models fetch).\n",
    "exit status: 0 measured, 1 a case failed, 2 usage error", NULL};

/* ---- the images -------------------------------------------------------------------- */

static fm_status case_add(bench_case *c, uint8_t *data, size_t size, fm_error *err)
{
    uint8_t **d = realloc(c->data, (size_t)(c->n + 1) * sizeof *d);
    if (d)
        c->data = d;
    size_t *s = d ? realloc(c->size, (size_t)(c->n + 1) * sizeof *s) : NULL;
    if (s)
        c->size = s;
    if (!d || !s) {
        free(data);
        return fm_error_set(err, FM_ERR_NOMEM, "bench: out of memory");
    }
    c->data[c->n] = data;
    c->size[c->n] = size;
    c->n++;
    return FM_OK;
}

static void case_free(bench_case *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->data[i]);
    free(c->data);
    free(c->size);
    c->data = NULL;
    c->size = NULL;
    c->n = 0;
}

/* The whole file at path into *out (caller frees). */
static fm_status read_file(const char *path, uint8_t **out, size_t *size, fm_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            uint8_t *b = realloc(buf, cap = cap ? 2 * cap : 1 << 16);
            if (!b) {
                free(buf);
                fclose(f);
                return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = b;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return fm_error_set(err, FM_ERR_IO, "%s: read error", path);
    }
    *out = buf;
    *size = len;
    return FM_OK;
}

/* img encoded as a JPEG of the given quality, through a file in dir (removed). */
static fm_status encode(const fm_image *img, int quality, const char *dir, uint8_t **out,
                        size_t *size, fm_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/image.jpg", dir);
    fm_status st = fm_image_write_jpeg(img, path, quality, err);
    if (st == FM_OK)
        st = read_file(path, out, size, err);
    unlink(path);
    return st;
}

/* The sample photos, the 12 MP photo and (without --chips) the chips cut from the
 * samples' faces. */
static fm_status load_samples(bench *b, const char *tmpdir, fm_error *err)
{
    fm_model_dirs *dirs = malloc(sizeof *dirs);
    fm_config *rc = malloc(sizeof *rc);
    fm_decoder *dec = NULL;
    fm_detector *det = NULL;
    uint8_t *px = NULL;
    fm_status st = FM_OK;
    if (!dirs || !rc) {
        st = fm_error_set(err, FM_ERR_NOMEM, "bench: out of memory");
        goto done;
    }
    *rc = b->cfg;
    if ((st = fm_model_dirs_init(dirs, b->cfg.models.dir, err)) != FM_OK ||
        (st = fm_decoder_new(&dec, NULL, err)) != FM_OK)
        goto done;
    int want_chips = b->cases[CASE_CHIPS].on && !b->chips_dir;
    if (want_chips) {
        fm_detect_opts o;
        fm_detect_opts_from_config(&o, &b->cfg);
        o.pad = 0;
        if ((st = fm_config_resolve_models(rc, FM_RESOLVE_DETECTOR, err)) != FM_OK ||
            (st = fm_detector_open(&det, rc->models.dir, &o, err)) != FM_OK)
            goto done;
    }
    for (int s = 1; s <= N_SAMPLES; s++) {
        char name[64], path[FM_MODEL_PATH_MAX];
        snprintf(name, sizeof name, "samples/sample%d.jpg", s);
        uint8_t *data = NULL;
        size_t size = 0;
        if ((st = fm_model_find(dirs, "sample photo", name, path, sizeof path, err)) != FM_OK ||
            (st = read_file(path, &data, &size, err)) != FM_OK)
            goto done;
        fm_image img;
        int need_pixels = want_chips || (s == 1 && b->cases[CASE_12MP].on);
        if (need_pixels && (st = fm_decode(dec, data, size, &img, err)) != FM_OK) {
            free(data);
            goto done;
        }
        if (b->cases[CASE_PHOTOS].on) {
            if ((st = case_add(&b->cases[CASE_PHOTOS], data, size, err)) != FM_OK)
                goto done;
        } else {
            free(data);
        }
        if (s == 1 && b->cases[CASE_12MP].on) {
            free(px);
            if (!(px = malloc((size_t)4000 * 3000 * 3))) {
                st = fm_error_set(err, FM_ERR_NOMEM, "bench: out of memory");
                goto done;
            }
            /* the centre of the photo at 4:3, resized */
            double sw = img.w, sh = img.w * 0.75;
            if (sh > img.h) {
                sh = img.h;
                sw = img.h / 0.75;
            }
            fm_image big;
            fm_align_resample(&img, (img.w - sw) / 2, (img.h - sh) / 2, sw, sh, 4000, 3000, px, &big);
            uint8_t *jpg = NULL;
            size_t jlen = 0;
            if ((st = encode(&big, 92, tmpdir, &jpg, &jlen, err)) != FM_OK ||
                (st = case_add(&b->cases[CASE_12MP], jpg, jlen, err)) != FM_OK)
                goto done;
            snprintf(b->cases[CASE_12MP].what, sizeof b->cases[CASE_12MP].what,
                     "sample1.jpg resized to 4000x3000, JPEG quality 92 (%.1f MB)",
                     jlen / 1e6);
            free(px);
            px = NULL;
        }
        if (!want_chips)
            continue;
        fm_face faces[64];
        int nf = 0;
        if ((st = fm_detect(det, &img, faces, 64, &nf, NULL, err)) != FM_OK)
            goto done;
        uint8_t chip_px[CHIP_SIDE * CHIP_SIDE * 3];
        for (int f = 0; f < nf; f++) {
            const float *bx = faces[f].box;
            double side = CHIP_SCALE * fmax(bx[2] - bx[0], bx[3] - bx[1]);
            if (side < CHIP_SIDE / 2) /* more than twice enlarged: a blur, not a chip */
                continue;
            double cx = (bx[0] + bx[2]) / 2, cy = (bx[1] + bx[3]) / 2;
            double r = img.scale_num > 0 ? (double)img.scale_num / img.scale_denom : 1.0;
            fm_image chip;
            fm_align_resample(&img, (cx - side / 2) * r, (cy - side / 2) * r, side * r, side * r,
                     CHIP_SIDE, CHIP_SIDE, chip_px, &chip);
            uint8_t *jpg = NULL;
            size_t jlen = 0;
            if ((st = encode(&chip, 90, tmpdir, &jpg, &jlen, err)) != FM_OK ||
                (st = case_add(&b->cases[CASE_CHIPS], jpg, jlen, err)) != FM_OK)
                goto done;
        }
    }
    if (b->cases[CASE_PHOTOS].on)
        snprintf(b->cases[CASE_PHOTOS].what, sizeof b->cases[CASE_PHOTOS].what,
                 "the %d sample photos (%s), in rotation", N_SAMPLES, "samples/sample1..6.jpg");
    if (want_chips) {
        if (b->cases[CASE_CHIPS].n == 0) {
            st = fm_error_set(err, FM_ERR_NOT_FOUND, "bench: no face found in the sample "
                              "photos to cut chips from");
            goto done;
        }
        snprintf(b->cases[CASE_CHIPS].what, sizeof b->cases[CASE_CHIPS].what,
                 "%d chips of %dx%d cut from the sample photos' faces, detect.pad %g",
                 b->cases[CASE_CHIPS].n, CHIP_SIDE, CHIP_SIDE, b->chips_pad);
    }
done:
    free(px);
    fm_detector_close(&det);
    fm_decoder_destroy(&dec);
    free(rc);
    free(dirs);
    return st;
}

static int is_jpeg_name(const char *s)
{
    size_t n = strlen(s);
    return (n > 4 && strcasecmp(s + n - 4, ".jpg") == 0) ||
           (n > 5 && strcasecmp(s + n - 5, ".jpeg") == 0);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The first MAX_CHIPS JPEG files of dir, by name. */
static fm_status load_chips_dir(bench *b, fm_error *err)
{
    bench_case *c = &b->cases[CASE_CHIPS];
    DIR *d = opendir(b->chips_dir);
    if (!d)
        return fm_error_set(err, FM_ERR_IO, "--chips %s: %s", b->chips_dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    fm_status st = FM_OK;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_jpeg_name(e->d_name))
            continue;
        if (n == cap) {
            char **nn = realloc(names, (cap = cap ? 2 * cap : 256) * sizeof *names);
            if (!nn) {
                st = fm_error_set(err, FM_ERR_NOMEM, "bench: out of memory");
                break;
            }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) {
            st = fm_error_set(err, FM_ERR_NOMEM, "bench: out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; st == FM_OK && i < n && i < MAX_CHIPS; i++) {
        char path[4200];
        uint8_t *data = NULL;
        size_t size = 0;
        snprintf(path, sizeof path, "%s/%s", b->chips_dir, names[i]);
        if ((st = read_file(path, &data, &size, err)) == FM_OK)
            st = case_add(c, data, size, err);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (st == FM_OK && c->n == 0)
        st = fm_error_set(err, FM_ERR_NOT_FOUND, "--chips %s: no .jpg or .jpeg files",
                          b->chips_dir);
    if (st == FM_OK)
        snprintf(c->what, sizeof c->what, "%d JPEG files of %s%s, detect.pad %g", c->n,
                 b->chips_dir, n > MAX_CHIPS ? " (the first by name)" : "", b->chips_pad);
    return st;
}

/* ---- measuring ------------------------------------------------------------------- */

/* Rss and Pss of this process in kB from /proc/self/smaps_rollup (-1: unknown). */
static void memory_kb(long *rss, long *pss)
{
    *rss = *pss = -1;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        long v;
        if (sscanf(line, "Rss: %ld kB", &v) == 1)
            *rss = v;
        else if (sscanf(line, "Pss: %ld kB", &v) == 1)
            *pss = v;
    }
    fclose(f);
}

static void account(bench_stats *s, const fm_image_result *r, double chip_flop)
{
    s->images++;
    if (r->error.code != FM_OK)
        s->failed++;
    s->faces += r->n_faces;
    s->decode += r->times.decode_ms;
    s->detect += r->times.detect_ms;
    s->align += r->times.align_ms;
    s->embed += r->times.embed_ms;
    s->heads += r->times.heads_ms;
    s->pnet += r->detect.pnet_ms;
    s->rnet += r->detect.rnet_ms;
    s->onet += r->detect.onet_ms;
    s->pnet_flop += r->detect.pnet_flop;
    s->rnet_flop += r->detect.rnet_flop;
    s->onet_flop += r->detect.onet_flop;
    s->pnet_pixels += r->detect.pnet_pixels;
    s->levels += r->detect.levels;
    s->rnet_crops += r->detect.pnet_boxes;
    s->onet_crops += r->detect.rnet_boxes;
    s->chips += r->chips;
    s->embed_flop += r->chips * chip_flop;
}

/* One process's part of case k: open the pipeline, warm up, wait for the others,
 * label for the time or count, report into its slot. Returns the exit code. */
static int run_part(bench *b, int k, int job)
{
    bench_case *c = &b->cases[k];
    bench_stats *s = &b->sh->st[job];
    memset(s, 0, sizeof *s);
    s->rss_kb = s->pss_kb = -1;
    fm_config *cfg = malloc(sizeof *cfg);
    fm_pipeline_input *in = calloc((size_t)b->credit, sizeof *in);
    fm_image_result *res = calloc((size_t)b->credit, sizeof *res);
    fm_pipeline *p = NULL;
    fm_error err = {0};
    int signalled = 0, rc = 1;
    if (!cfg || !in || !res) {
        snprintf(s->error, sizeof s->error, "out of memory");
        goto done;
    }
    *cfg = b->cfg;
    cfg->detect.pad = c->pad;
    fm_pipeline_opts po = {b->credit, 0, 0};
    if (fm_nn_set_threads((int)cfg->engine.threads, &err) != FM_OK ||
        fm_pipeline_open(&p, cfg, &po, &err) != FM_OK) {
        snprintf(s->error, sizeof s->error, "%s", fm_error_text(&err));
        goto done;
    }
    double chip_flop = fm_pipeline_chip_flop(p);
    long next = (long)job * c->n / b->procs; /* processes start apart in the rotation */
    for (int i = 0; i < b->credit; i++) {     /* warm-up: one batch, not counted */
        in[i] = (fm_pipeline_input){.data = c->data[(next + i) % c->n], .size = c->size[(next + i) % c->n]};
    }
    if (fm_pipeline_run(p, in, b->credit, res, &err) != FM_OK) {
        snprintf(s->error, sizeof s->error, "%s", fm_error_text(&err));
        goto done;
    }
    atomic_fetch_add(&b->sh->ready, 1);
    signalled = 1;
    while (!atomic_load(&b->sh->go)) {
        struct timespec nap = {0, 200000};
        nanosleep(&nap, NULL);
    }
    double t0 = fm_now_ms();
    for (;;) {
        int n = b->credit;
        if (b->count && b->count - s->images < n)
            n = (int)(b->count - s->images);
        for (int i = 0; i < n; i++, next++)
            in[i] = (fm_pipeline_input){.data = c->data[next % c->n], .size = c->size[next % c->n]};
        if (fm_pipeline_run(p, in, n, res, &err) != FM_OK) {
            snprintf(s->error, sizeof s->error, "%s", fm_error_text(&err));
            goto done;
        }
        for (int i = 0; i < n; i++)
            account(s, &res[i], chip_flop);
        s->wall_ms = fm_now_ms() - t0;
        if (b->count ? s->images >= b->count : s->wall_ms >= b->seconds * 1e3)
            break;
    }
    memory_kb(&s->rss_kb, &s->pss_kb);
    s->ok = 1;
    rc = 0;
done:
    if (!signalled)
        atomic_fetch_add(&b->sh->ready, 1); /* the others must not wait for this one */
    fm_pipeline_close(&p);
    free(res);
    free(in);
    free(cfg);
    return rc;
}

/* Runs case k in b->procs forked processes at once. Returns 0, or -1 when a process
 * failed (its slot says why, or it died). */
static int run_case(bench *b, int k)
{
    memset(b->sh, 0, sizeof *b->sh);
    pid_t pids[MAX_PROCS];
    int started = 0, failed = 0;
    pid_t parent = getpid();
    fflush(NULL);
    for (int j = 0; j < b->procs; j++) {
        pid_t pid = fork();
        if (pid < 0) {
            failed = 1;
            break;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            _exit(run_part(b, k, j));
        }
        pids[started++] = pid;
    }
    /* every process warmed up (or gone): start them together */
    int exited[MAX_PROCS] = {0};
    for (;;) {
        if (atomic_load(&b->sh->ready) >= started)
            break;
        int gone = 0;
        for (int j = 0; j < started; j++)
            if (!exited[j] && waitpid(pids[j], NULL, WNOHANG) == pids[j])
                exited[j] = 1;
        for (int j = 0; j < started; j++)
            gone += exited[j];
        if (gone && atomic_load(&b->sh->ready) + gone >= started)
            break;
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
    atomic_store(&b->sh->go, 1);
    for (int j = 0; j < started; j++) {
        int status = 0;
        if (exited[j]) {
            failed = 1;
            continue;
        }
        while (waitpid(pids[j], &status, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed = 1;
        if (WIFSIGNALED(status) && !b->sh->st[j].error[0])
            snprintf(b->sh->st[j].error, sizeof b->sh->st[j].error, "killed by signal %d",
                     WTERMSIG(status));
    }
    return failed || started < b->procs ? -1 : 0;
}

/* ---- the report ------------------------------------------------------------------ */

/* The processes' figures of one case, together. */
typedef struct summary {
    long images, failed, faces, chips, levels, rnet_crops, onet_crops;
    double rate;          /* images/s, all processes */
    double wall;          /* ms per image and process */
    double ms[9];         /* per image: decode, detect, pnet, rnet, onet, align, embed,
                             heads, other */
    double gflops[4];     /* pnet, rnet, onet, backbone */
    double mflop[4];      /* their work per image */
    double pnet_mpx;      /* pyramid megapixels per image */
    double rss_mib, pss_mib, rss_max, pss_max;
} summary;

static const char *const stage_names[9] = {"decode", "detect", "pnet", "rnet", "onet",
                                           "align", "embed", "heads", "other"};
static const char *const net_names[4] = {"pnet", "rnet", "onet", "backbone"};

static void summarise(const bench *b, summary *u)
{
    memset(u, 0, sizeof *u);
    bench_stats t = {0};
    int with_mem = 0;
    for (int j = 0; j < b->procs; j++) {
        const bench_stats *s = &b->sh->st[j];
        if (s->wall_ms > 0)
            u->rate += s->images / (s->wall_ms / 1e3);
        t.images += s->images;
        t.failed += s->failed;
        t.faces += s->faces;
        t.chips += s->chips;
        t.levels += s->levels;
        t.rnet_crops += s->rnet_crops;
        t.onet_crops += s->onet_crops;
        t.wall_ms += s->wall_ms;
        t.decode += s->decode;
        t.detect += s->detect;
        t.pnet += s->pnet;
        t.rnet += s->rnet;
        t.onet += s->onet;
        t.align += s->align;
        t.embed += s->embed;
        t.heads += s->heads;
        t.pnet_flop += s->pnet_flop;
        t.rnet_flop += s->rnet_flop;
        t.onet_flop += s->onet_flop;
        t.embed_flop += s->embed_flop;
        t.pnet_pixels += s->pnet_pixels;
        if (s->rss_kb >= 0) {
            with_mem++;
            u->rss_mib += s->rss_kb / 1024.0;
            u->pss_mib += s->pss_kb / 1024.0;
            u->rss_max = fmax(u->rss_max, s->rss_kb / 1024.0);
            u->pss_max = fmax(u->pss_max, s->pss_kb / 1024.0);
        }
    }
    if (with_mem) {
        u->rss_mib /= with_mem;
        u->pss_mib /= with_mem;
    }
    u->images = t.images;
    u->failed = t.failed;
    u->faces = t.faces;
    u->chips = t.chips;
    u->levels = t.levels;
    u->rnet_crops = t.rnet_crops;
    u->onet_crops = t.onet_crops;
    if (t.images == 0)
        return;
    double n = (double)t.images;
    u->wall = t.wall_ms / n;
    const double sums[8] = {t.decode, t.detect, t.pnet, t.rnet, t.onet, t.align, t.embed,
                            t.heads};
    for (int i = 0; i < 8; i++)
        u->ms[i] = sums[i] / n;
    u->ms[8] = u->wall - (u->ms[0] + u->ms[1] + u->ms[5] + u->ms[6] + u->ms[7]);
    const double flop[4] = {t.pnet_flop, t.rnet_flop, t.onet_flop, t.embed_flop};
    const double ms[4] = {t.pnet, t.rnet, t.onet, t.embed};
    for (int i = 0; i < 4; i++) {
        u->gflops[i] = ms[i] > 0 ? flop[i] / ms[i] * 1e-6 : 0;
        u->mflop[i] = flop[i] / n * 1e-6;
    }
    u->pnet_mpx = t.pnet_pixels / n / 1e6;
}

static void print_errors(const bench *b, int k)
{
    for (int j = 0; j < b->procs; j++)
        if (!b->sh->st[j].ok)
            fprintf(stderr, "facemill bench: %s, process %d: %s\n", case_names[k], j,
                    b->sh->st[j].error[0] ? b->sh->st[j].error : "did not finish");
}

static void print_text(const bench *b, const summary *u, const fm_blas_choice *blas)
{
    printf("facemill bench: %d pipeline process%s x %d OpenBLAS thread, ", b->procs,
           b->procs == 1 ? "" : "es", (int)b->cfg.engine.threads);
    if (b->count)
        printf("%lld images per case and process", (long long)b->count);
    else
        printf("%g s per case and process", b->seconds);
    printf(", worker.credit %d, embed.batch %d\n", b->credit, (int)b->cfg.embed.batch);
    printf("machine: %ld cores, %s; %s\n", sysconf(_SC_NPROCESSORS_ONLN), b->cpu,
           openblas_get_config());
    printf("BLAS kernels %s: %s\n", blas->core, blas->reason);
    printf("engine kernels (MTCNN's convolutions and pooling): %s\n",
           fm_nn_isa_name(fm_nn_isa_now()));
    printf("cblas_sgemm 1024^3, 1 thread: %.1f GFLOPS\n", b->sgemm_gflops);
    for (int k = 0; k < N_CASES; k++)
        if (b->cases[k].on)
            printf("  %-7s %s\n", case_names[k], b->cases[k].what);
    printf("\n%-30s", "");
    for (int k = 0; k < N_CASES; k++)
        if (b->cases[k].on)
            printf("%18s", case_names[k]);
    printf("\n");
#define ROW(label, fmt, expr)                                                           \
    do {                                                                                \
        printf("%-30s", label);                                                         \
        for (int k = 0; k < N_CASES; k++)                                               \
            if (b->cases[k].on)                                                         \
                printf(fmt, expr);                                                      \
        printf("\n");                                                                   \
    } while (0)
    ROW("images (all processes)", "%18ld", u[k].images);
    ROW("images/s", "%18.2f", u[k].rate);
    ROW("images/s per core", "%18.2f", u[k].rate / b->procs);
    ROW("faces per image", "%18.2f", u[k].images ? (double)u[k].faces / u[k].images : 0.0);
    printf("ms per image (share of wall):\n");
    static const char *const labels[9] = {"  decode", "  detect", "    P-Net", "    R-Net",
                                          "    O-Net", "  align", "  embed (backbone)",
                                          "  heads", "  other"};
    for (int s = 0; s < 9; s++) {
        printf("%-30s", labels[s]);
        for (int k = 0; k < N_CASES; k++)
            if (b->cases[k].on)
                printf("%11.2f (%3.0f%%)", u[k].ms[s],
                       u[k].wall > 0 ? 100.0 * u[k].ms[s] / u[k].wall : 0.0);
        printf("\n");
    }
    ROW("  wall, per process", "%18.2f", u[k].wall);
    printf("work per image:\n");
    ROW("  P-Net pyramid levels", "%18.1f", u[k].images ? (double)u[k].levels / u[k].images : 0.0);
    ROW("  P-Net pyramid Mpixel", "%18.3f", u[k].pnet_mpx);
    ROW("  R-Net crops", "%18.1f",
        u[k].images ? (double)u[k].rnet_crops / u[k].images : 0.0);
    ROW("  O-Net crops", "%18.1f",
        u[k].images ? (double)u[k].onet_crops / u[k].images : 0.0);
    ROW("  backbone chips", "%18.2f", u[k].images ? (double)u[k].chips / u[k].images : 0.0);
    ROW("  P-Net MFLOP", "%18.1f", u[k].mflop[0]);
    ROW("  R-Net MFLOP", "%18.1f", u[k].mflop[1]);
    ROW("  O-Net MFLOP", "%18.1f", u[k].mflop[2]);
    ROW("  backbone MFLOP", "%18.1f", u[k].mflop[3]);
    printf("GFLOPS (share of sgemm 1024^3):\n");
    static const char *const nets[4] = {"  P-Net", "  R-Net", "  O-Net", "  backbone"};
    for (int i = 0; i < 4; i++) {
        printf("%-30s", nets[i]);
        for (int k = 0; k < N_CASES; k++)
            if (b->cases[k].on)
                printf("%11.1f (%3.0f%%)", u[k].gflops[i],
                       b->sgemm_gflops > 0 ? 100.0 * u[k].gflops[i] / b->sgemm_gflops : 0.0);
        printf("\n");
    }
    printf("memory per process, MiB (mean / largest):\n");
    printf("%-30s", "  RSS");
    for (int k = 0; k < N_CASES; k++)
        if (b->cases[k].on)
            printf("%11.1f / %4.0f", u[k].rss_mib, u[k].rss_max);
    printf("\n%-30s", "  PSS");
    for (int k = 0; k < N_CASES; k++)
        if (b->cases[k].on)
            printf("%11.1f / %4.0f", u[k].pss_mib, u[k].pss_max);
    printf("\n");
    for (int k = 0; k < N_CASES; k++)
        if (b->cases[k].on && u[k].failed)
            printf("%s: %ld images failed to label\n", case_names[k], u[k].failed);
#undef ROW
}

static void print_json(const bench *b, const summary *u, const fm_blas_choice *blas)
{
    fm_json j;
    fm_json_init(&j, stdout);
    fm_json_obj_begin(&j);
    fm_json_key(&j, "machine");
    fm_json_obj_begin(&j);
    fm_json_key(&j, "cores");
    fm_json_int(&j, sysconf(_SC_NPROCESSORS_ONLN));
    fm_json_key(&j, "cpu");
    fm_json_str(&j, b->cpu);
    fm_json_key(&j, "openblas");
    fm_json_str(&j, openblas_get_config());
    fm_json_key(&j, "blas_kernels");
    fm_json_str(&j, blas->core);
    fm_json_key(&j, "blas_reason");
    fm_json_str(&j, blas->reason);
    fm_json_key(&j, "engine_kernels");
    fm_json_str(&j, fm_nn_isa_name(fm_nn_isa_now()));
    fm_json_key(&j, "sgemm_gflops");
    fm_json_num(&j, b->sgemm_gflops, 4);
    fm_json_obj_end(&j);
    fm_json_key(&j, "processes");
    fm_json_int(&j, b->procs);
    fm_json_key(&j, "threads");
    fm_json_int(&j, b->cfg.engine.threads);
    fm_json_key(&j, "credit");
    fm_json_int(&j, b->credit);
    fm_json_key(&j, "embed_batch");
    fm_json_int(&j, b->cfg.embed.batch);
    if (b->count) {
        fm_json_key(&j, "count");
        fm_json_int(&j, b->count);
    } else {
        fm_json_key(&j, "seconds");
        fm_json_num(&j, b->seconds, 6);
    }
    fm_json_key(&j, "cases");
    fm_json_arr_begin(&j);
    for (int k = 0; k < N_CASES; k++) {
        if (!b->cases[k].on)
            continue;
        const summary *s = &u[k];
        double n = s->images ? (double)s->images : 1.0;
        fm_json_obj_begin(&j);
        fm_json_key(&j, "name");
        fm_json_str(&j, case_names[k]);
        fm_json_key(&j, "source");
        fm_json_str(&j, b->cases[k].what);
        fm_json_key(&j, "distinct_images");
        fm_json_int(&j, b->cases[k].n);
        fm_json_key(&j, "images");
        fm_json_int(&j, s->images);
        fm_json_key(&j, "failed");
        fm_json_int(&j, s->failed);
        fm_json_key(&j, "images_per_s");
        fm_json_num(&j, s->rate, 5);
        fm_json_key(&j, "images_per_s_per_core");
        fm_json_num(&j, s->rate / b->procs, 5);
        fm_json_key(&j, "faces_per_image");
        fm_json_num(&j, s->faces / n, 12);
        fm_json_key(&j, "wall_ms");
        fm_json_num(&j, s->wall, 5);
        fm_json_key(&j, "ms");
        fm_json_obj_begin(&j);
        for (int i = 0; i < 9; i++) {
            fm_json_key(&j, stage_names[i]);
            fm_json_num(&j, s->ms[i], 5);
        }
        fm_json_obj_end(&j);
        fm_json_key(&j, "share");
        fm_json_obj_begin(&j);
        for (int i = 0; i < 9; i++) {
            fm_json_key(&j, stage_names[i]);
            fm_json_num(&j, s->wall > 0 ? s->ms[i] / s->wall : 0.0, 4);
        }
        fm_json_obj_end(&j);
        fm_json_key(&j, "gflops");
        fm_json_obj_begin(&j);
        for (int i = 0; i < 4; i++) {
            fm_json_key(&j, net_names[i]);
            fm_json_num(&j, s->gflops[i], 4);
        }
        fm_json_obj_end(&j);
        fm_json_key(&j, "per_image");
        fm_json_obj_begin(&j);
        fm_json_key(&j, "pyramid_levels");
        fm_json_num(&j, s->levels / n, 12);
        fm_json_key(&j, "pyramid_mpixel");
        fm_json_num(&j, s->pnet_mpx, 12);
        fm_json_key(&j, "rnet_crops");
        fm_json_num(&j, s->rnet_crops / n, 12);
        fm_json_key(&j, "onet_crops");
        fm_json_num(&j, s->onet_crops / n, 12);
        fm_json_key(&j, "backbone_chips");
        fm_json_num(&j, s->chips / n, 12);
        for (int i = 0; i < 4; i++) {
            char key[32];
            snprintf(key, sizeof key, "%s_mflop", net_names[i]);
            fm_json_key(&j, key);
            fm_json_num(&j, s->mflop[i], 12);
        }
        fm_json_obj_end(&j);
        fm_json_key(&j, "rss_mib");
        fm_json_num(&j, s->rss_mib, 4);
        fm_json_key(&j, "pss_mib");
        fm_json_num(&j, s->pss_mib, 4);
        fm_json_key(&j, "rss_mib_max");
        fm_json_num(&j, s->rss_max, 4);
        fm_json_key(&j, "pss_mib_max");
        fm_json_num(&j, s->pss_max, 4);
        fm_json_obj_end(&j);
    }
    fm_json_arr_end(&j);
    fm_json_obj_end(&j);
    fm_json_newline(&j);
}

/* "model name" of /proc/cpuinfo, or "unknown CPU". */
static void cpu_name(char *out, size_t size)
{
    snprintf(out, size, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            colon++;
            while (*colon == ' ' || *colon == '\t')
                colon++;
            snprintf(out, size, "%.*s", (int)strcspn(colon, "\n"), colon);
            break;
        }
    }
    fclose(f);
}

/* ---- the command ------------------------------------------------------------------- */

/* --case NAME (repeatable): turns that case on. */
static int take_case(void *target, const char *v)
{
    bench *b = target;
    for (int k = 0; k < N_CASES; k++)
        if (strcmp(v, case_names[k]) == 0) {
            b->cases[k].on = 1;
            return 0;
        }
    return -1;
}

int fm_cmd_bench(int argc, char **argv)
{
    bench *b = calloc(1, sizeof *b);
    summary u[N_CASES];
    char tmpdir[4200];
    const char *tmp = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/facemill-bench-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    int have_tmp = 0, rc = CLI_EXIT_FAILURE;
    fm_error err = {0};
    if (!b)
        return cli_fail(&cmd, "out of memory");
    b->procs = -1;
    b->seconds = 0; /* 0: not given; 10 unless --count */
    b->chips_pad = 0.25;
    const cli_opt opts[] = {
        CLI_INT("--workers", 'j', "N", 0, MAX_PROCS, &b->procs,
                "pipeline processes (default worker.processes; 0: one per core)"),
        CLI_NUM("--seconds", 0, "S", 0.001, 86400, &b->seconds,
                "time per case and process (default 10)"),
        CLI_INT("--count", 0, "N", 1, 1e9, &b->count,
                "images per case and process instead of a time (not with --seconds)"),
        CLI_CALL("--case", 0, "NAME", "chips, photos or 12mp", take_case, b,
                 "measure this case (repeatable; default all three)"),
        CLI_PATH("--chips", 0, "DIR", &b->chips_dir, "JPEG face chips for the chips case"),
        CLI_NUM("--chips-pad", 0, "P", 0, 1, &b->chips_pad,
                "detect.pad for the chips case (default 0.25)"),
        CLI_FLAG("--json", 0, &b->json, "one JSON object on stdout instead of the tables"),
        CLI_END,
    };
    cli_args a;
    rc = cli_start(&cmd, opts, argc, argv, &b->cfg, &a);
    if (rc < 0 && b->seconds > 0 && b->count)
        rc = cli_usage_error(&cmd, "--seconds and --count exclude each other");
    if (rc < 0 && fm_cmd_blas_apply(cmd.name, &b->cfg) != 0)
        rc = CLI_EXIT_FAILURE;
    if (rc >= 0) {
        free(b);
        return rc;
    }
    rc = CLI_EXIT_FAILURE;
    if (b->seconds == 0)
        b->seconds = 10;
    int any_case = 0;
    for (int k = 0; k < N_CASES; k++)
        any_case |= b->cases[k].on;
    for (int k = 0; k < N_CASES && !any_case; k++)
        b->cases[k].on = 1;
    if (b->procs < 0)
        b->procs = (int)b->cfg.worker.processes;
    if (b->procs == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        b->procs = n < 1 ? 1 : n > MAX_PROCS ? MAX_PROCS : (int)n;
    }
    b->credit = (int)b->cfg.worker.credit;
    for (int k = 0; k < N_CASES; k++)
        b->cases[k].pad = k == CASE_CHIPS ? b->chips_pad : b->cfg.detect.pad;
    cpu_name(b->cpu, sizeof b->cpu);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "facemill bench: temporary folder: %s\n", strerror(errno));
        goto done;
    }
    have_tmp = 1;
    if ((b->chips_dir && b->cases[CASE_CHIPS].on && load_chips_dir(b, &err) != FM_OK) ||
        load_samples(b, tmpdir, &err) != FM_OK) {
        fprintf(stderr, "facemill bench: %s\n", fm_error_text(&err));
        goto done;
    }
    void *map = mmap(NULL, sizeof(shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (map == MAP_FAILED) {
        fprintf(stderr, "facemill bench: shared memory: %s\n", strerror(errno));
        goto done;
    }
    b->sh = map;
    if (fm_nn_set_threads(1, &err) != FM_OK) {
        fprintf(stderr, "facemill bench: %s\n", fm_error_text(&err));
        goto done;
    }
    b->sgemm_gflops = fm_blas_sgemm_gflops();
    rc = 0;
    for (int k = 0; k < N_CASES; k++) {
        if (!b->cases[k].on)
            continue;
        if (!b->json)
            fprintf(stderr, "facemill bench: %s ...\n", case_names[k]);
        if (run_case(b, k) != 0) {
            print_errors(b, k);
            rc = 1;
        }
        summarise(b, &u[k]);
    }
    fm_blas_choice blas;
    if (!fm_blas_selected(&blas)) { /* run without the CLI's start-up (a test) */
        memset(&blas, 0, sizeof blas);
        snprintf(blas.core, sizeof blas.core, "%s", openblas_get_corename());
        snprintf(blas.reason, sizeof blas.reason, "not chosen by this process");
    }
    if (b->json)
        print_json(b, u, &blas);
    else
        print_text(b, u, &blas);
    if (fflush(stdout) != 0)
        rc = 1;
done:
    if (b->sh)
        munmap(b->sh, sizeof(shared));
    for (int k = 0; k < N_CASES; k++)
        case_free(&b->cases[k]);
    if (have_tmp)
        rmdir(tmpdir);
    free(b);
    return rc;
}
