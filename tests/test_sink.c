/* test_sink.c - the results database and the sink service.
 *
 * Database: inserts, duplicates stored once, look-ups, counts, JSONL and CSV export
 * text, read-only reopen, a foreign database refused; staging: a forged result staged
 * before the real one never becomes the row. Service: a sink thread fed by a test
 * PUSH socket over ipc:// (each of 1,500 job ids sent twice, its real result and a
 * forged one, the forged one first for every other job; plus garbage, a message of
 * another protocol version, a result without a dispatch token and one with more
 * faces than max_faces), talking to a test ROUTER standing in for the broker, which
 * confirms the real tokens and refuses the forged ones: every job is reported stored
 * with its real token, each only after its row is readable from another connection;
 * every forged result is refused or met the stored row; a staged result the broker
 * leaves unanswered is asked about again; the database holds exactly one row per job,
 * none from a forged result, and nothing stays staged. The test waits for those
 * reports, with a deadline, never for a fixed time.
 */
#include "facemill/clock.h"
#include "facemill/sink.h"
#include "facemill/wire.h"
#include "fm_test.h"

#include <sqlite3.h>
#include <zmq.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static char tmpdir[256];

/* ---- building results ------------------------------------------------------------ */

typedef struct face_buf {
    Facemill__Face face;
    float box[4], lm[10], g[2], r[5];
} face_buf;

static void make_face(face_buf *fb, float base, int attributes)
{
    facemill__face__init(&fb->face);
    for (int i = 0; i < 4; i++)
        fb->box[i] = base + (float)i;
    for (int i = 0; i < 10; i++)
        fb->lm[i] = base + 0.5f * (float)i;
    fb->face.n_box = 4;
    fb->face.box = fb->box;
    fb->face.n_landmarks = 10;
    fb->face.landmarks = fb->lm;
    fb->face.has_score = 1;
    fb->face.score = 0.875f;
    if (attributes) {
        fb->g[0] = 0.25f;
        fb->g[1] = 0.75f;
        float r[5] = {0.1f, 0.1f, 0.6f, 0.1f, 0.1f};
        memcpy(fb->r, r, sizeof r);
        fb->face.has_age = fb->face.has_age_std = 1;
        fb->face.age = 31.5f;
        fb->face.age_std = 4.25f;
        fb->face.n_gender_probs = 2;
        fb->face.gender_probs = fb->g;
        fb->face.n_race_probs = 5;
        fb->face.race_probs = fb->r;
    }
}

/* ---- the database ------------------------------------------------------------------ */

