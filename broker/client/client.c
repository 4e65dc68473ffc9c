/* client.c - inputs to jobs, the submit loop with flow control and commit tracking,
 * the progress display, and the status request (include/facemill/client.h).
 *
 * Why one loop: `facemill submit` talks to a remote broker, `facemill label` to one it
 * embeds; both read inputs the same way and wait for the same commits.
 *
 * The loop keeps one Submit outstanding (proto/README.md: "waiting for each ack is
 * simplest"); a SlowDown makes it wait and send the same Submit again, an unanswered
 * Submit (broker restarted) is sent again after retry_ms (job ids are stable, so the
 * broker answers DUPLICATE or COMMITTED for what it already has). Accepted jobs wait in
 * a set until a Commit names them. Commit notices are best effort (lost when the
 * broker restarts, or sent to the client that first submitted a DUPLICATE), so once
 * everything is submitted the loop also asks for the tag's counts: when the broker
 * has committed every job of the tag, the run is complete. The same counts keep the
 * progress moving meanwhile (unnoticed): the jobs this run waits for beyond the tag's
 * open ones are committed, notice or not; without them the progress would stand
 * still from a broker restart to the very end while the work went on.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include "facemill/client.h"
#include "facemill/clock.h"
#include "facemill/log.h"
#include "facemill/sha256.h"
#include "facemill/status_metrics.h"
#include "facemill/wire.h"

#include <archive.h>
#include <archive_entry.h>
#include <zmq.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Room in a message for everything but the image bytes. */
#define ENVELOPE_SLACK 65536

/* ---- inputs ------------------------------------------------------------------- */

typedef struct item {
    char *path;      /* a file, or an archive whose members are images */
    int archive;
    int64_t members; /* archives: images counted at scan time */
    char *why;       /* set: nothing can be read at path, and this says why (a dangling
                        link, a missing listed path): it becomes an error row */
} item;

typedef struct item_list {
    item *v;
    size_t n, cap;
} item_list;

static void items_free(item_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].path);
        free(l->v[i].why);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

static fm_status items_add(item_list *l, const char *path, int archive, const char *why,
                           fm_error *err)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        item *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return fm_error_set(err, FM_ERR_NOMEM, "out of memory listing inputs");
        l->v = v;
        l->cap = cap;
    }
    item *it = &l->v[l->n];
    memset(it, 0, sizeof *it);
    it->path = strdup(path);
    it->why = why ? strdup(why) : NULL;
    if (!it->path || (why && !it->why)) {
        free(it->path);
        free(it->why);
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory listing inputs");
    }
    it->archive = archive;
    l->n++;
    return FM_OK;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* An archive member's name: UTF-8 where libarchive can give it (a zip's names marked
 * UTF-8, which the C locale cannot convert: archive_entry_pathname() is then NULL),
 * else the bytes as stored; NULL only when neither exists. */
static const char *member_name(struct archive_entry *e)
{
    const char *n = archive_entry_pathname_utf8(e);
    return n ? n : archive_entry_pathname(e);
}

static int is_image_name(const char *name)
{
    static const char *const ext[] = {".jpg",  ".jpeg", ".jpe",  ".jfif", ".png",
                                      ".gif",  ".bmp",  ".webp", ".tif",  ".tiff",
                                      ".heic", ".heif", ".hif",  ".avif", NULL};
    for (int i = 0; ext[i]; i++)
        if (ends_with(name, ext[i]))
            return 1;
    return 0;
}

static int is_archive_name(const char *name)
{
    static const char *const ext[] = {".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2",
                                      ".tar.xz", ".txz", ".tar.zst", ".zip", NULL};
    for (int i = 0; ext[i]; i++)
        if (ends_with(name, ext[i]))
            return 1;
    return 0;
}

/* Room for a name as printed: escaped (fm_log_escape), cut with "..." beyond this. */
#define SHOWN_MAX (PATH_MAX + 256)

/* libarchive's reason for a's last failure, as "unreadable archive: ..." in buf. It
 * can have no text (archive_error_string returns NULL): errno's text stands in then,
 * or nothing more. */
static const char *archive_why(struct archive *a, char *buf, size_t size)
{
    const char *s = archive_error_string(a);
    int e = archive_errno(a);
    if (s && s[0])
        snprintf(buf, size, "unreadable archive: %s", s);
    else if (e > 0 && e != EILSEQ) /* EILSEQ: libarchive's "bad format", no I/O text */
        snprintf(buf, size, "unreadable archive: %s", strerror(e));
    else
        snprintf(buf, size, "unreadable archive");
    return buf;
}

/* Opens the archive at path for reading, or says why not in why (NULL returned). */
static struct archive *archive_open(const char *path, char *why, size_t size, fm_error *err)
{
    struct archive *a = archive_read_new();
    if (!a) {
        fm_error_set(err, FM_ERR_NOMEM, "out of memory opening an archive");
        return NULL;
    }
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_zip(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        archive_why(a, why, size);
        archive_read_free(a);
        return NULL;
    }
    return a;
}

/* Counts the images of an archive (headers only), as far as it can be read: the
 * reader finds the same damage later and makes an error row of it. Returns 0, or -1
 * when the archive cannot be opened at all (why says why). */
static int archive_count(const char *path, int all_files, int64_t *count, char *why,
                         size_t size, fm_error *err)
{
    struct archive *a = archive_open(path, why, size, err);
    *count = 0;
    if (!a)
        return -1;
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
        const char *name = member_name(e);
        if (archive_entry_filetype(e) == AE_IFREG &&
            (all_files || !name || is_image_name(name)))
            (*count)++;
        archive_read_data_skip(a);
    }
    archive_read_free(a);
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One directory being walked: its path and its entries, sorted. */
typedef struct walk_frame {
    char *path;
    char **names;
    size_t n, next;
    dev_t dev; /* the folder itself: a link back to it is not followed */
    ino_t ino;
} walk_frame;

static void frame_free(walk_frame *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->names[i]);
    free(f->names);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* Reads the entries of dir (but . and ..) into f, sorted. FM_ERR_IO with the reason
 * alone in err (no path) when dir cannot be listed; f is then empty. */
static fm_status frame_open(walk_frame *f, const char *dir, fm_error *err)
{
    size_t cap = 0;
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(dir)))
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory listing a folder");
    DIR *d = opendir(dir);
    if (!d) {
        fm_error_set(err, FM_ERR_IO, "%s", strerror(errno));
        frame_free(f);
        return FM_ERR_IO;
    }
    fm_status st = FM_OK;
    struct dirent *de;
    for (;;) {
        errno = 0;
        if (!(de = readdir(d))) {
            if (errno) /* a listing cut short is no listing: the folder is skipped */
                st = fm_error_set(err, FM_ERR_IO, "%s", strerror(errno));
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (f->n == cap) {
            cap = cap ? 2 * cap : 64;
            char **v = realloc(f->names, cap * sizeof *v);
            if (!v) {
                st = fm_error_set(err, FM_ERR_NOMEM, "out of memory listing a folder");
                break;
            }
            f->names = v;
        }
        if (!(f->names[f->n] = strdup(de->d_name))) {
            st = fm_error_set(err, FM_ERR_NOMEM, "out of memory listing a folder");
            break;
        }
        f->n++;
    }
    struct stat ds;
    if (st == FM_OK && fstat(dirfd(d), &ds) == 0) {
        f->dev = ds.st_dev;
        f->ino = ds.st_ino;
    }
    closedir(d);
    if (st != FM_OK)
        frame_free(f);
    else if (f->n)
        qsort(f->names, f->n, sizeof *f->names, cmp_names);
    return st;
}

/* What the walk of the inputs collects. */
typedef struct scan {
    item_list *items;
    int all_files;
    int64_t folders_skipped; /* folders that could not be listed or were too deep */
    const char *skip_db;     /* the results database being written: not an input */
    struct stat db_st;       /* ... its file and its folder, when they exist */
    struct stat db_dir_st;
    int have_db_st;
} scan;

/* True for the results database being written (the same file) and for a file named
 * like one of its companions (DB-wal, DB-shm, DB-journal) in its folder (dir: the
 * folder of the entry). */
