/* pipeline_process.c - one pipeline process of facemill-worker (pipeline_process.h):
 * takes jobs from the broker by credit, runs them through the labelling pipeline in
 * batches and pushes the results to the sink (protocol: proto/README.md).
 *
 * Inside a process, two threads: this one (the compute thread) runs batches; the link
 * thread owns the broker socket, so heartbeats keep their rhythm however long a batch
 * takes (broker_link.c).
 *
 * A batch is the jobs the process holds. run_batch() turns them into results in
 * steps: each job's result is started and its image bytes read and hashed, the images
 * go through the full pipeline (include/facemill/pipeline.h) in one call, or, with
 * --decode-only (tests, wire benchmarks), are decoded one by one without models; last
 * each result gets its error and total time.
 */
#define _GNU_SOURCE /* O_PATH, syscall (openat2), realpath */
#include "pipeline_process.h"
#include "broker_link.h"
#include "facemill/clock.h"
#include "facemill/image.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"
#include "facemill/sha256.h"
#include "facemill/text.h"
#include "facemill/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the compute --------------------------------------------------------------- */

#define FACE_FLOATS (4 + 10 + 2 + 5)

/* One job of a batch between the steps of run_batch. */
typedef struct batch_job {
    const uint8_t *data; /* its image: the job's own bytes, or its file in files[i] */
    size_t len;
    fm_status status;    /* FM_OK, or why its result is an error (text in errtext[i]) */
} batch_job;

/* Everything one process needs to turn jobs into results, sized at start. */
typedef struct compute {
    int decode_only;
    int cap;        /* most jobs per batch (the credit) */
    int max_faces;
    fm_decoder *decoder; /* decode-only */
    fm_pipeline *pipeline;
    fm_pipeline_input *in;
    fm_image_result *res;
    size_t max_bytes;
    batch_job *job;      /* per slot: the job being run */
    uint8_t **files;     /* per slot: bytes of path jobs, reused */
    size_t *file_caps;
    char model[256];
    double gender_min_prob, race_min_prob; /* heads.*: abstain below */
    const char *worker;   /* this process's name, stamped on every result */
    int root_fd;          /* worker.path_root (O_PATH), or -1: by-path jobs refused */
    char root[PATH_MAX];  /* its real path, without a trailing slash ("" for /) */
    char root_set[PATH_MAX]; /* as configured, the same way */
    /* Outgoing results, per slot; slot i's faces are pf[i * max_faces ...]. */
    Facemill__Result *out;
    Facemill__StageTimes *times;
    Facemill__Face *pf;   /* cap * max_faces */
    Facemill__Face **pfp;
    float *pfloats;       /* cap * max_faces * FACE_FLOATS */
    uint8_t (*sha)[FM_SHA256_BYTES];
    char (*errtext)[FM_ERROR_MSG_MAX];
} compute;

static void compute_close(compute *c)
{
    fm_decoder_destroy(&c->decoder);
    fm_pipeline_close(&c->pipeline);
    free(c->in);
    free(c->res);
    free(c->job);
    for (int i = 0; c->files && i < c->cap; i++)
        free(c->files[i]);
    free(c->files);
    free(c->file_caps);
    free(c->out);
    free(c->times);
    free(c->pf);
    free(c->pfp);
    free(c->pfloats);
    free(c->sha);
    free(c->errtext);
    if (c->root_fd >= 0)
        close(c->root_fd);
    c->root_fd = -1;
}

/* dst = src without trailing slashes ("/" becomes ""), so dst + "/" starts every path
 * beneath it. */
static void root_prefix(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    while (n > 0 && src[n - 1] == '/')
        n--;
    snprintf(dst, size, "%.*s", (int)n, src);
}