static void test_database(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/db.sqlite", tmpdir);
    fm_results *r = NULL;
    fm_error e = {0};
    CHECK(fm_results_open(&r, path, 0, &e) == FM_OK);
    if (!r)
        return;

    face_buf f1, f2;
    make_face(&f1, 10, 1);
    make_face(&f2, 100, 0);
    Facemill__Face *faces[2] = {&f1.face, &f2.face};
    uint8_t sha[32];
    for (int i = 0; i < 32; i++)
        sha[i] = (uint8_t)i;
    Facemill__StageTimes times = FACEMILL__STAGE_TIMES__INIT;
    times.has_total_ms = 1;
    times.total_ms = 12.5f;
    times.has_read_ms = 1;
    times.read_ms = 2.5f;

    Facemill__Result ok = FACEMILL__RESULT__INIT;
    ok.job_id = "job-b";
    ok.tag = "t";
    ok.source = "b, \"quoted\".jpg";
    ok.has_width = ok.has_height = 1;
    ok.width = 640;
    ok.height = 480;
    ok.has_sha256 = 1;
    ok.sha256.len = 32;
    ok.sha256.data = sha;
    ok.n_faces = 2;
    ok.faces = faces;
    ok.model = "m1";
    ok.times = &times;

    Facemill__Result bad = FACEMILL__RESULT__INIT;
    bad.job_id = "job-a";
    bad.source = "a.png";
    bad.has_error_code = 1;
    bad.error_code = FACEMILL__ERROR_CODE__ERROR_UNSUPPORTED;
    bad.error_text = "not a JPEG (PNG)";

    Facemill__Result none = FACEMILL__RESULT__INIT;
    none.job_id = "job-c";
    none.source = "c.jpg";
    none.has_width = none.has_height = 1;
    none.width = none.height = 8;

    Facemill__Result noid = FACEMILL__RESULT__INIT;

    int ins = -1, failed = -1;
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &ok, 1000, &ins, &failed, &e) == FM_OK && ins == 1 && failed == 0);
    CHECK(fm_results_put(r, &bad, 1000, &ins, &failed, &e) == FM_OK && ins == 1 && failed == 1);
    CHECK(fm_results_put(r, &none, 1000, &ins, &failed, &e) == FM_OK && ins == 1);
    CHECK(fm_results_put(r, &noid, 1000, &ins, &failed, &e) == FM_ERR_INVALID);
    CHECK(fm_results_commit(r, &e) == FM_OK);

    /* A duplicate of a labelled row changes nothing and reports the stored row's
     * outcome (a failed row is replaced: test_retried_failure). */
    Facemill__Result dup = ok;
    dup.has_error_code = 1;
    dup.error_code = FACEMILL__ERROR_CODE__ERROR_DECODE;
    dup.error_text = "a worker's second, failed attempt";
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &dup, 2000, &ins, &failed, &e) == FM_OK && ins == 0 && failed == 0);
    CHECK(fm_results_commit(r, &e) == FM_OK);

    /* A rolled-back insert leaves no trace. */
    Facemill__Result gone = none;
    gone.job_id = "job-rolled-back";
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &gone, 3000, &ins, NULL, &e) == FM_OK && ins == 1);
    fm_results_rollback(r);

    int found = -1;
    CHECK(fm_results_lookup(r, "job-b", &found, &failed, &e) == FM_OK && found == 1 &&
          failed == 0);
    CHECK(fm_results_lookup(r, "job-rolled-back", &found, NULL, &e) == FM_OK && found == 0);
    int64_t n_img = 0, n_face = 0, n_fail = 0;
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK);
    CHECK(n_img == 3 && n_face == 2 && n_fail == 1);

    FILE *f = tmpfile();
    CHECK(fm_results_export(r, f, FM_EXPORT_JSONL, 0, &e) == FM_OK);
    char *text = fm_test_read_back(f, NULL);
    fclose(f);
    /* The result schema (proto/RESULTS.md), keys in its order. */
    const char *want =
        "{\"schema\":2,\"source\":\"a.png\",\"width\":null,\"height\":null,\"error\":"
        "{\"code\":2,\"name\":\"unsupported\",\"text\":\"not a JPEG (PNG)\"},"
        "\"job_id\":\"job-a\",\"sha256\":null,\"model\":null,\"faces\":[]}\n"
        "{\"schema\":2,\"source\":\"b, \\\"quoted\\\".jpg\",\"width\":640,\"height\":480,"
        "\"error\":null,\"job_id\":\"job-b\",\"sha256\":"
        "\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\",\"model\":\"m1\","
        "\"faces\":[{\"box\":{\"x1\":10,\"y1\":11,\"x2\":12,\"y2\":13},\"score\":0.875,"
        "\"landmarks\":{\"left_eye\":{\"x\":10,\"y\":10.5},\"right_eye\":{\"x\":11,\"y\":11.5},"
        "\"nose\":{\"x\":12,\"y\":12.5},\"mouth_left\":{\"x\":13,\"y\":13.5},"
        "\"mouth_right\":{\"x\":14,\"y\":14.5}},\"age\":31.5,\"age_std\":4.25,"
        "\"gender\":\"female\",\"gender_probs\":{\"male\":0.25,\"female\":0.75},"
        "\"race\":\"Asian\",\"race_probs\":{\"White\":0.1,\"Black\":0.1,\"Asian\":0.6,"
        "\"Indian\":0.1,\"Others\":0.1}},"
        "{\"box\":{\"x1\":100,\"y1\":101,\"x2\":102,\"y2\":103},\"score\":0.875,"
        "\"landmarks\":{\"left_eye\":{\"x\":100,\"y\":100.5},\"right_eye\":{\"x\":101,"
        "\"y\":101.5},\"nose\":{\"x\":102,\"y\":102.5},\"mouth_left\":{\"x\":103,"
        "\"y\":103.5},\"mouth_right\":{\"x\":104,\"y\":104.5}}}]}\n"
        "{\"schema\":2,\"source\":\"c.jpg\",\"width\":8,\"height\":8,\"error\":null,"
        "\"job_id\":\"job-c\",\"sha256\":null,\"model\":null,\"faces\":[]}\n";
    CHECK_MSG(text && strcmp(text, want) == 0, "JSONL export:\n%s", text ? text : "(null)");
    free(text);

    f = tmpfile();
    CHECK(fm_results_export(r, f, FM_EXPORT_CSV, 0, &e) == FM_OK);
    text = fm_test_read_back(f, NULL);
    fclose(f);
    CHECK(text && strncmp(text, "schema,source,width,height,error.code,error.name,error.text,"
                                "job_id,sha256,model,face,box.x1,", 92) == 0);
    int lines = 0;
    for (const char *p = text; p && *p; p++)
        lines += *p == '\n';
    CHECK_MSG(lines == 5, "CSV lines %d:\n%s", lines, text ? text : "");
    CHECK(text && strstr(text, "\n2,a.png,,,2,unsupported,not a JPEG (PNG),job-a,,,,,,"));
    CHECK(text && strstr(text, "\n2,\"b, \"\"quoted\"\".jpg\",640,480,,,,job-b,0001"));
    CHECK(text && strstr(text, "\n2,c.jpg,8,8,,,,job-c,,,,"));
    CHECK(text && strstr(text, ",1,100,101,102,103,0.875,"));
    CHECK(text && strstr(text, ",31.5,4.25,female,0.25,0.75,Asian,0.1,0.1,0.6,0.1,0.1\n"));
    free(text);

    f = tmpfile();
    CHECK(fm_results_export(r, f, FM_EXPORT_JSONL, FM_EXPORT_TIMES, &e) == FM_OK);
    text = fm_test_read_back(f, NULL);
    fclose(f);
    /* Only the stages that ran: read here; the total is their sum, not a stage. */
    CHECK_MSG(text && strstr(text, "\"times_ms\":{\"read\":2.5}"), "%s", text ? text : "");
    free(text);
    fm_results_close(&r);
    CHECK(r == NULL);
    fm_results_close(&r); /* NULL is fine */

    /* Read-only reopen sees the same rows; writes are refused. */
    CHECK(fm_results_open(&r, path, FM_RESULTS_READONLY, &e) == FM_OK);
    if (r) {
        CHECK(fm_results_count(r, &n_img, NULL, NULL, &e) == FM_OK && n_img == 3);
        CHECK(fm_results_begin(r, &e) != FM_OK || fm_results_put(r, &gone, 1, NULL, NULL, &e) != FM_OK);
        fm_results_close(&r);
    }

    /* Another SQLite database is not a results database; a newer schema is refused. */
    char other[512];
    snprintf(other, sizeof other, "%s/other.sqlite", tmpdir);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(other, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "CREATE TABLE x(y)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    CHECK(fm_results_open(&r, other, FM_RESULTS_READONLY, &e) == FM_ERR_FORMAT && !r);
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "UPDATE meta SET value = '2' WHERE key = 'schema_version'", NULL,
                       NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    e.msg[0] = '\0';
    CHECK(fm_results_open(&r, path, 0, &e) == FM_ERR_VERSION && !r);
    CHECK_MSG(strstr(e.msg, "schema version 2"), "%s", e.msg);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/no/such/dir/db", tmpdir);
    CHECK(fm_results_open(&r, missing, 0, &e) == FM_ERR_IO && !r);
}