static int is_skipped_db(const scan *s, const char *name, const struct stat *st,
                         const walk_frame *dir)
{
    if (!s->skip_db || !s->have_db_st)
        return 0;
    if (st->st_dev == s->db_st.st_dev && st->st_ino == s->db_st.st_ino)
        return 1;
    if (dir->dev != s->db_dir_st.st_dev || dir->ino != s->db_dir_st.st_ino)
        return 0;
    const char *slash = strrchr(s->skip_db, '/');
    const char *base = slash ? slash + 1 : s->skip_db;
    size_t n = strlen(base);
    return strncmp(name, base, n) == 0 &&
           (strcmp(name + n, "-wal") == 0 || strcmp(name + n, "-shm") == 0 ||
            strcmp(name + n, "-journal") == 0);
}

/* A folder that is not walked: one warning line naming it and why; the run goes on
 * and counts it (fm_client_summary.folders_skipped). */
static void skip_folder(scan *s, const char *dir, const char *why)
{
    char shown[SHOWN_MAX];
    fm_log_warn("%s: skipped: %s", fm_log_escape(dir, shown, sizeof shown), why);
    s->folders_skipped++;
}

/* An archive (tar, plain or compressed, or zip) whose members are images: its images
 * counted now, read later; one that cannot be opened is one error row. */
static fm_status add_archive(scan *s, const char *path, fm_error *err)
{
    char why[FM_ERROR_MSG_MAX];
    int64_t members = 0;
    fm_error ae = {0};
    if (archive_count(path, s->all_files, &members, why, sizeof why, &ae) != 0) {
        if (ae.code == FM_ERR_NOMEM)
            return fm_error_set(err, FM_ERR_NOMEM, "%s", ae.msg);
        return items_add(s->items, path, 0, why, err); /* one error row for it */
    }
    fm_status rc = items_add(s->items, path, 1, NULL, err);
    if (rc == FM_OK)
        s->items->v[s->items->n - 1].members = members;
    return rc;
}

/* Adds the files under root (sorted, depth first), archives among them as archives
 * (their images are taken as an archive INPUT's are). Symbolic links to directories are
 * followed (a phone's folder linked into an album is labelled under the link's name),
 * except a link to a folder the walk is inside already (a loop: said, not followed);
 * a link to nothing becomes an error row. The file skip_db names (the results database
 * being written, with its -wal, -shm and -journal) is never an input. A folder that
 * cannot be listed, or lies more than FM_CLIENT_MAX_DEPTH levels down, is skipped with
 * a warning: one bad folder does not cost the rest. Iterative, with an explicit stack,
 * so a tree thousands of levels deep is no stack overflow. */
static fm_status walk_dir(scan *s, const char *root, fm_error *err)
{
    walk_frame stack[FM_CLIENT_MAX_DEPTH];
    int depth = 0;
    fm_error fe = {0};
    fm_status st = frame_open(&stack[0], root, &fe);
    if (st == FM_ERR_NOMEM)
        return fm_error_set(err, st, "%s", fe.msg);
    if (st != FM_OK) {
        skip_folder(s, root, fe.msg);
        return FM_OK;
    }
    depth = 1;
    st = FM_OK;
    while (st == FM_OK && depth > 0) {
        walk_frame *f = &stack[depth - 1];
        if (f->next == f->n) {
            frame_free(&stack[--depth]);
            continue;
        }
        const char *name = f->names[f->next++];
        char path[PATH_MAX], shown[SHOWN_MAX];
        int w = snprintf(path, sizeof path, "%s%s%s", f->path,
                         f->path[0] && f->path[strlen(f->path) - 1] == '/' ? "" : "/", name);
        if (w < 0 || (size_t)w >= sizeof path) {
            char dir[SHOWN_MAX / 2];
            fm_log_warn("%s/%s: path too long, skipped",
                        fm_log_escape(f->path, dir, sizeof dir),
                        fm_log_escape(name, shown, sizeof shown));
            continue;
        }
        int wanted = s->all_files || is_image_name(name);
        struct stat lst, sst;
        if (lstat(path, &lst) != 0)
            continue; /* gone since the listing */
        if (stat(path, &sst) != 0) {
            /* A link to nothing (or to what cannot be reached): a row says so. */
            int e = errno;
            const char *why = S_ISLNK(lst.st_mode) && e == ENOENT ? "dangling symbolic link"
                                                                  : strerror(e);
            if (wanted)
                st = items_add(s->items, path, 0, why, err);
            continue;
        }
        if (S_ISDIR(sst.st_mode)) {
            int loop = 0;
            for (int k = 0; k < depth && !loop; k++)
                loop = stack[k].dev == sst.st_dev && stack[k].ino == sst.st_ino;
            if (loop) {
                fm_log_info("%s: a link to a folder this one is in: not followed",
                            fm_log_escape(path, shown, sizeof shown));
                continue;
            }
            if (depth == FM_CLIENT_MAX_DEPTH) {
                char top[SHOWN_MAX];
                fm_log_warn("%s: folders nested more than %d levels deep: %s skipped",
                            fm_log_escape(root, top, sizeof top), FM_CLIENT_MAX_DEPTH,
                            fm_log_escape(path, shown, sizeof shown));
                s->folders_skipped++;
                continue;
            }
            fm_status fs = frame_open(&stack[depth], path, &fe);
            if (fs == FM_ERR_NOMEM)
                st = fm_error_set(err, fs, "%s", fe.msg);
            else if (fs != FM_OK)
                skip_folder(s, path, fe.msg);
            else
                depth++;
        } else if (S_ISREG(sst.st_mode) && is_skipped_db(s, name, &sst, f)) {
            continue;
        } else if (S_ISREG(sst.st_mode) && is_archive_name(name)) {
            st = add_archive(s, path, err); /* a folder's zips and tars are opened too */
        } else if (S_ISREG(sst.st_mode) && wanted) {
            st = items_add(s->items, path, 0, NULL, err);
        }
    }
    while (depth > 0)
        frame_free(&stack[--depth]);
    return st;
}

/* One input: a directory, an archive, a file, or "-" (a list on stdin). A path of
 * that list that cannot be had becomes an error row (listed: 1); an INPUT of the
 * command line that cannot is an error (fm_client_check_inputs says so first). */
static fm_status add_input(scan *s, const char *in, int listed, fm_error *err)
{
    if (strcmp(in, "-") == 0 && !listed) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        fm_status st = FM_OK;
        while (st == FM_OK && (len = getline(&line, &cap, stdin)) >= 0) {
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = '\0';
            if (len == 0)
                continue;
            st = add_input(s, line, 1, err);
        }
        free(line);
        return st;
    }
    char shown[SHOWN_MAX];
    struct stat st;
    if (stat(in, &st) != 0) {
        int e = errno;
        if (listed)
            return items_add(s->items, in, 0, strerror(e), err);
        return fm_error_set(err, e == ENOENT ? FM_ERR_NOT_FOUND : FM_ERR_IO, "%s: %s",
                            fm_log_escape(in, shown, sizeof shown), strerror(e));
    }
    if (S_ISDIR(st.st_mode))
        return walk_dir(s, in, err);
    if (!S_ISREG(st.st_mode)) {
        if (listed)
            return items_add(s->items, in, 0, "not a file or directory", err);
        return fm_error_set(err, FM_ERR_INVALID, "%s: not a file or directory",
                            fm_log_escape(in, shown, sizeof shown));
    }
    if (is_archive_name(in))
        return add_archive(s, in, err);
    return items_add(s->items, in, 0, NULL, err);
}

fm_status fm_client_check_inputs(char *const *inputs, int n, fm_error *err)
{
    char shown[SHOWN_MAX];
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (strcmp(inputs[i], "-") == 0)
            continue;
        if (stat(inputs[i], &st) != 0) {
            int e = errno;
            return fm_error_set(err, e == ENOENT ? FM_ERR_NOT_FOUND : FM_ERR_IO, "%s: %s",
                                fm_log_escape(inputs[i], shown, sizeof shown), strerror(e));
        }
        if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
            return fm_error_set(err, FM_ERR_INVALID, "%s: not a file or directory",
                                fm_log_escape(inputs[i], shown, sizeof shown));
    }
    return FM_OK;
}