/* Opens worker.path_root, when set, for the confined opens of by-path jobs. */
static fm_status open_root(compute *c, const fm_config *cfg, fm_error *err)
{
    const char *root = cfg->worker.path_root;
    c->root_fd = -1;
    if (!root[0])
        return FM_OK;
    char real[PATH_MAX];
    if (root[0] != '/' || !realpath(root, real))
        return fm_error_set(err, FM_ERR_INVALID, "worker.path_root %s: %s", root,
                            root[0] != '/' ? "not an absolute path" : strerror(errno));
    c->root_fd = open(real, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (c->root_fd < 0)
        return fm_error_set(err, FM_ERR_INVALID, "worker.path_root %s: %s", root,
                            strerror(errno));
    root_prefix(c->root, sizeof c->root, real);
    root_prefix(c->root_set, sizeof c->root_set, root);
    return FM_OK;
}

static fm_status compute_open(compute *c, const fm_config *cfg, int cap, int decode_only,
                              fm_error *err)
{
    fm_status st;
    memset(c, 0, sizeof *c);
    c->root_fd = -1;
    c->cap = cap;
    c->decode_only = decode_only;
    c->max_faces = (int)cfg->detect.max_faces;
    c->gender_min_prob = cfg->heads.gender_min_prob;
    c->race_min_prob = cfg->heads.race_min_prob;
    c->max_bytes = (size_t)cfg->decode.max_bytes;
    size_t nf = (size_t)cap * (size_t)c->max_faces;
    c->job = calloc((size_t)cap, sizeof *c->job);
    c->files = calloc((size_t)cap, sizeof *c->files);
    c->file_caps = calloc((size_t)cap, sizeof *c->file_caps);
    c->out = calloc((size_t)cap, sizeof *c->out);
    c->times = calloc((size_t)cap, sizeof *c->times);
    c->pf = calloc(nf, sizeof *c->pf);
    c->pfp = calloc(nf, sizeof *c->pfp);
    c->pfloats = calloc(nf * FACE_FLOATS, sizeof *c->pfloats);
    c->sha = calloc((size_t)cap, sizeof *c->sha);
    c->errtext = calloc((size_t)cap, sizeof *c->errtext);
    if (!c->job || !c->files || !c->file_caps || !c->out || !c->times || !c->pf ||
        !c->pfp || !c->pfloats || !c->sha || !c->errtext) {
        st = fm_error_set(err, FM_ERR_NOMEM, "worker buffers");
        goto fail;
    }
    if ((st = open_root(c, cfg, err)) != FM_OK)
        goto fail;
    fm_decode_opts dopts = {.max_pixels = (uint64_t)cfg->decode.max_pixels,
                            .max_bytes = (size_t)cfg->decode.max_bytes,
                            .formats = (unsigned)cfg->decode.formats};
    if (decode_only) {
        if ((st = fm_decoder_new(&c->decoder, &dopts, err)) != FM_OK)
            goto fail;
        snprintf(c->model, sizeof c->model, "decode-only");
        return FM_OK;
    }
    if ((st = fm_nn_set_threads((int)cfg->engine.threads, err)) != FM_OK)
        goto fail;
    fm_pipeline_opts popts = {.max_images = cap};
    c->in = calloc((size_t)cap, sizeof *c->in);
    c->res = calloc((size_t)cap, sizeof *c->res);
    if (!c->in || !c->res) {
        st = fm_error_set(err, FM_ERR_NOMEM, "worker buffers");
        goto fail;
    }
    if ((st = fm_pipeline_open(&c->pipeline, cfg, &popts, err)) != FM_OK)
        goto fail;
    /* "mtcnn + BACKBONE + heads"; without heads no backbone runs: "mtcnn" */
    const char *backbone = fm_pipeline_backbone_identity(c->pipeline);
    snprintf(c->model, sizeof c->model, "mtcnn%s%s%s", backbone && backbone[0] ? " + " : "",
             backbone ? backbone : "", fm_pipeline_heads(c->pipeline) ? " + heads" : "");
    return FM_OK;
fail:
    compute_close(c);
    return st;
}

static uint32_t error_code_of(fm_status s)
{
    switch (s) {
    case FM_OK: return FACEMILL__ERROR_CODE__ERROR_NONE;
    case FM_ERR_DECODE:
    case FM_ERR_FORMAT: return FACEMILL__ERROR_CODE__ERROR_DECODE;
    case FM_ERR_UNSUPPORTED: return FACEMILL__ERROR_CODE__ERROR_UNSUPPORTED;
    case FM_ERR_LIMIT: return FACEMILL__ERROR_CODE__ERROR_LIMIT;
    case FM_ERR_IO:
    case FM_ERR_NOT_FOUND: return FACEMILL__ERROR_CODE__ERROR_IO;
    case FM_ERR_INVALID: return FACEMILL__ERROR_CODE__ERROR_INVALID;
    default: return FACEMILL__ERROR_CODE__ERROR_INTERNAL;
    }
}

/* ---- by-path jobs, confined to worker.path_root ---------------------------------- */

/* The one text of every by-path job whose file cannot be had: outside the root,
 * missing, unreadable, not a regular file, or by-path jobs off. The client learns no
 * more (whether a file exists, what it is, how large); the worker's debug log says
 * why. */
#define PATH_REFUSED "not readable under worker.path_root"

/* path relative to the root: an absolute path beneath the root (as clients send them,
 * by the root's configured or real path) loses that prefix, a relative one is taken as
 * it is. NULL for an absolute path elsewhere. */
static const char *beneath_root(const compute *c, const char *path)
{
    if (path[0] != '/')
        return path;
    const char *roots[2] = {c->root_set, c->root};
    for (int k = 0; k < 2; k++) {
        size_t n = strlen(roots[k]);
        if (strncmp(path, roots[k], n) == 0 && path[n] == '/') {
            path += n;
            while (*path == '/')
                path++;
            return path;
        }
    }
    return NULL;
}

/* The fallback of kernels before openat2 (Linux < 5.6): one component at a time from
 * the root, no "..", no symbolic link anywhere (O_NOFOLLOW), so nothing leads out. */
static int open_walk(int root_fd, const char *rel, int flags)
{
    char part[NAME_MAX + 1];
    int dir = root_fd;
    for (;;) {
        while (*rel == '/')
            rel++;
        size_t n = strcspn(rel, "/");
        const char *next = rel + n;
        while (*next == '/')
            next++;
        int last = *next == '\0';
        if (n == 0 || n > NAME_MAX || (n == 2 && rel[0] == '.' && rel[1] == '.')) {
            errno = n > NAME_MAX ? ENAMETOOLONG : EXDEV;
            break;
        }
        memcpy(part, rel, n);
        part[n] = '\0';
        int fd = openat(dir, part, last ? flags | O_NOFOLLOW
                                       : O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        if (dir != root_fd)
            close(dir);
        errno = e;
        if (fd < 0 || last)
            return fd;
        dir = fd;
        rel = next;
    }
    if (dir != root_fd)
        close(dir);
    return -1;
}

/* Opens rel beneath the root for reading, never outside it (no "..", absolute or
 * symbolic link leading out), without blocking (a FIFO or a device opens and is then
 * refused by its type, it does not hang the compute thread). */
static int open_beneath(int root_fd, const char *rel)
{
    int flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
#ifdef SYS_openat2
    struct open_how how = {.flags = (uint64_t)flags,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, root_fd, rel, &how, sizeof how);
    if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
        return (int)fd;
    /* ENOSYS: a kernel before 5.6; EPERM: a seccomp filter that does not know it. */
#endif
    return open_walk(root_fd, rel, flags);
}

/* Reads a path job's file, confined to worker.path_root, into slot i's buffer (grown
 * only when a larger file comes). */
static fm_status read_file(compute *c, int i, const char *path, size_t *len, fm_error *err)
{
    char shown[FM_LOG_ESCAPED_MAX];
    const char *rel = c->root_fd >= 0 ? beneath_root(c, path) : NULL;
    int fd = rel && rel[0] ? open_beneath(c->root_fd, rel) : -1;
    if (fd < 0) {
        fm_log_debug("path job %s: %s", fm_log_escape(path, shown, sizeof shown),
                     c->root_fd < 0 ? "by-path jobs are off (worker.path_root is not set)"
                     : !rel || !rel[0] ? "not beneath worker.path_root"
                                       : strerror(errno));
        return fm_error_set(err, FM_ERR_IO, PATH_REFUSED);
    }
    fm_status st = FM_OK;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fm_log_debug("path job %s: not a regular file",
                     fm_log_escape(path, shown, sizeof shown));
        st = fm_error_set(err, FM_ERR_IO, PATH_REFUSED);
        goto out;
    }
    if ((uint64_t)sb.st_size > c->max_bytes) {
        st = fm_error_set(err, FM_ERR_LIMIT, "larger than decode.max_bytes");
        goto out;
    }
    size_t n = (size_t)sb.st_size, got = 0;
    if (n + 1 > c->file_caps[i]) {
        uint8_t *nb = realloc(c->files[i], n + 1);
        if (!nb) {
            st = fm_error_set(err, FM_ERR_NOMEM, "out of memory for %zu bytes", n);
            goto out;
        }
        c->files[i] = nb;
        c->file_caps[i] = n + 1;
    }
    while (got < n) {
        ssize_t r = read(fd, c->files[i] + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (got != n) {
        fm_log_debug("path job %s: short read", fm_log_escape(path, shown, sizeof shown));
        st = fm_error_set(err, FM_ERR_IO, PATH_REFUSED);
        goto out;
    }
    *len = n;
out:
    close(fd);
    return st;
}


/* Fills face slot k of c from a face the pipeline found, with its attributes when the
 * heads ran on it. */
static void put_face(compute *c, size_t k, const fm_face_result *fr)
{
    Facemill__Face *f = &c->pf[k];
    float *fl = &c->pfloats[k * FACE_FLOATS];
    facemill__face__init(f);
    memcpy(fl, fr->det.box, 4 * sizeof(float));
    memcpy(fl + 4, fr->det.landmarks, 10 * sizeof(float));
    f->n_box = 4;
    f->box = fl;
    f->n_landmarks = 10;
    f->landmarks = fl + 4;
    f->has_score = 1;
    f->score = fr->det.score;
    if (fr->has_attrs) {
        const fm_attrs *a = &fr->attrs;
        f->has_age = f->has_age_std = 1;
        f->age = a->age;
        f->age_std = a->age_std;
        memcpy(fl + 14, a->gender_probs, 2 * sizeof(float));
        memcpy(fl + 16, a->race_probs, 5 * sizeof(float));
        f->n_gender_probs = 2;
        f->gender_probs = fl + 14;
        f->n_race_probs = 5;
        f->race_probs = fl + 16;
        if (fm_result_abstains(a->gender_probs, 2, c->gender_min_prob))
            f->has_gender_abstained = f->gender_abstained = 1;
        if (fm_result_abstains(a->race_probs, 5, c->race_min_prob))
            f->has_race_abstained = f->race_abstained = 1;
    }
    c->pfp[k] = f;
}

/* Starts result i for job: its ids and token, the name results call the image, the
 * model, this worker and the attempt; no stage time yet. */
static void start_result(compute *c, int i, const Facemill__Job *job)
{
    Facemill__Result *r = &c->out[i];
    Facemill__StageTimes *t = &c->times[i];
    facemill__result__init(r);
    facemill__stage_times__init(t);
    r->times = t;
    r->job_id = job->id;
    r->tag = job->tag;
    r->source = job->name && job->name[0] ? job->name
                : job->source_case == FACEMILL__JOB__SOURCE_PATH ? job->path
                                                                  : job->id;
    r->model = c->model;
    r->worker = (char *)c->worker;
    r->has_attempt = job->has_attempt;
    r->attempt = job->attempt;
    /* The dispatch token goes back with the result: the sink stores a result only
     * when the broker recognises it (protocol 1.1). */
    r->has_token = job->has_token;
    r->token = job->token;
}

/* Finds job i's image bytes, its own or its file's (read into slot i), hashes them and
 * times the read. A job whose bytes cannot be had gets its status and text here. */
static void read_image(compute *c, int i, const Facemill__Job *job)
{
    batch_job *j = &c->job[i];
    Facemill__Result *r = &c->out[i];
    fm_error e = {0};
    double t0 = fm_now_ms();
    j->status = FM_OK;
    j->data = NULL;
    j->len = 0;
    if (job->source_case == FACEMILL__JOB__SOURCE_DATA) {
        j->data = job->data.data;
        j->len = job->data.len;
    } else if (job->source_case == FACEMILL__JOB__SOURCE_PATH) {
        j->status = read_file(c, i, job->path, &j->len, &e);
        j->data = c->files[i];
    } else if (job->source_case == FACEMILL__JOB__SOURCE_UNREADABLE) {
        /* The client could not read the image: its reason is the result's text,
         * nothing is decoded. Kept as sent when it passes the broker's rules (one
         * line, bounded), escaped when it does not (a broker that did not check). */
        const char *why = job->unreadable;
        j->status = FM_ERR_IO;
        if (fm_text_fault(why, FM_ERROR_MSG_MAX - 1) == FM_TEXT_OK)
            snprintf(c->errtext[i], FM_ERROR_MSG_MAX, "%s", why);
        else
            fm_log_escape(why && why[0] ? why : "unreadable", c->errtext[i],
                          FM_ERROR_MSG_MAX);
        return;
    } else {
        j->status = fm_error_set(&e, FM_ERR_INVALID, "job without data or path");
    }
    double read_ms = fm_now_ms() - t0;
    if (j->status != FM_OK) {
        snprintf(c->errtext[i], FM_ERROR_MSG_MAX, "%s", fm_error_text(&e));
        return;
    }
    fm_sha256_digest(j->data, j->len, c->sha[i]);
    r->has_sha256 = 1;
    r->sha256.data = c->sha[i];
    r->sha256.len = FM_SHA256_BYTES;
    r->times->has_read_ms = 1;
    r->times->read_ms = (float)read_ms;
    /* Bytes the client did not send (a journal damaged on disk) are not labelled: an
     * ERROR_IO result, which replaces no labels (the text says what labels it again). */
    if (job->source_case == FACEMILL__JOB__SOURCE_DATA && job->has_data_sha256 &&
        (job->data_sha256.len != FM_SHA256_BYTES ||
         memcmp(job->data_sha256.data, c->sha[i], FM_SHA256_BYTES) != 0)) {
        j->status = FM_ERR_IO;
        snprintf(c->errtext[i], FM_ERROR_MSG_MAX,
                 "the image's bytes are not those the client sent (their SHA-256 differs): "
                 "damaged in the broker's journal or on the way; label it again "
                 "(facemill label --retry-failed, or submit under a new tag)");
    }
}

/* Fills result i from the pipeline's answer ir for its image: the displayed size, the
 * faces (no more than the job's options.max_faces) and the stage times; or the
 * image's own error (unreadable, a format not read, corrupt, too large). */
static void put_image(compute *c, int i, const Facemill__Job *job, const fm_image_result *ir)
{
    Facemill__Result *r = &c->out[i];
    if (ir->error.code != FM_OK) {
        c->job[i].status = ir->error.code;
        snprintf(c->errtext[i], FM_ERROR_MSG_MAX, "%s", fm_error_text(&ir->error));
        return;
    }
    r->has_width = r->has_height = 1;
    r->width = (uint32_t)ir->width;
    r->height = (uint32_t)ir->height;
    int nf = ir->n_faces;
    /* Compared unsigned: a max_faces of 2^31 or more is no limit, not a negative
     * count. */
    if (job->options && job->options->has_max_faces &&
        job->options->max_faces < (uint32_t)nf)
        nf = (int)job->options->max_faces;
    if (nf > c->max_faces) /* the face slots a job has (the pipeline reports no more) */
        nf = c->max_faces;
    size_t first = (size_t)i * (size_t)c->max_faces;
    r->faces = &c->pfp[first];
    r->n_faces = (size_t)nf;
    for (int f = 0; f < nf; f++)
        put_face(c, first + (size_t)f, &ir->faces[f]);
    /* the stages that ran (proto/RESULTS.md) */
    int attrs = fm_image_result_attributed(ir);
    Facemill__StageTimes *t = r->times;
    t->has_decode_ms = t->has_detect_ms = 1;
    t->has_align_ms = attrs;
    t->decode_ms = (float)ir->times.decode_ms;
    t->detect_ms = (float)ir->times.detect_ms;
    t->align_ms = (float)ir->times.align_ms;
    t->has_embed_ms = t->has_heads_ms = attrs;
    t->embed_ms = (float)ir->times.embed_ms;
    t->heads_ms = (float)ir->times.heads_ms;
}

/* Runs the images of the n jobs that were read through the pipeline in one call and
 * fills their results. Returns FM_OK, or the pipeline's error (a backbone or heads
 * failure: no result of the batch is valid then). */
static fm_status label_images(compute *c, Facemill__Job **jobs, int n, fm_error *err)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        if (c->job[i].status == FM_OK)
            c->in[m++] = (fm_pipeline_input){.data = c->job[i].data, .size = c->job[i].len};
    if (m == 0)
        return FM_OK;
    fm_status st = fm_pipeline_run(c->pipeline, c->in, m, c->res, err);
    if (st != FM_OK)
        return st;
    for (int i = 0, k = 0; i < n; i++)
        if (c->job[i].status == FM_OK)
            put_image(c, i, jobs[i], &c->res[k++]);
    return FM_OK;
}

/* Decode-only: decodes the image of job i (when it was read) for its size and time. */
static void decode_image(compute *c, int i)
{
    batch_job *j = &c->job[i];
    if (j->status != FM_OK)
        return;
    Facemill__Result *r = &c->out[i];
    fm_image img;
    fm_error e = {0};
    double t0 = fm_now_ms();
    fm_status st = fm_decode(c->decoder, j->data, j->len, &img, &e);
    r->times->has_decode_ms = 1;
    r->times->decode_ms = (float)(fm_now_ms() - t0);
    if (st != FM_OK) {
        j->status = st;
        snprintf(c->errtext[i], FM_ERROR_MSG_MAX, "%s", fm_error_text(&e));
        return;
    }
    r->has_width = r->has_height = 1;
    r->width = (uint32_t)img.orig_w;
    r->height = (uint32_t)img.orig_h;
}

/* Ends result i: the error of a job that failed, and the total of the stage times. */
static void finish_result(compute *c, int i)
{
    Facemill__Result *r = &c->out[i];
    Facemill__StageTimes *t = r->times;
    if (c->job[i].status != FM_OK) {
        r->has_error_code = 1;
        r->error_code = error_code_of(c->job[i].status);
        r->error_text = c->errtext[i];
    }
    t->has_total_ms = 1;
    t->total_ms = t->read_ms + t->decode_ms + t->detect_ms + t->align_ms + t->embed_ms +
                  t->heads_ms;
}

/* Turns n jobs (1 <= n <= cap) into results c->out[0..n). Returns FM_OK (each result
 * carries its own error), or an error that is nobody's image's fault (the batch is
 * then retried elsewhere). Allocates nothing once buffers have grown to the largest
 * file. */
static fm_status run_batch(compute *c, Facemill__Job **jobs, int n, fm_error *err)
{
    for (int i = 0; i < n; i++) {
        start_result(c, i, jobs[i]);
        read_image(c, i, jobs[i]);
    }
    if (c->decode_only) {
        for (int i = 0; i < n; i++)
            decode_image(c, i);
    } else {
        fm_status st = label_images(c, jobs, n, err);
        if (st != FM_OK)
            return st;
    }
    for (int i = 0; i < n; i++)
        finish_result(c, i);
    return FM_OK;
}

/* ---- the process --------------------------------------------------------------- */

typedef struct wproc {
    char name[192];
    int credit;
    compute comp;
    broker_link link;
    held_jobs held;       /* jobs held (their envelopes), up to credit */
    Facemill__Job **jobs; /* the held jobs' messages, for run_batch */
} wproc;

/* Runs the held jobs, pushes their results, reports them. */
static void process_held(wproc *w)
{
    int n = w->held.n;
    for (int i = 0; i < n; i++)
        w->jobs[i] = w->held.env[i]->job;
    fm_error e = {0};
    double t0 = fm_now_ms();
    fm_status st = run_batch(&w->comp, w->jobs, n, &e);
    fm_log_debug("batch of %d: %lld ms", n, (long long)(fm_now_ms() - t0));
    for (int i = 0; i < n; i++) {
        if (st != FM_OK)
            broker_link_fail(&w->link, w->jobs[i]->id, fm_error_text(&e));
        else
            broker_link_deliver(&w->link, w->jobs[i]->id, &w->comp.out[i]);
    }
    if (st != FM_OK)
        fm_log_error("batch of %d failed: %s", n, fm_error_text(&e));
    held_jobs_clear(&w->held);
}

/* Takes, runs and reports batches until *stop is set or the link fails, then hands
 * back what is held and has the link say goodbye. Returns 0 after *stop, 1 after a
 * failure. */
static int serve(wproc *w, proc_slot *slot, volatile sig_atomic_t *stop)
{
    int rc = 0, link_stopped = 0;
    while (!*stop) {
        fm_log_reopen_if_requested(); /* SIGHUP, passed on by the parent */
        int got = broker_link_wait(&w->link, 500);
        if (got < 0) {
            rc = 1;
            break;
        }
        if (got > 0 && broker_link_take(&w->link, &w->held)) {
            fm_log_error("the broker link stopped");
            link_stopped = 1;
            rc = 1;
            break;
        }
        if (w->held.n > 0 && !*stop) {
            int batch = w->held.n;
            process_held(w);
            atomic_fetch_add(&slot->done, (uint_least64_t)batch);
        }
    }
    /* Stopping: whatever is held and not started goes back. */
    int back = broker_link_stop(&w->link, &w->held, link_stopped);
    fm_log_info("worker %s stopped, %d jobs handed back", w->name, back);
    return rc;
}

int pipeline_process_run(const fm_config *cfg, int index, int decode_only, proc_slot *slot,
                         volatile sig_atomic_t *stop)
{
    wproc w;
    memset(&w, 0, sizeof w);
    w.credit = (int)cfg->worker.credit;
    fm_error err = {0};
    int rc = 1;
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    /* The broker refuses a name that breaks the identifier rules (text.h): said here,
     * once, rather than a worker that never gets a job. */
    char why[FM_TEXT_WHY_MAX];
    if (fm_text_check(cfg->worker.name[0] ? cfg->worker.name : host, 100, why, sizeof why)) {
        fm_log_error("worker.name: %s", why);
        return 1;
    }
    snprintf(w.name, sizeof w.name, "%.100s:%d/%d",
             cfg->worker.name[0] ? cfg->worker.name : host, (int)getpid(), index);
    char role[32];
    snprintf(role, sizeof role, "worker%d", index);
    fm_log_init(role, -1);
    w.held.env = calloc((size_t)w.credit, sizeof *w.held.env);
    w.held.max = w.credit;
    w.jobs = calloc((size_t)w.credit, sizeof *w.jobs);
    if (!w.held.env || !w.jobs) {
        fm_log_error("out of memory");
        free(w.held.env);
        free(w.jobs);
        return 1;
    }
    if (compute_open(&w.comp, cfg, w.credit, decode_only, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        free(w.held.env);
        free(w.jobs);
        return 1;
    }
    w.comp.worker = w.name;
    if (broker_link_open(&w.link, cfg, w.name, w.comp.model, w.credit) != 0)
        goto done;
    fm_log_info("worker %s: credit %d, model %s", w.name, w.credit, w.comp.model);
    atomic_store(&slot->ready, 1);
    rc = serve(&w, slot, stop);
done:
    broker_link_close(&w.link);
    compute_close(&w.comp);
    free(w.held.env);
    free(w.jobs);
    return rc;
}