/* ---- staging --------------------------------------------------------------------- */

static int count_staged(void *arg, const char *job_id, const char *tag, const void *token,
                        size_t token_len, int failed)
{
    (void)job_id, (void)tag, (void)token, (void)failed;
    CHECK(token_len == 16);
    (*(int *)arg)++;
    return 0;
}

/* A result staged under a forged token first and the real one after: only the one
 * confirmed becomes the row, whatever the order; the rest is dropped. */
static void test_staging(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/staging.sqlite", tmpdir);
    fm_results *r = NULL;
    fm_error e = {0};
    CHECK(fm_results_open(&r, path, 0, &e) == FM_OK);
    if (!r)
        return;
    uint8_t real[16] = "real-token-0001", forged[16] = "forged-token-01";
    Facemill__Result fake = FACEMILL__RESULT__INIT, good = FACEMILL__RESULT__INIT;
    fake.job_id = good.job_id = "job-s";
    fake.source = "forged.jpg";
    fake.has_token = good.has_token = 1;
    fake.token.data = forged;
    good.token.data = real;
    fake.token.len = good.token.len = 16;
    good.source = "real.jpg";
    good.has_error_code = 1;
    good.error_code = FACEMILL__ERROR_CODE__ERROR_DECODE;
    good.error_text = "corrupt JPEG";
    Facemill__Result untokened = good;
    untokened.has_token = 0;
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_stage(r, &fake, 10, &e) == FM_OK);
    CHECK(fm_results_stage(r, &good, 20, &e) == FM_OK);
    CHECK(fm_results_stage(r, &good, 30, &e) == FM_OK); /* the same twice: one row */
    CHECK(fm_results_stage(r, &untokened, 30, &e) == FM_ERR_INVALID);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    int n = 0, found = -1;
    CHECK(fm_results_each_staged(r, 100, 10, count_staged, &n, &e) == FM_OK && n == 2);
    n = 0;
    CHECK(fm_results_each_staged(r, 15, 10, count_staged, &n, &e) == FM_OK && n == 1);
    CHECK(fm_results_lookup(r, "job-s", &found, NULL, &e) == FM_OK && found == 0);
    /* A token nothing was staged under: nothing stored. */
    int stored = -1, inserted = -1, failed = -1;
    uint8_t other[16] = "some-other-toke";
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_confirm(r, "job-s", other, 16, 40, &stored, &inserted, &failed, &e) ==
              FM_OK && stored == 0 && inserted == 0);
    /* The real one confirmed: it is the row, and nothing stays staged. */
    CHECK(fm_results_confirm(r, "job-s", real, 16, 50, &stored, &inserted, &failed, &e) ==
              FM_OK && stored == 1 && inserted == 1 && failed == 1);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    n = 0;
    CHECK(fm_results_each_staged(r, 1000, 10, count_staged, &n, &e) == FM_OK && n == 0);
    /* A late confirmation of the forged token changes nothing. */
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_confirm(r, "job-s", forged, 16, 60, &stored, &inserted, &failed, &e) ==
              FM_OK && stored == 1 && inserted == 0 && failed == 1);
    CHECK(fm_results_stage(r, &fake, 70, &e) == FM_OK);
    CHECK(fm_results_unstage(r, "job-s", forged, 16, &e) == FM_OK);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    n = 0;
    CHECK(fm_results_each_staged(r, 1000, 10, count_staged, &n, &e) == FM_OK && n == 0);
    FILE *f = tmpfile();
    CHECK(fm_results_export(r, f, FM_EXPORT_JSONL, 0, &e) == FM_OK);
    char *text = fm_test_read_back(f, NULL);
    fclose(f);
    CHECK_MSG(text && strstr(text, "\"source\":\"real.jpg\"") && !strstr(text, "forged"),
              "%s", text ? text : "");
    free(text);
    fm_results_close(&r);
}