/* ---- reading jobs ------------------------------------------------------------------ */

typedef struct job {
    char id[2 * FM_SHA256_BYTES + 1];
    char *name;
    char *path;    /* by-path jobs: absolute path */
    uint8_t *data; /* bytes jobs */
    size_t size;
    uint8_t digest[FM_SHA256_BYTES]; /* bytes jobs: SHA-256 of data (Job.data_sha256) */
    char *why;     /* unreadable jobs: why the image could not be read (one line) */
} job;

static void job_clear(job *j)
{
    free(j->name);
    free(j->path);
    free(j->data);
    free(j->why);
    memset(j, 0, sizeof *j);
}

/* ---- sets of strings (job ids waiting for their commit, names met) ------------------- */

typedef struct id_set {
    char **slot; /* NULL: empty; TOMB: removed */
    size_t cap, n, used;
} id_set;

static char tomb_marker;
#define TOMB (&tomb_marker)

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void set_free(id_set *s)
{
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i] && s->slot[i] != TOMB)
            free(s->slot[i]);
    free(s->slot);
    memset(s, 0, sizeof *s);
}

static int set_grow(id_set *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1024;
    if (s->n * 4 < s->cap)
        cap = s->cap; /* mostly tombstones: rebuild at the same size */
    char **slot = calloc(cap, sizeof *slot);
    if (!slot)
        return -1;
    for (size_t i = 0; i < s->cap; i++) {
        char *k = s->slot[i];
        if (!k || k == TOMB)
            continue;
        size_t p = hash_str(k) & (cap - 1);
        while (slot[p])
            p = (p + 1) & (cap - 1);
        slot[p] = k;
    }
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
    s->used = s->n;
    return 0;
}

/* Index of key's slot, or of the empty slot where it would go. */
static size_t set_find(const id_set *s, const char *key, int *found)
{
    size_t p = hash_str(key) & (s->cap - 1);
    *found = 0;
    while (s->slot[p]) {
        if (s->slot[p] != TOMB && strcmp(s->slot[p], key) == 0) {
            *found = 1;
            return p;
        }
        p = (p + 1) & (s->cap - 1);
    }
    return p;
}

/* 1 added, 0 already there, -1 out of memory. */
static int set_add(id_set *s, const char *key)
{
    if ((s->used + 1) * 2 > s->cap && set_grow(s) != 0)
        return -1;
    int found;
    size_t p = set_find(s, key, &found);
    if (found)
        return 0;
    if (!(s->slot[p] = strdup(key)))
        return -1;
    s->n++;
    s->used++;
    return 1;
}

/* 1 removed, 0 not there. */
static int set_remove(id_set *s, const char *key)
{
    if (!s->cap)
        return 0;
    int found;
    size_t p = set_find(s, key, &found);
    if (!found)
        return 0;
    free(s->slot[p]);
    s->slot[p] = TOMB;
    s->n--;
    return 1;
}

typedef struct reader {
    const item_list *items;
    size_t next;          /* next item */
    struct archive *ar;   /* open archive of item next - 1, if any */
    int64_t ar_jobs;      /* jobs made of that archive so far */
    int ar_member_failed; /* its last member could not be read (the row says why) */
    char *ar_last;        /* the last member read of it, to say where damage begins */
    int64_t total_delta;  /* jobs made beyond (or short of) the scan's count */
    const char *tag;
    int by_path, all_files;
    size_t max_bytes;     /* largest image that fits in a message */
    int64_t *links;       /* image members that are hard or symbolic links: counted */
    int64_t *repeated;    /* members named again in their archive: counted, not sent */
    id_set ar_names;      /* the member names of the open archive met so far */
} reader;

/* The marker that stands for the image bytes in the id of an unreadable job: the same
 * name stays the same job while it cannot be read, and no path (absolute) or digest
 * (32 bytes) is spelt this way. */
#define UNREADABLE_MARK "unreadable"

static void job_id(job *j, const char *tag)
{
    fm_sha256 h;
    uint8_t d[FM_SHA256_BYTES];
    fm_sha256_init(&h);
    fm_sha256_update(&h, tag, strlen(tag) + 1);
    fm_sha256_update(&h, j->name, strlen(j->name) + 1);
    if (j->why) {
        fm_sha256_update(&h, UNREADABLE_MARK, strlen(UNREADABLE_MARK));
    } else if (j->path) {
        /* the bytes are the worker's to read: the file's size and time of change
         * stand for them, so a file rewritten since is labelled again */
        fm_sha256_update(&h, j->path, strlen(j->path));
        struct stat fs;
        if (stat(j->path, &fs) == 0) {
            char when[96];
            int n = snprintf(when, sizeof when, "|%lld|%lld.%09ld", (long long)fs.st_size,
                             (long long)fs.st_mtim.tv_sec, (long)fs.st_mtim.tv_nsec);
            if (n > 0)
                fm_sha256_update(&h, when, (size_t)n);
        }
    } else {
        fm_sha256_digest(j->data, j->size, j->digest);
        fm_sha256_update(&h, j->digest, sizeof j->digest);
    }
    fm_sha256_final(&h, d);
    fm_sha256_hex(d, j->id);
}

/* Makes *j the unreadable job name (name + suffix: "ARCHIVE" ":" "MEMBER"), whose
 * result is an error saying why. The reason travels escaped (no control character, no
 * bad UTF-8, at most FM_ERROR_MSG_MAX - 1 bytes), as the broker demands. Returns 1,
 * or -1 out of memory. */
static int unreadable_job(reader *r, job *j, const char *name, const char *member,
                          const char *why, fm_error *err)
{
    char text[FM_ERROR_MSG_MAX];
    job_clear(j);
    size_t nlen = strlen(name) + (member ? strlen(member) + 1 : 0) + 1;
    j->name = malloc(nlen);
    j->why = strdup(fm_log_escape(why && why[0] ? why : "unreadable", text, sizeof text));
    if (!j->name || !j->why) {
        job_clear(j);
        fm_error_set(err, FM_ERR_NOMEM, "out of memory");
        return -1;
    }
    snprintf(j->name, nlen, "%s%s%s", name, member ? ":" : "", member ? member : "");
    job_id(j, r->tag);
    return 1;
}

/* Reads the file at path (at most max bytes). FM_OK, FM_ERR_NOMEM, or another error
 * with the reason alone (no path) in why. */
static fm_status read_file(const char *path, size_t max, uint8_t **data, size_t *size,
                           char *why, size_t why_size)
{
    fm_status st = FM_OK;
    FILE *f = fopen(path, "rb");
    *data = NULL;
    if (!f) {
        snprintf(why, why_size, "cannot open: %s", strerror(errno));
        return FM_ERR_IO;
    }
    struct stat s;
    if (fstat(fileno(f), &s) != 0) {
        snprintf(why, why_size, "cannot read: %s", strerror(errno));
        st = FM_ERR_IO;
        goto done;
    }
    if (!S_ISREG(s.st_mode)) {
        snprintf(why, why_size, "not a file");
        st = FM_ERR_IO;
        goto done;
    }
    if ((uint64_t)s.st_size > max) {
        snprintf(why, why_size, "%lld bytes, more than a message takes (%zu)",
                 (long long)s.st_size, max);
        st = FM_ERR_LIMIT;
        goto done;
    }
    *data = malloc(s.st_size ? (size_t)s.st_size : 1);
    if (!*data) {
        snprintf(why, why_size, "out of memory");
        st = FM_ERR_NOMEM;
        goto done;
    }
    *size = fread(*data, 1, (size_t)s.st_size, f);
    if (ferror(f)) {
        snprintf(why, why_size, "cannot read: %s", strerror(errno));
        st = FM_ERR_IO;
        free(*data);
        *data = NULL;
    }
done:
    fclose(f);
    return st;
}

/* Done with the open archive: the jobs it gave settle the count of the scan (which
 * read headers only, and as far as they could be read). */
