/* test_result_json.c - the result schema's writer (result_json.h, proto/RESULTS.md):
 *  - its error codes are the protocol's ErrorCode values, with their names, and
 *    statuses map onto them as a worker maps them;
 *  - an image object, a face with and without attributes, a failed image, byte for
 *    byte; a source-prefixed error text loses the prefix; unknown sizes are null;
 *  - the CSV header names the flattened JSON fields and rows carry the same text;
 *  - `facemill export` (fm_results_export) of results put into a database prints
 *    exactly what the writer prints for the same faces: one writer, one form;
 *  - abstention (heads.gender_min_prob, heads.race_min_prob): the class is null in
 *    JSON, empty in CSV, NULL in the database, with its probabilities kept. */
#include "fm_test.h"

#include "facemill/result_json.h"
#include "facemill/sink.h"
#include "facemill/wire.h"

#include <stdlib.h>
#include <string.h>

/* What the writes in fn(j, ctx) printed (caller frees). */
static char *written(void (*fn)(fm_json *j, FILE *f, const void *ctx), const void *ctx)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fm_json j;
    fm_json_init(&j, f);
    fn(&j, f, ctx);
    fclose(f);
    return buf;
}

/* The same number, whatever the enum types. */
#define SAME(a, b) CHECK((int)(a) == (int)(b))