/* ---- the service --------------------------------------------------------------------- */

#define N_JOBS 1500

typedef struct sink_thread {
    fm_sink *sink;
    volatile sig_atomic_t stop;
    fm_status rc;
} sink_thread;

static void *run_sink(void *arg)
{
    sink_thread *t = arg;
    fm_error e = {0};
    t->rc = fm_sink_run(t->sink, &t->stop, &e);
    if (t->rc != FM_OK)
        fprintf(stderr, "sink: %s\n", fm_error_text(&e));
    return NULL;
}

/* The token of job i's real result ('A') or of a forged one ('B'). */
static void token_of(uint8_t out[16], char kind, int i)
{
    char buf[17];
    snprintf(buf, sizeof buf, "%c%015d", kind, i);
    memcpy(out, buf, 16);
}

/* Sends job_id's result with n_faces faces; kind 'A' (the real one), 'B' (a forged one,
 * source "forged") or 0 (no token). */
static void send_result(void *push, const char *job_id, int n_faces, char kind, int i)
{
    face_buf fb[4];
    Facemill__Face *faces[4];
    for (int k = 0; k < n_faces; k++) {
        make_face(&fb[k], (float)(10 * k), k % 2 == 0);
        faces[k] = &fb[k].face;
    }
    uint8_t token[16];
    Facemill__Result res = FACEMILL__RESULT__INIT;
    res.job_id = (char *)job_id;
    res.tag = "svc";
    res.source = kind == 'B' ? "forged" : (char *)job_id;
    res.n_faces = (size_t)n_faces;
    res.faces = faces;
    if (kind) {
        token_of(token, kind, i);
        res.has_token = 1;
        res.token.data = token;
        res.token.len = sizeof token;
    }
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_RESULT;
    env.result = &res;
    fm_error e = {0};
    CHECK(fm_wire_send(push, NULL, &env, 0, &e) == FM_OK);
}

/* What the stand-in broker saw. */
typedef struct broker_view {
    unsigned char staged[N_JOBS], stored[N_JOBS], forged_done[N_JOBS];
    int stored_jobs;      /* jobs reported stored with their real token */
    int forged_settled;   /* forged results refused or reported as duplicates */
    int not_durable;      /* stored reports whose row another connection cannot read */
    int bad;              /* entries naming no job of ours, or no token */
    int heartbeats;
    int asked_again;      /* job 1 staged reports: the first one is left unanswered */
} broker_view;

/* The stand-in broker's verdict on a staged entry: the real token confirmed, a forged
 * one refused; the first report of job 1 (its real result, which comes first) gets no
 * answer: the sink must ask again. */
static void judge(broker_view *v, const Facemill__CommitEntry *ce, int i,
                  Facemill__CommitEntry *conf, size_t *nc, Facemill__CommitEntry *ref,
                  size_t *nr)
{
    uint8_t real[16];
    token_of(real, 'A', i);
    if (i == 1 && v->asked_again++ == 0)
        return;
    Facemill__CommitEntry *out =
        memcmp(ce->token.data, real, 16) == 0 ? &conf[(*nc)++] : &ref[(*nr)++];
    facemill__commit_entry__init(out);
    out->job_id = ce->job_id;
    out->has_token = 1;
    out->token = ce->token;
    if (out == &ref[*nr - 1] && !v->forged_done[i] && (*nr)) {
        v->forged_done[i] = 1;
        v->forged_settled++;
    }
}