static void reader_close_archive(reader *r)
{
    r->total_delta += r->ar_jobs - r->items->v[r->next - 1].members;
    archive_read_free(r->ar);
    r->ar = NULL;
    r->ar_jobs = 0;
    r->ar_member_failed = 0;
    free(r->ar_last);
    r->ar_last = NULL;
    set_free(&r->ar_names);
}

/* The next job of the open archive: 1 with *j filled, 0 at its end, -1 out of
 * memory. What cannot be read is a job too, an unreadable one: a member (too large,
 * cut short), or the archive itself where it is damaged (no row twice for one fault:
 * not after a member that could not be read). */
static int archive_next(reader *r, job *j, fm_error *err)
{
    const item *it = &r->items->v[r->next - 1];
    char why[FM_ERROR_MSG_MAX];
    for (;;) {
        struct archive_entry *e;
        int rc = archive_read_next_header(r->ar, &e);
        if (rc == ARCHIVE_EOF) {
            reader_close_archive(r);
            return 0;
        }
        if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
            int told = r->ar_member_failed, got = 0;
            archive_why(r->ar, why, sizeof why);
            if (r->ar_last) { /* "unreadable archive after MEMBER: ..." */
                char where[2 * FM_ERROR_MSG_MAX];
                const char *rest = why + strlen("unreadable archive");
                int n = snprintf(where, sizeof where, "unreadable archive after %.*s%s",
                                 FM_ERROR_MSG_MAX / 2, r->ar_last, rest);
                size_t len = n < 0 ? 0 : (size_t)n;
                if (len >= sizeof why)
                    len = sizeof why - 1;
                memcpy(why, where, len);
                why[len] = '\0';
            }
            if (!told) {
                r->ar_jobs++;
                got = unreadable_job(r, j, it->path, NULL, why, err);
            }
            reader_close_archive(r);
            return got;
        }
        const char *member = member_name(e);
        free(r->ar_last);
        r->ar_last = member ? strdup(member) : NULL; /* NULL: no name to give */
        if (archive_entry_filetype(e) != AE_IFREG ||
            (member && !r->all_files && !is_image_name(member))) {
            /* a link's image is its target's, labelled under that name when the
             * archive holds it: the link is counted and the summary says so (GNU tar
             * stores every further hard link of a file as one) */
            const char *to = archive_entry_hardlink(e);
            if (!to && archive_entry_filetype(e) == AE_IFLNK)
                to = archive_entry_symlink(e);
            if (to && member && (r->all_files || is_image_name(member))) {
                char shown[SHOWN_MAX], where[SHOWN_MAX], target[SHOWN_MAX];
                fm_log_info("%s:%s: a link to %s: not labelled itself (its target is, "
                            "when the archive holds it)",
                            fm_log_escape(it->path, where, sizeof where),
                            fm_log_escape(member, shown, sizeof shown),
                            fm_log_escape(to, target, sizeof target));
                if (r->links)
                    (*r->links)++;
            }
            archive_read_data_skip(r->ar);
            continue;
        }
        /* A name the archive holds twice (tar -r appends a file again) is one image,
         * one row: the first is labelled, the others are counted as repeats. */
        int first = member ? set_add(&r->ar_names, member) : 1;
        if (first < 0) {
            fm_error_set(err, FM_ERR_NOMEM, "out of memory");
            return -1;
        }
        if (first == 0) {
            char shown[SHOWN_MAX], where[SHOWN_MAX];
            fm_log_info("%s:%s: named again in the archive: the first member of that name "
                        "is labelled",
                        fm_log_escape(it->path, where, sizeof where),
                        fm_log_escape(member, shown, sizeof shown));
            if (r->repeated)
                (*r->repeated)++;
            archive_read_data_skip(r->ar);
            continue;
        }
        r->ar_jobs++;
        if (!member) { /* a row all the same, named by its place in the archive */
            archive_read_data_skip(r->ar);
            snprintf(why, sizeof why, "#%lld", (long long)r->ar_jobs);
            return unreadable_job(r, j, it->path, why, "member name not readable", err);
        }
        r->ar_member_failed = 0;
        int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
        if (size < 0 || (uint64_t)size > r->max_bytes) {
            archive_read_data_skip(r->ar);
            if (size >= 0)
                snprintf(why, sizeof why, "%lld bytes, more than a message takes (%zu)",
                         (long long)size, r->max_bytes);
            return unreadable_job(r, j, it->path, member,
                                  size < 0 ? "member of unknown size" : why, err);
        }
        size_t nlen = strlen(it->path) + strlen(member) + 2;
        if (!(j->name = malloc(nlen)) || !(j->data = malloc(size ? (size_t)size : 1))) {
            fm_error_set(err, FM_ERR_NOMEM, "out of memory");
            return -1;
        }
        snprintf(j->name, nlen, "%s:%s", it->path, member);
        la_ssize_t got = 0, n = 0;
        while (got < size &&
               (n = archive_read_data(r->ar, j->data + got, (size_t)(size - got))) > 0)
            got += n;
        if (got != size) {
            const char *s = n < 0 ? archive_error_string(r->ar) : NULL;
            snprintf(why, sizeof why, "truncated member%s%s", s && s[0] ? ": " : "",
                     s && s[0] ? s : "");
            r->ar_member_failed = 1;
            char *name = j->name;
            j->name = NULL;
            int res = unreadable_job(r, j, name, NULL, why, err);
            free(name);
            return res;
        }
        j->size = (size_t)size;
        job_id(j, r->tag);
        return 1;
    }
}

/* Produces the next job. Returns 1 with *j filled, 0 at the end, or -1 out of memory
 * (err). An image that cannot be read is a job too, an unreadable one (j->why): its
 * result is an error row like any undecodable image's. */
static int reader_next(reader *r, job *j, fm_error *err)
{
    char why[FM_ERROR_MSG_MAX];
    memset(j, 0, sizeof *j);
    for (;;) {
        if (r->ar) {
            int got = archive_next(r, j, err);
            if (got != 0)
                return got;
            continue;
        }
        if (r->next >= r->items->n)
            return 0;
        const item *it = &r->items->v[r->next++];
        if (it->why)
            return unreadable_job(r, j, it->path, NULL, it->why, err);
        if (it->archive) {
            fm_error ae = {0};
            if (!(r->ar = archive_open(it->path, why, sizeof why, &ae))) {
                if (ae.code == FM_ERR_NOMEM) {
                    fm_error_set(err, FM_ERR_NOMEM, "%s", ae.msg);
                    return -1;
                }
                r->total_delta += 1 - it->members;
                return unreadable_job(r, j, it->path, NULL, why, err);
            }
            continue;
        }
        if (r->by_path) {
            char abs[PATH_MAX];
            if (!realpath(it->path, abs))
                return unreadable_job(r, j, it->path, NULL, strerror(errno), err);
            if (!(j->name = strdup(it->path)) || !(j->path = strdup(abs))) {
                fm_error_set(err, FM_ERR_NOMEM, "out of memory");
                return -1;
            }
        } else {
            fm_status st = read_file(it->path, r->max_bytes, &j->data, &j->size, why,
                                     sizeof why);
            if (st == FM_ERR_NOMEM) {
                fm_error_set(err, FM_ERR_NOMEM, "%s", why);
                return -1;
            }
            if (st != FM_OK)
                return unreadable_job(r, j, it->path, NULL, why, err);
            if (!(j->name = strdup(it->path))) {
                fm_error_set(err, FM_ERR_NOMEM, "out of memory");
                return -1;
            }
        }
        job_id(j, r->tag);
        return 1;
    }
}


/* ---- progress -------------------------------------------------------------------- */

typedef struct progress {
    FILE *out;
    int mode; /* FM_PROGRESS_BAR, _LINES or _NONE */
    int64_t start_ms, last_ms, interval_ms;
    int drawn;
} progress;