static void test_codes(void)
{
    SAME(FM_RESULT_ERROR_NONE, FACEMILL__ERROR_CODE__ERROR_NONE);
    SAME(FM_RESULT_ERROR_DECODE, FACEMILL__ERROR_CODE__ERROR_DECODE);
    SAME(FM_RESULT_ERROR_UNSUPPORTED, FACEMILL__ERROR_CODE__ERROR_UNSUPPORTED);
    SAME(FM_RESULT_ERROR_LIMIT, FACEMILL__ERROR_CODE__ERROR_LIMIT);
    SAME(FM_RESULT_ERROR_IO, FACEMILL__ERROR_CODE__ERROR_IO);
    SAME(FM_RESULT_ERROR_INVALID, FACEMILL__ERROR_CODE__ERROR_INVALID);
    SAME(FM_RESULT_ERROR_INTERNAL, FACEMILL__ERROR_CODE__ERROR_INTERNAL);
    SAME(FM_RESULT_ERROR_QUARANTINED, FACEMILL__ERROR_CODE__ERROR_QUARANTINED);
    SAME(FM_RESULT_ERROR_TIMEOUT, FACEMILL__ERROR_CODE__ERROR_TIMEOUT);
    SAME(FM_RESULT_ERROR_VERSION, FACEMILL__ERROR_CODE__ERROR_VERSION);
    SAME(FM_RESULT_ERROR_MALFORMED, FACEMILL__ERROR_CODE__ERROR_MALFORMED);
    SAME(FM_RESULT_ERROR_UNKNOWN_PEER, FACEMILL__ERROR_CODE__ERROR_UNKNOWN_PEER);
    /* every enum value of the protocol has its lower-case name */
    const ProtobufCEnumDescriptor *d = &facemill__error_code__descriptor;
    for (unsigned i = 0; i < d->n_values; i++) {
        char want[64];
        const char *name = d->values[i].name; /* ERROR_DECODE */
        size_t k = 0;
        for (const char *p = name + 6; *p && k + 1 < sizeof want; p++)
            want[k++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        want[k] = '\0';
        CHECK_MSG(strcmp(fm_result_error_name((uint32_t)d->values[i].value), want) == 0,
                  "%s: %s", name, fm_result_error_name((uint32_t)d->values[i].value));
    }
    CHECK(strcmp(fm_result_error_name(99), "error") == 0);
    CHECK(strcmp(fm_results_error_name(FM_RESULT_ERROR_DECODE), "decode") == 0);
    CHECK(fm_result_error_code(FM_OK) == FM_RESULT_ERROR_NONE);
    CHECK(fm_result_error_code(FM_ERR_DECODE) == FM_RESULT_ERROR_DECODE);
    CHECK(fm_result_error_code(FM_ERR_FORMAT) == FM_RESULT_ERROR_DECODE);
    CHECK(fm_result_error_code(FM_ERR_UNSUPPORTED) == FM_RESULT_ERROR_UNSUPPORTED);
    CHECK(fm_result_error_code(FM_ERR_LIMIT) == FM_RESULT_ERROR_LIMIT);
    CHECK(fm_result_error_code(FM_ERR_IO) == FM_RESULT_ERROR_IO);
    CHECK(fm_result_error_code(FM_ERR_NOT_FOUND) == FM_RESULT_ERROR_IO);
    CHECK(fm_result_error_code(FM_ERR_INVALID) == FM_RESULT_ERROR_INVALID);
    CHECK(fm_result_error_code(FM_ERR_NOMEM) == FM_RESULT_ERROR_INTERNAL);
    CHECK(fm_result_error_code(FM_ERR_INTERNAL) == FM_RESULT_ERROR_INTERNAL);
}

/* A face with everything, awkward numbers included (0.1f is 0.100000001 at %.9g
 * but reads back from "0.1"; 100 + 1/3 needs 9 digits, 200 + 1/3 only 8). */
static fm_result_face full_face(float off)
{
    fm_result_face f = {0};
    f.has = FM_RESULT_HAS_DETECTION | FM_RESULT_HAS_ATTRS;
    for (int k = 0; k < 4; k++)
        f.box[k] = off + 10 * (float)k + 0.5f;
    f.score = 0.99999887f;
    for (int k = 0; k < 10; k++)
        f.landmarks[k] = off + (float)k / 3;
    f.age = 26.434431f;
    f.age_std = 4.25f;
    f.gender_probs[0] = 0.1f;
    f.gender_probs[1] = 0.9f;
    const float race[5] = {0.2f, 0.2f, 0.0014619207f, 0.5985381f, 1e-5f};
    memcpy(f.race_probs, race, sizeof race);
    return f;
}

static void write_images(fm_json *j, FILE *f, const void *ctx)
{
    (void)f;
    (void)ctx;
    fm_result_image ok = {"a, \"b\".jpg", 640, 480, FM_RESULT_ERROR_NONE, NULL};
    fm_result_json_begin(j, &ok);
    static const char *const stages[3] = {"decode", "detect", "heads"};
    const double ms[3] = {1.5, NAN, 0.25};
    fm_result_json_times(j, stages, ms, 3);
    fm_result_json_faces(j);
    fm_result_face a = full_face(100), b = full_face(200);
    b.has = FM_RESULT_HAS_DETECTION;
    fm_result_json_face(j, &a);
    fm_result_json_face(j, &b);
    fm_result_json_end(j);
    fm_json_newline(j);
    fm_result_image bad = {"dir/x.jpg", -1, -1, FM_RESULT_ERROR_DECODE,
                           "dir/x.jpg: corrupt JPEG: Premature end of JPEG file"};
    fm_result_json_begin(j, &bad);
    fm_result_json_faces(j);
    fm_result_json_end(j);
    fm_json_newline(j);
    fm_result_image other = {NULL, 8, 8, 77, NULL};
    fm_result_json_begin(j, &other);
    fm_result_json_faces(j);
    fm_result_json_end(j);
    fm_json_newline(j);
}

#define FACE_A                                                                          \
    "{\"box\":{\"x1\":100.5,\"y1\":110.5,\"x2\":120.5,\"y2\":130.5},\"score\":0.99999887," \
    "\"landmarks\":{\"left_eye\":{\"x\":100,\"y\":100.333336},\"right_eye\":{\"x\":"     \
    "100.666664,\"y\":101},\"nose\":{\"x\":101.333336,\"y\":101.666664},\"mouth_left\":" \
    "{\"x\":102,\"y\":102.333336},\"mouth_right\":{\"x\":102.666664,\"y\":103}}"
#define ATTRS_A                                                                         \
    ",\"age\":26.434431,\"age_std\":4.25,\"gender\":\"female\",\"gender_probs\":"          \
    "{\"male\":0.1,\"female\":0.9},\"race\":\"Indian\",\"race_probs\":{\"White\":0.2,"      \
    "\"Black\":0.2,\"Asian\":0.0014619207,\"Indian\":0.5985381,\"Others\":1e-05}}"

static void test_json_form(void)
{
    char *text = written(write_images, NULL);
    const char *want =
        "{\"schema\":2,\"source\":\"a, \\\"b\\\".jpg\",\"width\":640,\"height\":480,"
        "\"error\":null,\"times_ms\":{\"decode\":1.5,\"heads\":0.25},\"faces\":["
        FACE_A ATTRS_A ","
        "{\"box\":{\"x1\":200.5,\"y1\":210.5,\"x2\":220.5,\"y2\":230.5},\"score\":0.99999887,"
        "\"landmarks\":{\"left_eye\":{\"x\":200,\"y\":200.33333},\"right_eye\":{\"x\":"
        "200.66667,\"y\":201},\"nose\":{\"x\":201.33333,\"y\":201.66667},\"mouth_left\":"
        "{\"x\":202,\"y\":202.33333},\"mouth_right\":{\"x\":202.66667,\"y\":203}}}]}\n"
        "{\"schema\":2,\"source\":\"dir/x.jpg\",\"width\":null,\"height\":null,\"error\":"
        "{\"code\":1,\"name\":\"decode\",\"text\":\"corrupt JPEG: Premature end of JPEG "
        "file\"},\"faces\":[]}\n"
        "{\"schema\":2,\"source\":null,\"width\":8,\"height\":8,\"error\":{\"code\":77,"
        "\"name\":\"error\",\"text\":\"\"},\"faces\":[]}\n";
    CHECK_MSG(text && strcmp(text, want) == 0, "got\n%s\nwant\n%s", text ? text : "", want);
    free(text);
}

static void write_csv(fm_json *j, FILE *f, const void *ctx)
{
    (void)j;
    (void)ctx;
    fm_result_csv_image_header(f);
    fputc(',', f);
    fm_result_csv_face_header(f);
    fputc('\n', f);
    fm_result_image ok = {"a, \"b\".jpg", 640, 480, FM_RESULT_ERROR_NONE, NULL};
    fm_result_face a = full_face(100);
    fm_result_csv_image(f, &ok);
    fputc(',', f);
    fm_result_csv_face(f, 0, &a);
    fputc('\n', f);
    fm_result_image bad = {"x.jpg", -1, -1, FM_RESULT_ERROR_UNSUPPORTED,
                           "x.jpg: unsupported format: PNG, \"really\""};
    fm_result_csv_image(f, &bad);
    fputc(',', f);
    fm_result_csv_face(f, -1, NULL);
    fputc('\n', f);
    /* Text cells a spreadsheet would run as formulas are neutralised; numbers (a
     * negative box corner) are not. */
    fm_result_image formula = {"=HYPERLINK(\"http://x\",\"y\")", 8, 8,
                               FM_RESULT_ERROR_DECODE, "@SUM(A1)"};
    fm_result_face neg = full_face(-50);
    fm_result_csv_image(f, &formula);
    fputc(',', f);
    fm_result_csv_face(f, 0, &neg);
    fputc('\n', f);
    /* the last two: a file name in Latin-1 (0xff) and one cut inside a character,
     * U+FFFD in CSV as in JSON; a valid UTF-8 name as it is */
    static const char *const cells[] = {"+1", "-2", "\tx", "\rx", "a=b", "",
                                        "bad\xffname.jpg", "\xc3\xa9t\xc3\xa9.jpg",
                                        "x\xe2\x82", NULL};
    for (int k = 0; cells[k]; k++) {
        fm_result_csv_text(f, cells[k]);
        fputc('|', f);
    }
    fputc('\n', f);
}

static void test_csv_form(void)
{
    char *text = written(write_csv, NULL);
    const char *want =
        "schema,source,width,height,error.code,error.name,error.text,face,box.x1,box.y1,"
        "box.x2,box.y2,score,landmarks.left_eye.x,landmarks.left_eye.y,"
        "landmarks.right_eye.x,landmarks.right_eye.y,landmarks.nose.x,landmarks.nose.y,"
        "landmarks.mouth_left.x,landmarks.mouth_left.y,landmarks.mouth_right.x,"
        "landmarks.mouth_right.y,age,age_std,gender,gender_probs.male,gender_probs.female,"
        "race,race_probs.White,race_probs.Black,race_probs.Asian,race_probs.Indian,"
        "race_probs.Others\n"
        "2,\"a, \"\"b\"\".jpg\",640,480,,,,0,100.5,110.5,120.5,130.5,0.99999887,100,"
        "100.333336,100.666664,101,101.333336,101.666664,102,102.333336,102.666664,103,"
        "26.434431,4.25,female,0.1,0.9,Indian,0.2,0.2,0.0014619207,0.5985381,1e-05\n"
        "2,x.jpg,,,2,unsupported,\"unsupported format: PNG, \"\"really\"\"\",,,,,,,,,,,,,,,,"
        ",,,,,,,,,,,\n"
        "2,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",8,8,1,decode,'@SUM(A1),0,-49.5,-39.5,"
        "-29.5,-19.5,0.99999887,-50,-49.666668,-49.333332,-49,-48.666668,-48.333332,-48,"
        "-47.666668,-47.333332,-47,26.434431,4.25,female,0.1,0.9,Indian,0.2,0.2,"
        "0.0014619207,0.5985381,1e-05\n"
        "'+1|'-2|'\tx|\"'\rx\"|a=b||bad\xef\xbf\xbdname.jpg|\xc3\xa9t\xc3\xa9.jpg|"
        "x\xef\xbf\xbd\xef\xbf\xbd|\n";
    CHECK_MSG(text && strcmp(text, want) == 0, "got\n%s\nwant\n%s", text ? text : "", want);
    free(text);
}

/* A protocol Face from a schema face (what a worker sends). */
typedef struct pb_face {
    Facemill__Face face;
    float box[4], lm[10], g[2], r[5];
} pb_face;

static void to_pb(pb_face *p, const fm_result_face *f)
{
    facemill__face__init(&p->face);
    memcpy(p->box, f->box, sizeof p->box);
    memcpy(p->lm, f->landmarks, sizeof p->lm);
    memcpy(p->g, f->gender_probs, sizeof p->g);
    memcpy(p->r, f->race_probs, sizeof p->r);
    p->face.n_box = 4;
    p->face.box = p->box;
    p->face.has_score = 1;
    p->face.score = f->score;
    p->face.n_landmarks = 10;
    p->face.landmarks = p->lm;
    if (f->has & FM_RESULT_HAS_ATTRS) {
        p->face.has_age = p->face.has_age_std = 1;
        p->face.age = f->age;
        p->face.age_std = f->age_std;
        p->face.n_gender_probs = 2;
        p->face.gender_probs = p->g;
        p->face.n_race_probs = 5;
        p->face.race_probs = p->r;
        p->face.has_gender_abstained = p->face.has_race_abstained = 1;
        p->face.gender_abstained = (f->has & FM_RESULT_GENDER_ABSTAINED) != 0;
        p->face.race_abstained = (f->has & FM_RESULT_RACE_ABSTAINED) != 0;
    }
}

typedef struct export_case {
    fm_result_face faces[3];
} export_case;

/* What export must print for the database filled in test_export: the writer's image
 * objects with the database's fields. */
static void write_expected(fm_json *j, FILE *f, const void *ctx)
{
    (void)f;
    const export_case *c = ctx;
    fm_result_image a = {"a.jpg", 640, 480, FM_RESULT_ERROR_NONE, NULL};
    fm_result_json_begin(j, &a);
    fm_json_key(j, "job_id");
    fm_json_str(j, "job-a");
    fm_json_key(j, "sha256");
    fm_json_null(j);
    fm_json_key(j, "model");
    fm_json_str(j, "m1");
    fm_result_json_faces(j);
    fm_result_json_face(j, &c->faces[0]);
    fm_result_json_face(j, &c->faces[1]);
    fm_result_json_face(j, &c->faces[2]);
    fm_result_json_end(j);
    fm_json_newline(j);
    fm_result_image b = {"b.jpg", -1, -1, FM_RESULT_ERROR_QUARANTINED, "b.jpg: gave up"};
    fm_result_json_begin(j, &b);
    fm_json_key(j, "job_id");
    fm_json_str(j, "job-b");
    fm_json_key(j, "sha256");
    fm_json_null(j);
    fm_json_key(j, "model");
    fm_json_null(j);
    fm_result_json_faces(j);
    fm_result_json_end(j);
    fm_json_newline(j);
}

static void test_export(void)
{
    char dir[512], path[600];
    if (fm_test_tmpdir(dir, sizeof dir, "result_json") != 0) {
        CHECK_MSG(0, "mkdtemp %s", dir);
        return;
    }
    snprintf(path, sizeof path, "%s/r.db", dir);
    export_case c;
    c.faces[0] = full_face(100);
    c.faces[1] = full_face(200);
    c.faces[1].has = FM_RESULT_HAS_DETECTION; /* no heads */
    c.faces[2] = full_face(300);
    fm_result_face_abstain(&c.faces[2], 0.95, 0.7); /* gender 0.9 < 0.95; race 0.599 */
    CHECK(c.faces[2].has & FM_RESULT_GENDER_ABSTAINED && c.faces[2].has & FM_RESULT_RACE_ABSTAINED);
    pb_face pf[3];
    Facemill__Face *faces[3];
    for (int i = 0; i < 3; i++) {
        to_pb(&pf[i], &c.faces[i]);
        faces[i] = &pf[i].face;
    }
    Facemill__Result a = FACEMILL__RESULT__INIT, b = FACEMILL__RESULT__INIT;
    a.job_id = (char *)"job-a";
    a.source = (char *)"a.jpg";
    a.has_width = a.has_height = 1;
    a.width = 640;
    a.height = 480;
    a.model = (char *)"m1";
    a.n_faces = 3;
    a.faces = faces;
    b.job_id = (char *)"job-b";
    b.source = (char *)"b.jpg";
    b.has_error_code = 1;
    b.error_code = FACEMILL__ERROR_CODE__ERROR_QUARANTINED;
    b.error_text = (char *)"b.jpg: gave up";
    fm_results *r = NULL;
    fm_error e = {0};
    CHECK(fm_results_open(&r, path, 0, &e) == FM_OK);
    if (!r)
        return;
    CHECK(fm_results_begin(r, &e) == FM_OK);
    CHECK(fm_results_put(r, &a, 1, NULL, NULL, &e) == FM_OK);
    CHECK(fm_results_put(r, &b, 1, NULL, NULL, &e) == FM_OK);
    CHECK(fm_results_commit(r, &e) == FM_OK);

    FILE *f = tmpfile();
    CHECK(f && fm_results_export(r, f, FM_EXPORT_JSONL, 0, &e) == FM_OK);
    char *got = f ? fm_test_read_back(f, NULL) : NULL, *want = written(write_expected, &c);
    CHECK_MSG(got && want && strcmp(got, want) == 0, "export\n%s\nwriter\n%s",
              got ? got : "", want ? want : "");
    free(got);
    free(want);
    if (f)
        fclose(f);

    /* CSV: the writer's columns and values, the database's own after the image's */
    f = tmpfile();
    CHECK(f && fm_results_export(r, f, FM_EXPORT_CSV, 0, &e) == FM_OK);
    got = f ? fm_test_read_back(f, NULL) : NULL;
    const char *head = "schema,source,width,height,error.code,error.name,error.text,job_id,"
                       "sha256,model,face,box.x1,";
    CHECK_MSG(got && strncmp(got, head, strlen(head)) == 0, "%s", got ? got : "");
    CHECK_MSG(got && strstr(got, "\n2,a.jpg,640,480,,,,job-a,,m1,0,100.5,110.5,120.5,130.5,"
                                 "0.99999887,100,100.333336,") &&
                  strstr(got, ",26.434431,4.25,female,0.1,0.9,Indian,0.2,0.2,0.0014619207,"
                              "0.5985381,1e-05\n") &&
                  strstr(got, "\n2,a.jpg,640,480,,,,job-a,,m1,1,200.5,") &&
                  strstr(got, ",26.434431,4.25,,0.1,0.9,,0.2,0.2,0.0014619207,"
                              "0.5985381,1e-05\n") &&
                  strstr(got, ",202.66667,203,,,,,,,,,,,\n") &&
                  strstr(got, "\n2,b.jpg,,,7,quarantined,gave up,job-b,,,,,"),
              "%s", got ? got : "");
    free(got);
    if (f)
        fclose(f);

    /* --times: worker, attempt and the stages that ran, named as predict names them */
    f = tmpfile();
    CHECK(f && fm_results_export(r, f, FM_EXPORT_JSONL, FM_EXPORT_TIMES, &e) == FM_OK);
    got = f ? fm_test_read_back(f, NULL) : NULL;
    CHECK_MSG(got && strstr(got, "\"model\":\"m1\",\"worker\":null,\"attempt\":null,"
                                 "\"times_ms\":{},\"faces\":[{"),
              "%s", got ? got : "");
    free(got);
    if (f)
        fclose(f);
    f = tmpfile();
    CHECK(f && fm_results_export(r, f, FM_EXPORT_CSV, FM_EXPORT_TIMES, &e) == FM_OK);
    got = f ? fm_test_read_back(f, NULL) : NULL;
    CHECK_MSG(got && strstr(got, ",race_probs.Others,worker,attempt,times_ms.read,"
                                 "times_ms.decode,times_ms.detect,times_ms.align,"
                                 "times_ms.embed,times_ms.heads\n"),
              "%s", got ? got : "");
    free(got);
    if (f)
        fclose(f);
    fm_results_close(&r);
    fm_test_remove_tree(dir);
}

static void write_abstained(fm_json *j, FILE *f, const void *ctx)
{
    (void)f;
    const fm_result_face *face = ctx;
    fm_result_json_face(j, face);
    fm_json_newline(j);
    fm_result_csv_face(f, 0, face);
    fputc('\n', f);
}

static void test_abstain(void)
{
    const float g[2] = {0.45f, 0.55f}, r[5] = {0.1f, 0.2f, 0.3f, 0.25f, 0.15f};
    CHECK(fm_result_abstains(g, 2, 0.6) == 1 && fm_result_abstains(g, 2, 0.55) == 0);
    CHECK(fm_result_abstains(g, 2, 0) == 0 && fm_result_abstains(r, 5, 0.31) == 1);
    CHECK(fm_result_abstains(r, 5, 0.3) == 0 && fm_result_abstains(r, 5, 1.0) == 1);

    fm_result_face f = full_face(100);
    fm_result_face_abstain(&f, 0, 0);
    CHECK(f.has == (FM_RESULT_HAS_DETECTION | FM_RESULT_HAS_ATTRS)); /* 0: never */
    fm_result_face_abstain(&f, 0.9, 0.6); /* 0.9 is not below 0.9; 0.5985 is below 0.6 */
    CHECK(!(f.has & FM_RESULT_GENDER_ABSTAINED) && (f.has & FM_RESULT_RACE_ABSTAINED));
    char *text = written(write_abstained, &f);
    CHECK_MSG(text && strstr(text, "\"gender\":\"female\",\"gender_probs\":{\"male\":0.1,") &&
                  strstr(text, "\"race\":null,\"race_probs\":{\"White\":0.2,") &&
                  strstr(text, ",female,0.1,0.9,,0.2,0.2,"),
              "%s", text ? text : "");
    free(text);
    fm_result_face d = full_face(100);
    d.has = FM_RESULT_HAS_DETECTION; /* no attributes: nothing to withhold */
    fm_result_face_abstain(&d, 1, 1);
    CHECK(d.has == FM_RESULT_HAS_DETECTION);
}

int main(void)
{
    test_codes();
    test_abstain();
    test_json_form();
    test_csv_form();
    test_export();
    return fm_test_done("test_result_json");
}