/* Reads one Commit of the sink: answers staged entries, checks stored ones. */
static void on_sink_commit(broker_view *v, void *router, const fm_wire_peer *from,
                           const Facemill__Commit *c, sqlite3_stmt *q)
{
    Facemill__CommitEntry conf[600], ref[600], *confp[600], *refp[600];
    size_t nc = 0, nr = 0;
    for (size_t k = 0; k < c->n_entries && k < 600; k++) {
        const Facemill__CommitEntry *ce = c->entries[k];
        int i = -1;
        if (!ce->job_id || sscanf(ce->job_id, "job-%d", &i) != 1 || i < 0 || i >= N_JOBS ||
            !ce->has_token || ce->token.len != 16 || !ce->has_stored) {
            v->bad++;
            continue;
        }
        if (!ce->stored) {
            v->staged[i] = 1;
            judge(v, ce, i, conf, &nc, ref, &nr);
            continue;
        }
        uint8_t real[16];
        token_of(real, 'A', i);
        if (memcmp(ce->token.data, real, 16) != 0) { /* a forged copy met the stored row */
            if (!v->forged_done[i]) {
                v->forged_done[i] = 1;
                v->forged_settled++;
            }
            continue;
        }
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, ce->job_id, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(q) != SQLITE_ROW || sqlite3_column_int(q, 0) != 1)
            v->not_durable++;
        if (!v->stored[i]) {
            v->stored[i] = 1;
            v->stored_jobs++;
        }
    }
    if (nc + nr == 0)
        return;
    for (size_t k = 0; k < nc; k++)
        confp[k] = &conf[k];
    for (size_t k = 0; k < nr; k++)
        refp[k] = &ref[k];
    Facemill__CommitReply r = FACEMILL__COMMIT_REPLY__INIT;
    r.n_confirmed = nc;
    r.confirmed = confp;
    r.n_refused = nr;
    r.refused = refp;
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_COMMIT_REPLY;
    env.commit_reply = &r;
    fm_error e = {0};
    CHECK(fm_wire_send(router, from, &env, 0, &e) == FM_OK);
}