/* extra: jobs committed that no Commit named (unnoticed()), done as well. */
static void progress_show(progress *p, const fm_client_summary *s, int64_t extra,
                          int64_t now, int final)
{
    if (p->mode == FM_PROGRESS_NONE)
        return;
    if (!final && now - p->last_ms < p->interval_ms)
        return;
    p->last_ms = now;
    int64_t committed = s->committed + extra;
    int64_t done = committed + s->skipped + s->rejected;
    double secs = (double)(now - p->start_ms) / 1000.0;
    double rate = secs > 0.05 ? (double)(committed + s->rejected) / secs : 0.0;
    int64_t left = s->total > done ? s->total - done : 0;
    char eta[32] = "--:--";
    if (rate > 0 && left > 0) {
        int64_t t = (int64_t)((double)left / rate + 0.5);
        snprintf(eta, sizeof eta, "%lld:%02lld:%02lld", (long long)(t / 3600),
                 (long long)(t / 60 % 60), (long long)(t % 60));
    } else if (left == 0) {
        snprintf(eta, sizeof eta, "0:00:00");
    }
    double frac = s->total > 0 ? (double)done / (double)s->total : 1.0;
    if (frac > 1)
        frac = 1;
    if (p->mode == FM_PROGRESS_BAR) {
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(p->out, "\r[%s] %lld/%lld %5.1f%% %7.1f img/s ETA %s  failed %lld\033[K",
                bar, (long long)done, (long long)s->total, 100.0 * frac, rate, eta,
                (long long)s->failed);
        if (final)
            fputc('\n', p->out);
        p->drawn = 1;
    } else {
        fprintf(p->out,
                "progress: %lld/%lld done (%.1f%%), %.1f images/s, ETA %s, %lld failed%s\n",
                (long long)done, (long long)s->total, 100.0 * frac, rate, eta,
                (long long)s->failed,
                s->skipped ? " (stored by earlier runs included)" : "");
    }
    fflush(p->out);
}

/* Writes a message line without tearing the bar. */
static void progress_note(progress *p, const char *fmt, const char *a, const char *b)
{
    if (p->mode == FM_PROGRESS_BAR && p->drawn) {
        fputs("\r\033[K", p->out);
        p->drawn = 0;
        p->last_ms = 0; /* redraw soon */
    }
    fprintf(p->out, fmt, a, b);
    fflush(p->out);
}

/* ---- the submit loop ---------------------------------------------------------------- */

typedef struct run {
    const fm_client_opts *o;
    void *sock;
    reader rd;
    id_set pending;
    fm_client_summary *sum;
    progress prog;
    /* the outstanding Submit */
    job *jobs;
    size_t n_jobs;
    job held;     /* read, but it did not fit in the previous Submit */
    int have_held;
    uint64_t request_id;
    int outstanding;
    int64_t sent_ms, resend_at_ms;
    int inputs_done;
    /* status polling */
    uint64_t status_id;
    int64_t next_status_ms;
    int complete_by_status;
    int64_t accepted;      /* jobs of this run the broker took as new */
    uint64_t most_total;   /* the most jobs of the tag a status reply counted */
    uint64_t broker_total; /* the count that showed jobs lost: */
    int lost;              /* the broker has fewer jobs of the tag than it had or took */
    void *watch;            /* the handshakes of sock (fm_auth_watch) */
    int64_t stored_answers; /* jobs answered COMMITTED: stored by an earlier run */
    int final_status;       /* a status reply since every job of this run was done */
    int64_t tag_open; /* the tag's jobs not committed at the last status reply, plus the
                         ids pending took since (-1: no reply yet): see unnoticed() */
    int silent_said;  /* the warning that the broker never answered was logged */
} run;

/* The jobs of pending that the broker has committed though no Commit named them
 * (a broker restart loses the notices of the jobs it had: they go to the connection
 * that sent the Submit). Every id in pending is a job of the tag, so those beyond
 * the tag's open jobs are committed: a count that is never too high (an id pending
 * took after the reply is counted open), and exact when every open job of the tag is
 * one this run waits for. A Commit that names one of them later moves it from
 * pending to committed, so it is counted once. */
static int64_t unnoticed(const run *r)
{
    if (r->tag_open < 0 || (int64_t)r->pending.n <= r->tag_open)
        return 0;
    return (int64_t)r->pending.n - r->tag_open;
}