static void test_service(void)
{
    char db_path[512], results[512], commits[512];
    snprintf(db_path, sizeof db_path, "%s/svc.sqlite", tmpdir);
    snprintf(results, sizeof results, "ipc://%s/results", tmpdir);
    snprintf(commits, sizeof commits, "ipc://%s/commits", tmpdir);
    void *ctx = zmq_ctx_new();
    fm_error e = {0};

    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    CHECK(fm_wire_setup(router, 1 << 20, 0, &e) == FM_OK);
    CHECK(zmq_bind(router, commits) == 0);

    sink_thread t = {0};
    fm_sink_opts o = {.db_path = db_path, .results = results, .commits = commits,
                      .batch = 64, .batch_ms = 50, .heartbeat_ms = 100,
                      .max_msg_size = 1 << 20, .name = "test-sink", .max_faces = 2};
    CHECK(fm_sink_open(&t.sink, ctx, &o, &e) == FM_OK);
    if (!t.sink) {
        fprintf(stderr, "%s\n", fm_error_text(&e));
        zmq_close(router);
        zmq_ctx_term(ctx);
        return;
    }

    pthread_t th;
    CHECK(pthread_create(&th, NULL, run_sink, &t) == 0);

    void *push = zmq_socket(ctx, ZMQ_PUSH);
    CHECK(fm_wire_setup(push, 0, 5000, &e) == FM_OK);
    CHECK(zmq_connect(push, results) == 0);

    /* Garbage, a multi-frame message, another major version, a result without a
     * token and one with more faces than max_faces: dropped, logged. */
    CHECK(zmq_send(push, "garbage!", 8, 0) == 8);
    CHECK(zmq_send(push, "a", 1, ZMQ_SNDMORE) == 1 && zmq_send(push, "b", 1, 0) == 1);
    {
        Facemill__Result res = FACEMILL__RESULT__INIT;
        res.job_id = "from-the-future";
        Facemill__Envelope env;
        fm_wire_envelope_init(&env);
        env.version_major = FM_PROTOCOL_MAJOR + 1;
        env.body_case = FACEMILL__ENVELOPE__BODY_RESULT;
        env.result = &res;
        CHECK(fm_wire_send(push, NULL, &env, 0, &e) == FM_OK);
    }
    send_result(push, "job-untokened", 0, 0, 0);
    send_result(push, "job-too-many", 3, 'A', 0);
    /* Every job's real result and a forged one, the forged one first for every other
     * job, the pairs interleaved with later jobs. */
    char id[64];
    for (int i = 0; i < N_JOBS; i++) {
        snprintf(id, sizeof id, "job-%05d", i);
        send_result(push, id, i % 3, i % 2 ? 'A' : 'B', i);
        if (i >= 10) {
            snprintf(id, sizeof id, "job-%05d", i - 10);
            send_result(push, id, (i - 10) % 3, (i - 10) % 2 ? 'B' : 'A', i - 10);
        }
    }
    for (int i = N_JOBS - 10; i < N_JOBS; i++) {
        snprintf(id, sizeof id, "job-%05d", i);
        send_result(push, id, i % 3, i % 2 ? 'B' : 'A', i);
    }

    /* The broker's side: confirm the real tokens, refuse the forged ones; every
     * stored report must name a job whose row is already durable. */
    sqlite3 *reader = NULL;
    CHECK(sqlite3_open_v2(db_path, &reader, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    sqlite3_busy_timeout(reader, 5000);
    sqlite3_stmt *q = NULL;
    CHECK(sqlite3_prepare_v2(reader, "SELECT count(*) FROM images WHERE job_id = ?", -1, &q,
                             NULL) == SQLITE_OK);
    static broker_view v;
    int64_t deadline = (int64_t)fm_now_ms() + 60000;
    while ((v.stored_jobs < N_JOBS || v.forged_settled < N_JOBS || v.heartbeats == 0) &&
           (int64_t)fm_now_ms() < deadline) {
        fm_wire_peer from;
        Facemill__Envelope *env = NULL;
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 200) <= 0)
            continue;
        if (fm_wire_recv(router, &from, &env, ZMQ_DONTWAIT, &e) != FM_OK)
            continue;
        if (env->body_case == FACEMILL__ENVELOPE__BODY_HEARTBEAT) {
            v.heartbeats++;
            CHECK(env->heartbeat->name && strcmp(env->heartbeat->name, "test-sink") == 0);
        } else if (env->body_case == FACEMILL__ENVELOPE__BODY_COMMIT) {
            on_sink_commit(&v, router, &from, env->commit, q);
        }
        fm_wire_free(&env);
    }
    sqlite3_finalize(q);
    CHECK_MSG(v.stored_jobs == N_JOBS, "%d of %d jobs stored", v.stored_jobs, N_JOBS);
    CHECK_MSG(v.forged_settled == N_JOBS, "%d of %d forged results settled",
              v.forged_settled, N_JOBS);
    CHECK_MSG(v.asked_again >= 3, "job 1's staged results asked about %d times",
              v.asked_again);
    CHECK(v.not_durable == 0);
    CHECK(v.bad == 0);
    CHECK(v.heartbeats > 0);

    /* Every result has been settled and reported: stop. */
    t.stop = 1;
    pthread_join(th, NULL);
    CHECK(t.rc == FM_OK);
    fm_sink_stats st;
    fm_sink_get_stats(t.sink, &st);
    CHECK_MSG(st.stored == N_JOBS, "stored %lld", (long long)st.stored);
    CHECK_MSG(st.duplicates + st.refused == N_JOBS, "duplicates %lld + refused %lld",
              (long long)st.duplicates, (long long)st.refused);
    CHECK_MSG(st.dropped == 5, "dropped %lld", (long long)st.dropped);
    CHECK(st.received == 2 * N_JOBS + 2);
    CHECK(st.commits >= (N_JOBS * 2) / 64);
    fm_sink_close(&t.sink);
    CHECK(t.sink == NULL);
    fm_sink_close(&t.sink);

    sqlite3_stmt *c = NULL;
    CHECK(sqlite3_prepare_v2(reader,
                             "SELECT count(*), count(DISTINCT job_id), (SELECT count(*) FROM "
                             "faces), (SELECT sum(n_faces) FROM images), (SELECT count(*) "
                             "FROM images WHERE source != job_id), (SELECT count(*) FROM "
                             "staged) FROM images",
                             -1, &c, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(c) == SQLITE_ROW);
    CHECK(sqlite3_column_int(c, 0) == N_JOBS && sqlite3_column_int(c, 1) == N_JOBS);
    CHECK(sqlite3_column_int(c, 2) == N_JOBS && sqlite3_column_int(c, 3) == N_JOBS);
    CHECK_MSG(sqlite3_column_int(c, 4) == 0, "%d rows from forged results",
              sqlite3_column_int(c, 4));
    CHECK_MSG(sqlite3_column_int(c, 5) == 0, "%d results still staged",
              sqlite3_column_int(c, 5));
    sqlite3_finalize(c);
    CHECK(sqlite3_prepare_v2(reader, "PRAGMA journal_mode", -1, &c, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(c) == SQLITE_ROW &&
          strcmp((const char *)sqlite3_column_text(c, 0), "wal") == 0);
    sqlite3_finalize(c);
    sqlite3_close(reader);

    zmq_close(push);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

/* A file whose content changed between runs is a new job with the same source: its
 * row replaces the old content's (faces included) within the run's tag, in the
 * transaction that stores it; other tags' rows of that source stay, and a duplicate
 * of the new job replaces nothing. An error row of bytes that do not decode replaces
 * too; a failure that says nothing of the image (unreadable, timed out) never
 * replaces labels. */
static void test_replaced_content(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/replace.sqlite", tmpdir);
    fm_results *r = NULL;
    fm_error e = {0};
    CHECK(fm_results_open(&r, path, 0, &e) == FM_OK);
    if (!r)
        return;
    face_buf f1, f2;
    make_face(&f1, 10, 1);
    make_face(&f2, 100, 0);
    Facemill__Face *faces[2] = {&f1.face, &f2.face};
    Facemill__Result old = FACEMILL__RESULT__INIT;
    old.job_id = "label-old-content";
    old.tag = "label";
    old.source = "photos/a.jpg";
    old.has_width = old.has_height = 1;
    old.width = old.height = 64;
    old.n_faces = 2;
    old.faces = faces;
    Facemill__Result other_run = old; /* the same name in another run (tag) */
    other_run.job_id = "submit-run-2";
    other_run.tag = "submit-host-2";
    Facemill__Result other_file = old;
    other_file.job_id = "label-b";
    other_file.source = "photos/b.jpg";
    Facemill__Result now = old; /* a.jpg rewritten: one face now */
    now.job_id = "label-new-content";
    now.n_faces = 1;
    int ins = -1;
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &old, 1, &ins, NULL, &e) == FM_OK && ins == 1);
    CHECK(fm_results_put(r, &other_run, 1, &ins, NULL, &e) == FM_OK && ins == 1);
    CHECK(fm_results_put(r, &other_file, 1, &ins, NULL, &e) == FM_OK && ins == 1);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    int64_t n_img = 0, n_face = 0, n_fail = 0;
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK && n_img == 3 &&
          n_face == 6);
    /* rolled back: the old row is still there */
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &now, 2, &ins, NULL, &e) == FM_OK && ins == 1);
    fm_results_rollback(r);
    int found = -1;
    CHECK(fm_results_lookup(r, "label-old-content", &found, NULL, &e) == FM_OK && found == 1);
    /* committed: replaced */
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &now, 3, &ins, NULL, &e) == FM_OK && ins == 1);
    CHECK(fm_results_put(r, &now, 4, &ins, NULL, &e) == FM_OK && ins == 0);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    CHECK(fm_results_lookup(r, "label-old-content", &found, NULL, &e) == FM_OK && found == 0);
    CHECK(fm_results_lookup(r, "label-new-content", &found, NULL, &e) == FM_OK && found == 1);
    CHECK(fm_results_lookup(r, "submit-run-2", &found, NULL, &e) == FM_OK && found == 1);
    CHECK(fm_results_lookup(r, "label-b", &found, NULL, &e) == FM_OK && found == 1);
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK);
    CHECK_MSG(n_img == 3 && n_face == 5, "after the replacement: %lld images, %lld faces "
              "(3, 5: the old content's two faces gone with its row)", (long long)n_img,
              (long long)n_face);
    /* an error result replaces too: the file is now what it is (cut short, say) */
    Facemill__Result cut = now;
    cut.job_id = "label-cut-short";
    cut.n_faces = 0;
    cut.faces = NULL;
    cut.has_error_code = 1;
    cut.error_code = FACEMILL__ERROR_CODE__ERROR_DECODE;
    cut.error_text = "corrupt JPEG: Premature end of JPEG file";
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &cut, 5, &ins, NULL, &e) == FM_OK && ins == 1);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK && n_img == 3 &&
          n_face == 4 && n_fail == 1);
    /* but a failure that says nothing of the image never replaces labels: b.jpg
     * unreadable on a rerun (a new job id: its bytes were never read), or timed out */
    Facemill__Result gone = other_file;
    gone.job_id = "label-b-unreadable";
    gone.n_faces = 0;
    gone.faces = NULL;
    gone.has_error_code = 1;
    gone.error_code = FACEMILL__ERROR_CODE__ERROR_IO;
    gone.error_text = "cannot open: No such file or directory";
    Facemill__Result slow = gone;
    slow.job_id = "label-b-timeout";
    slow.error_code = FACEMILL__ERROR_CODE__ERROR_TIMEOUT;
    int fl = -1;
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &gone, 6, &ins, &fl, &e) == FM_OK && ins == 0 && fl == 1);
    CHECK(fm_results_put(r, &slow, 6, &ins, &fl, &e) == FM_OK && ins == 0 && fl == 1);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    CHECK(fm_results_lookup(r, "label-b", &found, NULL, &e) == FM_OK && found == 1);
    CHECK(fm_results_lookup(r, "label-b-unreadable", &found, NULL, &e) == FM_OK &&
          found == 0);
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK);
    CHECK_MSG(n_img == 3 && n_face == 4 && n_fail == 1, "an unreadable rerun keeps b.jpg's "
              "labels: %lld images, %lld faces, %lld failed (3, 4, 1)", (long long)n_img,
              (long long)n_face, (long long)n_fail);
    /* where the name's row is itself a failure, the new failure replaces it */
    Facemill__Result cut_gone = gone;
    cut_gone.source = now.source;
    cut_gone.job_id = "label-a-unreadable";
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &cut_gone, 7, &ins, &fl, &e) == FM_OK && ins == 1 && fl == 1);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    CHECK(fm_results_lookup(r, "label-cut-short", &found, NULL, &e) == FM_OK && found == 0);
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK && n_img == 3 &&
          n_fail == 1);
    fm_results_close(&r);
}

/* A failed row is never final: a result for the same job (the job tried again)
 * replaces it, a failure with a failure's newer text, a success with its faces, through
 * fm_results_put and through a confirmed staged result alike; a labelled row is never
 * replaced by anything. */
static void test_retried_failure(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/retry.sqlite", tmpdir);
    fm_results *r = NULL;
    fm_error e = {0};
    CHECK(fm_results_open(&r, path, 0, &e) == FM_OK);
    if (!r)
        return;
    face_buf f1;
    make_face(&f1, 10, 1);
    Facemill__Face *faces[1] = {&f1.face};
    Facemill__Result timeout = FACEMILL__RESULT__INIT;
    timeout.job_id = "job-1";
    timeout.tag = "label";
    timeout.source = "nfs/a.jpg";
    timeout.has_error_code = 1;
    timeout.error_code = FACEMILL__ERROR_CODE__ERROR_IO;
    timeout.error_text = "nfs/a.jpg: Input/output error";
    Facemill__Result again = timeout;
    again.error_text = "nfs/a.jpg: Stale file handle";
    Facemill__Result ok = FACEMILL__RESULT__INIT;
    ok.job_id = "job-1";
    ok.tag = "label";
    ok.source = "nfs/a.jpg";
    ok.has_width = ok.has_height = 1;
    ok.width = ok.height = 64;
    ok.n_faces = 1;
    ok.faces = faces;
    int ins = -1, failed = -1;
    int64_t n_img = 0, n_face = 0, n_fail = 0;
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &timeout, 1, &ins, &failed, &e) == FM_OK && ins == 1 &&
          failed == 1);
    CHECK(fm_results_put(r, &again, 2, &ins, &failed, &e) == FM_OK && ins == 1 && failed == 1);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    sqlite3_stmt *q = NULL;
    sqlite3_prepare_v2(fm_results_db(r), "SELECT error_text FROM images WHERE job_id = 'job-1'",
                       -1, &q, NULL);
    CHECK(q && sqlite3_step(q) == SQLITE_ROW &&
          strcmp((const char *)sqlite3_column_text(q, 0), again.error_text) == 0);
    sqlite3_finalize(q);
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &ok, 3, &ins, &failed, &e) == FM_OK && ins == 1 && failed == 0);
    CHECK(fm_results_put(r, &timeout, 4, &ins, &failed, &e) == FM_OK && ins == 0 &&
          failed == 0);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK && n_img == 1 &&
          n_face == 1 && n_fail == 0);
    /* through the staging: a failed row, then a staged success confirmed */
    Facemill__Result b_fail = timeout, b_ok = ok;
    b_fail.job_id = b_ok.job_id = "job-2";
    b_fail.source = b_ok.source = "nfs/b.jpg";
    uint8_t token[16] = {7};
    b_ok.has_token = 1;
    b_ok.token.len = sizeof token;
    b_ok.token.data = token;
    int stored = -1;
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &b_fail, 5, &ins, &failed, &e) == FM_OK && ins == 1);
    CHECK(fm_results_stage(r, &b_ok, 6, &e) == FM_OK);
    CHECK(fm_results_confirm(r, "job-2", token, sizeof token, 7, &stored, &ins, &failed, &e) ==
              FM_OK &&
          stored == 1 && ins == 1 && failed == 0);
    /* a token with nothing staged under it: the (labelled) row stands */
    uint8_t other[16] = {9};
    CHECK(fm_results_confirm(r, "job-2", other, sizeof other, 8, &stored, &ins, &failed, &e) ==
              FM_OK &&
          stored == 1 && ins == 0 && failed == 0);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    CHECK(fm_results_count(r, &n_img, &n_face, &n_fail, &e) == FM_OK && n_img == 2 &&
          n_face == 2 && n_fail == 0);
    /* a failed row and a confirmation with nothing staged: the row stands, stored */
    Facemill__Result c_fail = timeout;
    c_fail.job_id = "job-3";
    c_fail.source = "nfs/c.jpg";
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &c_fail, 9, &ins, &failed, &e) == FM_OK && ins == 1);
    CHECK(fm_results_confirm(r, "job-3", other, sizeof other, 10, &stored, &ins, &failed, &e) ==
              FM_OK &&
          stored == 1 && ins == 0 && failed == 1);
    CHECK(fm_results_commit(r, &e) == FM_OK);
    fm_results_close(&r);
}

int main(void)
{
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "sink") != 0)
        return 1;
    test_retried_failure();
    test_database();
    test_replaced_content();
    test_staging();
    test_service();
    fm_test_remove_tree(tmpdir);
    return fm_test_done("test_sink");
}