static fm_status send_submit(run *r, fm_error *err)
{
    Facemill__Job *jv = calloc(r->n_jobs, sizeof *jv);
    Facemill__Job **jp = calloc(r->n_jobs, sizeof *jp);
    fm_status st = FM_OK;
    if (!jv || !jp) {
        st = fm_error_set(err, FM_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < r->n_jobs; i++) {
        job *j = &r->jobs[i];
        facemill__job__init(&jv[i]);
        jv[i].id = j->id;
        jv[i].tag = (char *)r->o->tag;
        jv[i].name = j->name;
        if (j->why) {
            jv[i].source_case = FACEMILL__JOB__SOURCE_UNREADABLE;
            jv[i].unreadable = j->why;
        } else if (j->path) {
            jv[i].source_case = FACEMILL__JOB__SOURCE_PATH;
            jv[i].path = j->path;
        } else {
            jv[i].source_case = FACEMILL__JOB__SOURCE_DATA;
            jv[i].data.data = j->data;
            jv[i].data.len = j->size;
            jv[i].has_data_sha256 = 1;
            jv[i].data_sha256.data = j->digest;
            jv[i].data_sha256.len = sizeof j->digest;
        }
        jp[i] = &jv[i];
    }
    Facemill__Submit sub = FACEMILL__SUBMIT__INIT;
    sub.n_jobs = r->n_jobs;
    sub.jobs = jp;
    sub.has_request_id = 1;
    sub.request_id = r->request_id;
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_SUBMIT;
    env.submit = &sub;
    fm_error e = {0};
    st = fm_wire_send(r->sock, NULL, &env, ZMQ_DONTWAIT, &e);
    if (st == FM_ERR_TIMEOUT) {
        st = FM_OK; /* not connected yet: the resend timer tries again */
    } else if (st != FM_OK) {
        fm_error_set(err, st, "sending a submit: %s", fm_error_text(&e));
        goto done;
    }
    r->sent_ms = fm_now_ms();
    r->resend_at_ms = r->sent_ms + r->o->retry_ms;
    r->outstanding = 1;
done:
    free(jv);
    free(jp);
    return st;
}

static void clear_jobs(run *r)
{
    for (size_t i = 0; i < r->n_jobs; i++)
        job_clear(&r->jobs[i]);
    r->n_jobs = 0;
    r->outstanding = 0;
}

/* Reads the next chunk of jobs (skipping stored ones) and sends it. */
static fm_status next_submit(run *r, fm_error *err)
{
    size_t bytes = 0;
    const fm_client_opts *o = r->o;
    size_t limit = (size_t)o->max_msg_size - ENVELOPE_SLACK;
    while (r->n_jobs < (size_t)o->chunk && (!r->inputs_done || r->have_held)) {
        job *j = &r->jobs[r->n_jobs];
        fm_error e = {0};
        int got;
        if (r->have_held) {
            *j = r->held;
            r->have_held = 0;
            got = 1;
        } else {
            got = reader_next(&r->rd, j, &e);
        }
        r->sum->total += r->rd.total_delta;
        r->rd.total_delta = 0;
        if (got == 0) {
            r->inputs_done = 1;
            break;
        }
        if (got < 0) {
            job_clear(j);
            return fm_error_set(err, FM_ERR_NOMEM, "%s", fm_error_text(&e));
        }
        if (o->skip) {
            int found = 0, failed = 0;
            char shown[FM_LOG_ESCAPED_MAX];
            if (fm_results_lookup(o->skip, j->id, &found, &failed, &e) != FM_OK)
                fm_log_warn("%s", fm_log_escape(fm_error_text(&e), shown, sizeof shown));
            if (found && !(failed && o->retry_failed)) {
                r->sum->skipped++;
                r->sum->failed += failed;
                job_clear(j);
                continue;
            }
        }
        if (j->why) { /* its error row is on its way: say so once, here */
            char name[SHOWN_MAX];
            progress_note(&r->prog, "facemill: %s: %s\n",
                          fm_log_escape(j->name, name, sizeof name), j->why);
        }
        if (r->n_jobs > 0 && bytes + j->size > limit) {
            /* would push the message over the size limit: first in the next Submit */
            r->held = *j;
            memset(j, 0, sizeof *j);
            r->have_held = 1;
            break;
        }
        r->n_jobs++;
        bytes += j->size;
        if (bytes >= (size_t)o->chunk_bytes)
            break;
    }
    if (r->n_jobs == 0)
        return FM_OK;
    r->request_id++;
    return send_submit(r, err);
}

static void on_ack(run *r, const Facemill__SubmitAck *ack, fm_error *err)
{
    if (!r->outstanding || !ack->has_request_id || ack->request_id != r->request_id)
        return; /* an answer to an earlier copy of a Submit already answered */
    for (size_t i = 0; i < ack->n_jobs; i++) {
        const Facemill__JobAck *a = ack->jobs[i];
        const char *id = a->job_id ? a->job_id : "";
        switch (a->has_state ? a->state : FACEMILL__JOB_ACK__STATE__ACCEPTED) {
        case FACEMILL__JOB_ACK__STATE__ACCEPTED:
            r->accepted++; /* new to the broker: once per id */
            /* fall through */
        case FACEMILL__JOB_ACK__STATE__DUPLICATE: {
            int added = set_add(&r->pending, id);
            if (added < 0)
                fm_error_set(err, FM_ERR_NOMEM, "out of memory");
            else if (added && r->tag_open >= 0)
                r->tag_open++; /* open, as far as the last status reply can tell */
            break;
        }
        case FACEMILL__JOB_ACK__STATE__COMMITTED:
            r->sum->skipped++; /* stored by an earlier run: whether it failed, the */
            r->stored_answers++; /* tag's status says (the ack does not) */
            break;
        case FACEMILL__JOB_ACK__STATE__REJECTED:
        default: {
            char shown[FM_LOG_ESCAPED_MAX];
            r->sum->failed++;
            r->sum->rejected++;
            char shown_id[FM_LOG_ESCAPED_MAX];
            progress_note(&r->prog, "facemill: job %s rejected: %s\n",
                          fm_log_escape(id, shown_id, sizeof shown_id),
                          fm_log_escape(a->reason ? a->reason : "no reason given", shown,
                                        sizeof shown));
            break;
        }
        }
    }
    clear_jobs(r);
}

static void on_commit(run *r, const Facemill__Commit *c)
{
    for (size_t i = 0; i < c->n_entries; i++) {
        const Facemill__CommitEntry *ce = c->entries[i];
        if (ce->job_id && set_remove(&r->pending, ce->job_id)) {
            r->sum->committed++;
            if (ce->has_failed && ce->failed)
                r->sum->failed++;
        }
    }
}

static void on_status(run *r, const Facemill__StatusReply *s)
{
    if (!s->has_request_id || s->request_id != r->status_id || !s->has_tag_total)
        return;
    if (s->tag_total < r->most_total || (int64_t)s->tag_total < r->accepted) {
        /* Fewer jobs of the tag than it counted before, or than it took from this
         * run: its journal was replaced or recovered in part, and the jobs missing
         * will never be committed. */
        r->broker_total = s->tag_total;
        r->lost = 1;
        return;
    }
    r->most_total = s->tag_total;
    /* The broker answers in the order it takes requests: the jobs of every ack that
     * came before this reply are in its counts. */
    uint64_t left = s->tag_total > s->tag_committed ? s->tag_total - s->tag_committed : 0;
    r->tag_open = (int64_t)left;
    if (r->inputs_done && !r->outstanding && r->pending.n == 0) {
        /* the failures among the jobs stored before (answered COMMITTED) */
        if (s->has_tag_failed && (int64_t)s->tag_failed > r->sum->failed - r->sum->rejected)
            r->sum->failed = (int64_t)s->tag_failed + r->sum->rejected;
        r->final_status = 1;
    }
    if (r->inputs_done && !r->outstanding && s->tag_committed >= s->tag_total) {
        /* Every job of the tag is committed: those whose notice never reached us too. */
        r->sum->committed += (int64_t)r->pending.n;
        if (s->has_tag_failed && (int64_t)s->tag_failed > r->sum->failed - r->sum->rejected)
            r->sum->failed = (int64_t)s->tag_failed + r->sum->rejected;
        set_free(&r->pending);
        r->complete_by_status = 1;
    }
}

static fm_status send_status_request(void *sock, const char *tag, uint64_t id, fm_error *err)
{
    Facemill__StatusRequest q = FACEMILL__STATUS_REQUEST__INIT;
    q.tag = (char *)tag;
    q.has_request_id = 1;
    q.request_id = id;
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_STATUS_REQUEST;
    env.status_request = &q;
    fm_status st = fm_wire_send(sock, NULL, &env, ZMQ_DONTWAIT, err);
    return st == FM_ERR_TIMEOUT ? FM_OK : st;
}

/* Handles one message from the broker. */
static fm_status on_message(run *r, Facemill__Envelope *env, fm_error *err)
{
    switch (env->body_case) {
    case FACEMILL__ENVELOPE__BODY_SUBMIT_ACK:
        on_ack(r, env->submit_ack, err);
        return err && err->code == FM_ERR_NOMEM ? FM_ERR_NOMEM : FM_OK;
    case FACEMILL__ENVELOPE__BODY_SLOW_DOWN: {
        const Facemill__SlowDown *s = env->slow_down;
        if (r->outstanding && s->has_request_id && s->request_id == r->request_id) {
            int64_t wait = s->has_retry_after_ms ? s->retry_after_ms : 500;
            r->resend_at_ms = fm_now_ms() + wait;
            r->sum->slow_downs++;
            fm_log_debug("broker queue full (%llu/%llu): waiting %lld ms",
                         (unsigned long long)s->queue_depth, (unsigned long long)s->max_queue,
                         (long long)wait);
        }
        return FM_OK;
    }
    case FACEMILL__ENVELOPE__BODY_COMMIT:
        on_commit(r, env->commit);
        return FM_OK;
    case FACEMILL__ENVELOPE__BODY_STATUS_REPLY:
        on_status(r, env->status_reply);
        return FM_OK;
    case FACEMILL__ENVELOPE__BODY_ERROR: {
        const Facemill__Error *e = env->error;
        /* The peer's text is escaped: it ends up on the user's terminal. */
        char shown[FM_LOG_ESCAPED_MAX];
        fm_log_escape(e->text ? e->text : "", shown, sizeof shown);
        if (e->has_code && e->code == FACEMILL__ERROR_CODE__ERROR_VERSION)
            return fm_error_set(err, FM_ERR_PROTOCOL, "broker refused us: %s",
                                e->text ? shown : "protocol version");
        /* A Submit over the broker's per-Submit caps: sending it again would be
         * refused again, and the jobs are not ours to drop. */
        if (e->has_code && e->code == FACEMILL__ERROR_CODE__ERROR_LIMIT && r->outstanding)
            return fm_error_set(err, FM_ERR_LIMIT, "broker refused a Submit: %s",
                                e->text ? shown : "too large");
        fm_log_warn("broker error %u: %s", e->code, shown);
        return FM_OK;
    }
    default:
        fm_log_debug("ignoring %s from the broker", fm_wire_body_name(env));
        return FM_OK;
    }
}

void fm_client_opts_from_config(fm_client_opts *o, const fm_config *c)
{
    memset(o, 0, sizeof *o);
    o->endpoint = c->broker.clients;
    o->chunk = c->client.chunk;
    o->chunk_bytes = c->client.chunk_bytes;
    o->retry_ms = c->client.retry_ms;
    o->progress_ms = c->client.progress_ms;
    o->max_msg_size = c->net.max_msg_size;
}

static void *open_dealer(void *ctx, const char *endpoint, const fm_auth *auth,
                         int64_t max_msg_size, fm_error *err)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    if (!s) {
        fm_error_set(err, FM_ERR_IO, "socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    if (fm_wire_setup(s, max_msg_size, 0, err) != FM_OK ||
        fm_auth_client(auth, s, FM_AUTH_TO_BROKER, err) != FM_OK)
        goto fail;
    if (zmq_connect(s, endpoint) != 0) {
        fm_error_set(err, FM_ERR_IO, "cannot connect to %s: %s", endpoint,
                     zmq_strerror(zmq_errno()));
        goto fail;
    }
    return s;
fail:
    zmq_close(s);
    return NULL;
}

/* Drops the items whose path an earlier item has, spelt alike but for "./" and "//"
 * (an INPUT given twice, a file given besides its folder, a path listed twice on
 * stdin): such a name is one image and one row, and a repeat would be counted as an
 * image and never answered. Another name of the file (absolute, through a link) is
 * another row, as a rerun would give it. Keeps the first of each, in order;
 * *repeated counts the images dropped (an archive's members). */
/* path spelt plainly into key (size bytes): "//" as "/", no "." component, no
 * trailing "/" ("./a//b/./c" is "a/b/c"): the spellings of one name the walk and a
 * command line give. ".." stays (a link may make "a/.." no "."). */
static void plain_path(const char *path, char *key, size_t size)
{
    size_t n = 0;
    const char *p = path;
    if (*p == '/' && n + 1 < size)
        key[n++] = '/';
    while (*p) {
        while (*p == '/')
            p++;
        size_t len = strcspn(p, "/");
        if (len == 0)
            break;
        if (!(len == 1 && p[0] == '.')) {
            if (n > 0 && key[n - 1] != '/' && n + 1 < size)
                key[n++] = '/';
            for (size_t k = 0; k < len && n + 1 < size; k++)
                key[n++] = p[k];
        }
        p += len;
    }
    if (n == 0 && size > 1)
        key[n++] = '.';
    key[n < size ? n : size - 1] = '\0';
}

static fm_status drop_repeats(item_list *items, int64_t *repeated, fm_error *err)
{
    id_set seen = {0};
    size_t kept = 0;
    fm_status st = FM_OK;
    char key[PATH_MAX + 8];
    for (size_t i = 0; i < items->n; i++) {
        item *it = &items->v[i];
        plain_path(it->path, key, sizeof key);
        int added = st == FM_OK ? set_add(&seen, key) : 1;
        if (added < 0)
            st = fm_error_set(err, FM_ERR_NOMEM, "out of memory listing inputs");
        if (added == 0) {
            *repeated += it->archive ? it->members : 1;
            free(it->path);
            free(it->why);
            continue;
        }
        items->v[kept++] = *it;
    }
    items->n = kept;
    set_free(&seen);
    return st;
}

fm_status fm_client_submit(const fm_client_opts *o, char *const *inputs, int n,
                           fm_client_summary *sum, fm_error *err)
{
    fm_status st = FM_OK;
    item_list items = {0};
    void *own_ctx = NULL, *ctx = o->zctx;
    run r;
    memset(&r, 0, sizeof r);
    memset(sum, 0, sizeof *sum);
    r.o = o;
    r.sum = sum;
    if (!o->endpoint || !o->tag || o->chunk < 1 || o->max_msg_size <= ENVELOPE_SLACK)
        return fm_error_set(err, FM_ERR_INVALID, "fm_client_submit: bad options");

    scan sc = {&items, o->all_files, 0, o->skip_db, {0}, {0}, 0};
    if (o->skip_db && stat(o->skip_db, &sc.db_st) == 0) {
        char dir[PATH_MAX];
        const char *slash = strrchr(o->skip_db, '/');
        int len = !slash ? 0 : slash == o->skip_db ? 1 : (int)(slash - o->skip_db);
        if (!slash)
            snprintf(dir, sizeof dir, ".");
        else
            snprintf(dir, sizeof dir, "%.*s", len, o->skip_db);
        sc.have_db_st = stat(dir, &sc.db_dir_st) == 0;
    }
    for (int i = 0; i < n; i++)
        if ((st = add_input(&sc, inputs[i], 0, err)) != FM_OK)
            goto done;
    sum->folders_skipped = sc.folders_skipped;
    r.rd.links = &sum->archive_links;
    r.rd.repeated = &sum->repeated;
    if ((st = drop_repeats(&items, &sum->repeated, err)) != FM_OK)
        goto done;
    for (size_t i = 0; i < items.n; i++)
        sum->total += items.v[i].archive ? items.v[i].members : 1;

    r.rd.items = &items;
    r.rd.tag = o->tag;
    r.rd.by_path = o->by_path;
    r.rd.all_files = o->all_files;
    r.rd.max_bytes = (size_t)o->max_msg_size - ENVELOPE_SLACK;
    if (!(r.jobs = calloc((size_t)o->chunk, sizeof *r.jobs))) {
        st = fm_error_set(err, FM_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (!ctx && !(ctx = own_ctx = zmq_ctx_new())) {
        st = fm_error_set(err, FM_ERR_IO, "cannot create a ZeroMQ context");
        goto done;
    }
    if (!(r.sock = open_dealer(ctx, o->endpoint, o->auth, o->max_msg_size, err))) {
        st = err ? err->code : FM_ERR_IO;
        goto done;
    }
    r.watch = fm_auth_watch(ctx, r.sock);

    r.prog.out = o->progress_out ? o->progress_out : stderr;
    r.prog.mode = o->progress;
    if (r.prog.mode == FM_PROGRESS_AUTO)
        r.prog.mode = isatty(fileno(r.prog.out)) ? FM_PROGRESS_BAR : FM_PROGRESS_LINES;
    r.prog.interval_ms = r.prog.mode == FM_PROGRESS_BAR ? 200 : o->progress_ms;
    r.prog.start_ms = r.prog.last_ms = fm_now_ms();
    r.next_status_ms = fm_now_ms() + 1000;
    r.tag_open = -1;

    for (;;) {
        if (o->stop && *o->stop) {
            st = fm_error_set(err, FM_ERR_INTERRUPTED, "interrupted");
            goto done;
        }
        char refused[FM_ERROR_MSG_MAX];
        if (fm_auth_watch_failed(r.watch, "the broker", refused, sizeof refused)) {
            /* a refused key is refused again on every try: no use waiting */
            st = fm_error_set(err, FM_ERR_IO, "%s", refused);
            goto done;
        }
        if (!r.outstanding && (!r.inputs_done || r.have_held) &&
            (st = next_submit(&r, err)) != FM_OK)
            goto done;
        int64_t now = fm_now_ms();
        if (r.inputs_done && !r.have_held && !r.outstanding && r.pending.n == 0) {
            if (!r.stored_answers || r.final_status)
                break;
            if (r.next_status_ms > now + 200) /* ask now how those stored ones ended */
                r.next_status_ms = now;
        }
        if (r.outstanding && now >= r.resend_at_ms) {
            if (now - r.sent_ms < o->retry_ms) {
                /* sent again after a SlowDown's wait: an answer came */
            } else if (!sum->broker_heard && !r.silent_said) {
                /* nothing ever came back: most likely no broker there, said once */
                char shown[FM_LOG_ESCAPED_MAX];
                fm_log_warn("no answer from the broker at %s: is facemill-broker running "
                            "there, and reachable from here? Trying again until it "
                            "answers (Ctrl-C stops; the jobs stay unsent)",
                            fm_log_escape(o->endpoint, shown, sizeof shown));
                r.silent_said = 1;
            } else {
                fm_log_info("no answer to submit %llu from the broker: sending it again",
                            (unsigned long long)r.request_id);
            }
            if ((st = send_submit(&r, err)) != FM_OK)
                goto done;
        }
        if (now >= r.next_status_ms) {
            /* Every second once all is submitted (to finish without lost notices) or
             * while notices are missing (the progress counts on the replies), every
             * five seconds before. */
            r.status_id++;
            if ((st = send_status_request(r.sock, o->tag, r.status_id, err)) != FM_OK)
                goto done;
            int often = (r.inputs_done && !r.outstanding) || unnoticed(&r) > 0;
            r.next_status_ms = now + (often ? 1000 : 5000);
        }
        zmq_pollitem_t it = {r.sock, 0, ZMQ_POLLIN, 0};
        int pr = zmq_poll(&it, 1, 100);
        if (pr < 0 && zmq_errno() != EINTR) {
            st = fm_error_set(err, FM_ERR_IO, "poll: %s", zmq_strerror(zmq_errno()));
            goto done;
        }
        for (int k = 0; pr > 0 && k < 1000; k++) {
            Facemill__Envelope *env = NULL;
            fm_error e = {0};
            fm_status rs = fm_wire_recv(r.sock, NULL, &env, ZMQ_DONTWAIT, &e);
            if (rs == FM_ERR_TIMEOUT || rs == FM_ERR_INTERRUPTED)
                break;
            if (rs == FM_ERR_VERSION) {
                st = fm_error_set(err, FM_ERR_PROTOCOL, "broker %s: %s", o->endpoint, e.msg);
                goto done;
            }
            if (rs != FM_OK) {
                char shown[FM_LOG_ESCAPED_MAX];
                fm_log_warn("from the broker: %s",
                            fm_log_escape(fm_error_text(&e), shown, sizeof shown));
                continue;
            }
            sum->broker_heard = 1;
            st = on_message(&r, env, err);
            fm_wire_free(&env);
            if (st != FM_OK)
                goto done;
        }
        if (r.lost) {
            char shown[FM_LOG_ESCAPED_MAX];
            st = fm_error_set(err, FM_ERR_IO,
                              "the broker now holds %llu job%s of tag %s, fewer than "
                              "it had: its journal was replaced or recovered in part, "
                              "and the jobs it lost will not be labelled; submit the same "
                              "inputs again with --tag %s (what is stored is answered at "
                              "once)",
                              (unsigned long long)r.broker_total,
                              r.broker_total == 1 ? "" : "s",
                              fm_log_escape(o->tag, shown, sizeof shown), shown);
            goto done;
        }
        if (o->tick && o->tick(o->tick_arg, err)) {
            st = err ? (err->code ? err->code : FM_ERR_INTERNAL) : FM_ERR_INTERNAL;
            goto done;
        }
        progress_show(&r.prog, sum, unnoticed(&r), fm_now_ms(), 0);
    }
done:
    /* A run that stops early counts what the broker committed without a notice too
     * (a run that ended has none left waiting). */
    sum->committed += unnoticed(&r);
    if (r.sock) {
        progress_show(&r.prog, sum, 0, fm_now_ms(), 1);
        fm_auth_watch_close(r.sock, r.watch);
        zmq_close(r.sock);
    }
    if (r.jobs) {
        clear_jobs(&r);
        free(r.jobs);
    }
    job_clear(&r.held);
    if (r.rd.ar)
        archive_read_free(r.rd.ar);
    free(r.rd.ar_last);
    set_free(&r.rd.ar_names);
    set_free(&r.pending);
    items_free(&items);
    if (own_ctx)
        zmq_ctx_term(own_ctx);
    return st;
}

/* ---- status ------------------------------------------------------------------------- */

static void print_status(FILE *out, const Facemill__StatusReply *s)
{
    fprintf(out, "queue:      %llu waiting (bound %llu), %llu at workers, %llu awaiting commit\n",
            (unsigned long long)s->queued, (unsigned long long)s->max_queue,
            (unsigned long long)s->in_flight, (unsigned long long)s->awaiting_commit);
    fprintf(out, "committed:  %llu (%llu quarantined as failed)\n",
            (unsigned long long)s->committed, (unsigned long long)s->quarantined);
    fprintf(out, "rate:       %.1f images/s (last minute)\n", s->jobs_per_s);
    fprintf(out, "workers:    %u, credit %u (%u free)\n", s->workers, s->credit_total,
            s->credit_free);
    /* Names and tags come from peers (an older broker did not check them): escaped,
     * so none can move the cursor or forge a line on the reader's terminal. */
    char shown[FM_LOG_ESCAPED_MAX];
    for (size_t i = 0; i < s->n_worker; i++) {
        const Facemill__WorkerInfo *w = s->worker[i];
        fprintf(out, "  %-32s credit %u busy %u, heard %llu ms ago\n",
                fm_log_escape(w->name ? w->name : "?", shown, sizeof shown), w->credit,
                w->busy, (unsigned long long)w->last_seen_ms);
    }
    if (s->has_tag_total)
        fprintf(out, "tag %s:  %llu jobs, %llu committed, %llu failed\n",
                fm_log_escape(s->tag ? s->tag : "", shown, sizeof shown),
                (unsigned long long)s->tag_total,
                (unsigned long long)s->tag_committed, (unsigned long long)s->tag_failed);
    if (s->journal_disk_full)
        fprintf(out, "disk full:  the broker's journal (broker.journal): submits wait, "
                "commits are kept in memory until space returns\n");
    const char *why = ": is facemill-sink running, and does its sink.commits reach this "
                      "broker? nothing is stored meanwhile";
    if (s->has_sink_silent && s->has_sink_last_seen_ms) /* an older broker says neither */
        fprintf(out, "sink:       heard %.1f s ago%s\n", (double)s->sink_last_seen_ms / 1000.0,
                s->sink_silent ? why : "");
    else if (s->has_sink_silent)
        fprintf(out, "sink:       not heard since the broker started%s\n",
                s->sink_silent ? why : "");
    if (s->sink_disk_full)
        fprintf(out, "disk full:  the sink's results database (sink.db): results are "
                "stored again once space returns\n");
    fprintf(out, "uptime:     %.1f s\n", (double)s->uptime_ms / 1000.0);
}

fm_status fm_client_status(const char *endpoint, const fm_auth *auth, const char *tag,
                           int64_t timeout_ms, int64_t max_msg_size, FILE *out,
                           fm_error *err)
{
    return fm_client_status_as(endpoint, auth, tag, timeout_ms, max_msg_size, FM_STATUS_TEXT,
                               out, err);
}

fm_status fm_client_status_as(const char *endpoint, const fm_auth *auth, const char *tag,
                              int64_t timeout_ms, int64_t max_msg_size,
                              fm_status_format format, FILE *out, fm_error *err)
{
    fm_status st = FM_OK;
    void *ctx = zmq_ctx_new(), *watch = NULL;
    if (!ctx)
        return fm_error_set(err, FM_ERR_IO, "cannot create a ZeroMQ context");
    void *sock = open_dealer(ctx, endpoint, auth, max_msg_size, err);
    if (!sock) {
        st = err ? err->code : FM_ERR_IO;
        goto done;
    }
    watch = fm_auth_watch(ctx, sock);
    int64_t deadline = fm_now_ms() + timeout_ms, next_send = 0;
    for (;;) {
        int64_t now = fm_now_ms();
        char refused[FM_ERROR_MSG_MAX];
        if (fm_auth_watch_failed(watch, "the broker", refused, sizeof refused)) {
            st = fm_error_set(err, FM_ERR_IO, "%s", refused);
            goto done;
        }
        if (now >= deadline) {
            /* A broker with CurveZMQ keys drops a client without them in the
             * handshake: nothing comes back, so say where to look. */
            st = fm_error_set(err, FM_ERR_TIMEOUT, "no status reply from %s within %lld ms%s",
                              endpoint, (long long)timeout_ms,
                              fm_auth_curve(auth) ? ""
                                                  : " (a broker with CurveZMQ keys answers only "
                                                    "clients with theirs: security.cert, "
                                                    "security.broker_key)");
            goto done;
        }
        if (now >= next_send) {
            if ((st = send_status_request(sock, tag, 1, err)) != FM_OK)
                goto done;
            next_send = now + 1000;
        }
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        Facemill__Envelope *env = NULL;
        fm_error e = {0};
        fm_status rs = fm_wire_recv(sock, NULL, &env, ZMQ_DONTWAIT, &e);
        if (rs == FM_ERR_VERSION) {
            st = fm_error_set(err, FM_ERR_PROTOCOL, "broker %s: %s", endpoint, e.msg);
            goto done;
        }
        if (rs != FM_OK)
            continue;
        if (env->body_case == FACEMILL__ENVELOPE__BODY_STATUS_REPLY) {
            if (format == FM_STATUS_PROMETHEUS)
                fm_status_metrics_write(out, env->status_reply);
            else
                print_status(out, env->status_reply);
            fm_wire_free(&env);
            break;
        }
        fm_wire_free(&env);
    }
done:
    fm_auth_watch_close(sock, watch);
    if (sock)
        zmq_close(sock);
    zmq_ctx_term(ctx);
    return st;
}
