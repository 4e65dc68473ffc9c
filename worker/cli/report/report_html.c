/* report_html.c - the report page itself (report-impl.h): markup, its CSS and the
 * small script of the gallery's filters.
 *
 * Why one file with everything inline: the page is mailed, archived and opened from
 * file:// on machines without network; nothing in it may point elsewhere. Every
 * number a reader (or a test) looks for has an id or a data- attribute: #n-images,
 * #n-faces, ..., each error kind's row, each chart's bars, each face's labels.
 *
 * The script only filters what is in the page: the gallery's faces by predicted
 * gender, ethnicity and age band and by confidence below a threshold. The state lives
 * in the URL's fragment (#gender=female&conf=0.8), so a filtered view can be linked.
 * It marks <body data-ready="1"> when it has run and records any script error in
 * data-js-error, which is what the tests read from the rendered DOM.
 */
#include "report-impl.h"
#include "facemill/text.h"

#include <math.h>
#include <string.h>
#include <time.h>

void rep_html_text(FILE *out, const char *s)
{
    if (!s)
        return;
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        if (i >= FM_REPORT_TEXT_MAX) { /* cut between characters */
            fputs("\xe2\x80\xa6", out); /* an ellipsis */
            return;
        }
        uint32_t cp;
        int k = fm_utf8_next(p + i, len - i, &cp);
        if (k == 0) { /* not UTF-8 (a file name's Latin-1 byte): the page is UTF-8 */
            fputs("\xef\xbf\xbd", out);
            i++;
            continue;
        }
        switch (cp) {
        case '&': fputs("&amp;", out); break;
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '"': fputs("&quot;", out); break;
        case '\'': fputs("&#39;", out); break;
        default:
            if (cp < 0x20 && cp != '\t')
                fputc(' ', out);
            else
                fwrite(p + i, 1, (size_t)k, out);
        }
        i += (size_t)k;
    }
}

void rep_base64(FILE *out, const uint8_t *d, size_t len)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)d[i + 1] << 8;
        if (i + 2 < len)
            v |= d[i + 2];
        q[0] = tab[v >> 18 & 63];
        q[1] = tab[v >> 12 & 63];
        q[2] = i + 1 < len ? tab[v >> 6 & 63] : '=';
        q[3] = i + 2 < len ? tab[v & 63] : '=';
        fwrite(q, 1, 4, out);
    }
}

/* 1234567 -> "1,234,567" */
static const char *grouped(char *buf, size_t size, int64_t v)
{
    char tmp[32];
    int len = snprintf(tmp, sizeof tmp, "%lld", (long long)(v < 0 ? -v : v));
    size_t n = 0;
    if (v < 0 && n + 1 < size)
        buf[n++] = '-';
    for (int i = 0; i < len && n + 2 < size; i++) {
        if (i > 0 && (len - i) % 3 == 0)
            buf[n++] = ',';
        buf[n++] = tmp[i];
    }
    buf[n] = '\0';
    return buf;
}

/* Unix milliseconds as "2024-05-01 12:00:03 UTC"; "" for 0 (unknown). */
static const char *when(char *buf, size_t size, int64_t ms)
{
    buf[0] = '\0';
    if (ms <= 0)
        return buf;
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

/* A duration for people: "42 s", "3 min 05 s", "2 h 04 min", "3 d 02 h". */
static const char *duration(char *buf, size_t size, double s)
{
    long long t = llround(s);
    if (t < 60)
        snprintf(buf, size, "%.3g s", s);
    else if (t < 3600)
        snprintf(buf, size, "%lld min %02lld s", t / 60, t % 60);
    else if (t < 86400)
        snprintf(buf, size, "%lld h %02lld min", t / 3600, t % 3600 / 60);
    else
        snprintf(buf, size, "%lld d %02lld h", t / 86400, t % 86400 / 3600);
    return buf;
}

static const char css[] =
    ":root{--fg:#1d2330;--mute:#5b6475;--line:#dde1e8;--bg:#f6f7f9;--card:#fff;"
    "--acc:#2f6fdf;--bad:#c0392b}"
    "*{box-sizing:border-box}"
    "body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    "color:var(--fg);background:var(--bg)}"
    "header{padding:18px 28px 10px;background:#1d2330;color:#fff}"
    "header h1{margin:0;font-size:22px;font-weight:600}"
    "header p{margin:4px 0 0;color:#b9c1cf;font-size:13px}"
    "nav{padding:8px 28px;background:#262d3c}nav a{color:#cfe0ff;margin-right:18px;"
    "text-decoration:none;font-size:13px}"
    "main{padding:8px 28px 40px;max-width:1500px}"
    "section{margin-top:22px}h2{font-size:18px;margin:0 0 10px;font-weight:600}"
    "h3{font-size:14px;margin:18px 0 8px;font-weight:600;color:var(--mute)}"
    ".cards{display:flex;flex-wrap:wrap;gap:10px}"
    ".card{background:var(--card);border:1px solid var(--line);border-radius:8px;"
    "padding:10px 16px;min-width:130px}"
    ".card .num{font-size:24px;font-weight:650}.card .lab{color:var(--mute);font-size:12px}"
    ".card.bad .num{color:var(--bad)}"
    "table{border-collapse:collapse;background:var(--card);border:1px solid var(--line)}"
    "th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;"
    "vertical-align:top;font-size:13px}th{background:#eef1f5;font-weight:600}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".tables{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}"
    ".mono{font-family:ui-monospace,Menlo,monospace;font-size:12px;word-break:break-all}"
    ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:14px}"
    ".chartbox{background:var(--card);border:1px solid var(--line);border-radius:8px;"
    "padding:8px 10px;margin:0}.chartbox figcaption{font-weight:600;margin-bottom:4px}"
    ".chartbox .miss{color:var(--mute);font-size:12px}"
    "svg.chart{width:100%;max-width:600px;height:auto;font-size:10px}"
    "svg .bar{fill:var(--acc)}svg .bar:hover{fill:#174aa6}svg .grid{stroke:#e7eaf0}"
    "svg .axis{stroke:#8a93a3}svg .ytick{text-anchor:end;fill:var(--mute)}"
    "svg .xtick{text-anchor:middle;fill:var(--mute)}svg .unit{fill:var(--mute)}"
    "svg .name{text-anchor:end;font-size:12px}svg .pct{font-size:12px;fill:var(--mute)}"
    "svg .track{fill:#eef1f5}svg .c0{fill:#2f6fdf}svg .c1{fill:#d9534f}"
    "svg .c2{fill:#3c9d5d}svg .c3{fill:#e0a030}svg .c4{fill:#8e5cc4}"
    "#filters{position:sticky;top:0;z-index:2;background:var(--bg);padding:8px 0;"
    "display:flex;flex-wrap:wrap;gap:14px;align-items:center;border-bottom:1px solid "
    "var(--line)}#filters label{font-size:13px;color:var(--mute)}"
    "#filters select,#filters input{margin-left:4px}"
    "table.grid td{padding:4px;min-width:110px}table.grid th.row{white-space:nowrap}"
    ".strip{display:flex;flex-wrap:wrap;gap:6px}"
    "figure.face{display:inline-block;margin:2px;width:calc(var(--px) + 8px);"
    "background:var(--card);border:1px solid var(--line);border-radius:6px;padding:3px;"
    "vertical-align:top}"
    "figure.face img,figure.face .ph{display:block;width:var(--px);height:var(--px);"
    "border-radius:4px}"
    "figure.face .ph{background:repeating-linear-gradient(45deg,#eceff4,#eceff4 6px,"
    "#e2e6ed 6px,#e2e6ed 12px);color:var(--mute);font-size:10px;padding:6px;"
    "overflow:hidden;text-align:center}"
    "figure.face .ph b{display:block;color:var(--bad);font-size:11px;margin:14px 0 4px}"
    "figure.face figcaption{font-size:10.5px;line-height:1.3;margin-top:3px;"
    "overflow:hidden}figure.face figcaption b{font-size:11.5px}"
    "figure.face .p{color:var(--mute)}figure.face .src{color:#8a93a3;white-space:nowrap;"
    "overflow:hidden;text-overflow:ellipsis;display:block}"
    "figure.face.low{border-color:#e0a030}.hide{display:none!important}"
    ".note{color:var(--mute);font-size:12px;max-width:900px}"
    "footer{padding:14px 28px;color:var(--mute);font-size:12px}";

static const char script[] =
    "(function(){'use strict';var B=document.body;"
    "window.addEventListener('error',function(e){B.setAttribute('data-js-error',"
    "String(e.message||e));});"
    "function $(i){return document.getElementById(i);}"
    "var F={gender:$('f-gender'),race:$('f-race'),band:$('f-band'),conf:$('f-conf')};"
    "var faces=Array.prototype.slice.call(document.querySelectorAll('figure.face'));"
    "function apply(e){var g=F.gender.value,r=F.race.value,b=F.band.value,"
    "c=parseFloat(F.conf.value),n=0;"
    "faces.forEach(function(f){var d=f.dataset,ok=(!g||d.gender===g)&&(!r||d.race===r)"
    "&&(!b||d.band===b)&&(!(c<1)||(d.conf!==undefined&&parseFloat(d.conf)<c));"
    "f.classList.toggle('hide',!ok);if(ok)n++;});"
    "$('f-shown').textContent=String(n);"
    "$('f-conf-v').textContent=c<1?'below '+c.toFixed(2):'any';"
    "var q=[];['gender','race','band'].forEach(function(k){if(F[k].value)"
    "q.push(k+'='+encodeURIComponent(F[k].value));});if(c<1)q.push('conf='+c);"
    "if(e)try{history.replaceState(null,'',q.length?'#'+q.join('&'):location.pathname);}"
    "catch(x){}}"
    "function fromHash(){location.hash.replace(/^#/,'').split('&').forEach(function(kv){"
    "var p=kv.split('='),k=p[0],v=decodeURIComponent(p[1]||'');if(!F[k])return;"
    "if(k==='conf'){var x=parseFloat(v);if(x>0&&x<=1)F.conf.value=String(x);}"
    "else{for(var i=0;i<F[k].options.length;i++)if(F[k].options[i].value===v)"
    "F[k].value=v;}});}"
    "Object.keys(F).forEach(function(k){F[k].addEventListener('input',apply);"
    "F[k].addEventListener('change',apply);});"
    "$('f-reset').addEventListener('click',function(){F.gender.value='';F.race.value='';"
    "F.band.value='';F.conf.value='1';apply(true);});"
    "fromHash();apply(null);B.setAttribute('data-ready','1');})();";

/* ---- summary ---------------------------------------------------------------------- */

static void card(FILE *out, const char *id, int64_t v, const char *label, int bad)
{
    char b[32];
    fprintf(out,
            "<div class=\"card%s\"><div class=\"num\" id=\"%s\" data-value=\"%lld\">%s</div>"
            "<div class=\"lab\">%s</div></div>\n",
            bad && v ? " bad" : "", id, (long long)v, grouped(b, sizeof b, v), label);
}

static void rows_table(FILE *out, const char *id, const char *what, const rep_rows *r,
                       int with_code)
{
    char b[32], t0[48], t1[48];
    fprintf(out,
            "<table id=\"%s\"><tr><th>%s</th><th>images</th><th>first stored</th>"
            "<th>last stored</th></tr>\n",
            id, what);
    for (int i = 0; i < r->n; i++) {
        const rep_row *x = &r->v[i];
        fprintf(out, "<tr");
        if (with_code && x->code >= 0)
            fprintf(out, " data-code=\"%lld\" data-kind=\"%s\"", (long long)x->code,
                    x->label ? x->label : "");
        fprintf(out, " data-count=\"%lld\"><td class=\"%s\">", (long long)x->n,
                with_code ? "" : "mono");
        if (x->label)
            rep_html_text(out, x->label);
        else
            fputs("<i>(none)</i>", out);
        if (with_code && x->code >= 0)
            fprintf(out, " <span class=\"note\">(code %lld)</span>", (long long)x->code);
        fprintf(out, "</td><td class=\"n\">%s</td><td>%s</td><td>%s</td></tr>\n",
                grouped(b, sizeof b, x->n), when(t0, sizeof t0, x->first_ms),
                when(t1, sizeof t1, x->last_ms));
    }
    if (r->n == 0)
        fprintf(out, "<tr><td colspan=\"4\"><i>none</i></td></tr>\n");
    fputs("</table>\n", out);
}

static void summary(FILE *out, const rep_page *p)
{
    const rep_summary *s = &p->sum;
    char a[48], b[48], c[48];
    fputs("<section id=\"summary\"><h2>Summary</h2><div class=\"cards\">\n", out);
    card(out, "n-images", s->images, "images", 0);
    card(out, "n-faces", s->faces, "faces", 0);
    card(out, "n-labelled", s->ok, "images labelled", 0);
    card(out, "n-no-faces", s->no_faces, "labelled images without faces", 0);
    card(out, "n-failed", s->failed, "images failed", 1);
    card(out, "n-attributed", s->attributed, "faces with age, gender, ethnicity", 0);
    card(out, "n-workers", s->workers, "worker processes", 0);
    fputs("</div>\n<p id=\"timespan\" class=\"note\">", out);
    if (s->first_ms > 0 && s->last_ms >= s->first_ms) {
        double span = (double)(s->last_ms - s->first_ms) / 1000.0;
        fprintf(out, "Results stored from <b>%s</b> to <b>%s</b> (%s)",
                when(a, sizeof a, s->first_ms), when(b, sizeof b, s->last_ms),
                duration(c, sizeof c, span));
        /* below a second the sink's batching, not the labelling, sets the pace */
        if (span >= 1 && s->images > 1)
            fprintf(out, ", <b id=\"rate\" data-value=\"%.6g\">%.3g images/s</b> as the sink "
                         "stored them",
                    (double)(s->images - 1) / span, (double)(s->images - 1) / span);
        fputs(". ", out);
    } else {
        fputs("The database records no storage times. ", out);
    }
    if (s->timed > 0)
        fprintf(out, "Worker time: <b id=\"worker-ms\" data-value=\"%.6g\">%.1f ms</b> per "
                     "image on average (read to heads, %s images timed).",
                s->total_ms / (double)s->timed, s->total_ms / (double)s->timed,
                grouped(a, sizeof a, s->timed));
    fputs("</p>\n<div class=\"tables\"><div><h3>Failures by kind</h3>\n", out);
    rows_table(out, "failure-kinds", "error kind", &s->errors, 1);
    fputs("</div><div><h3>Models (lineage: the model identity each result names)</h3>\n",
          out);
    rows_table(out, "models", "model", &s->models, 0);
    fputs("<p class=\"note\">Detector + backbone (architecture, source, SHA-256 of its "
          "weights) + heads; <code>facemill model info FILE</code> prints a model file's "
          "full lineage (base model, data, command, date, commit).</p>\n",
          out);
    fputs("</div><div><h3>Runs (tags)</h3>\n", out);
    rows_table(out, "tags", "tag", &s->tags, 0);
    fputs("</div></div></section>\n", out);
}

/* ---- distributions ------------------------------------------------------------------ */

static void chart(FILE *out, const rep_hist *h, int shares)
{
    char b[32];
    fprintf(out, "<figure class=\"chartbox\" id=\"dist-%s\"><figcaption>", h->id);
    rep_html_text(out, h->title);
    fputs("</figcaption>\n", out);
    if (shares)
        rep_svg_shares(out, h);
    else
        rep_svg_bars(out, h);
    if (h->missing)
        fprintf(out, "<div class=\"miss\">%s without a value (not counted)</div>",
                grouped(b, sizeof b, h->missing));
    fputs("</figure>\n", out);
}

static void cross_table(FILE *out, const rep_cross *c)
{
    char b[32];
    fputs("<figure class=\"chartbox\" id=\"dist-cross\"><figcaption>Gender x ethnicity: "
          "faces and mean age</figcaption><table id=\"cross\"><tr><th></th>",
          out);
    for (int r = 0; r <= REP_RACES; r++)
        fprintf(out, "<th>%s</th>", r < REP_RACES ? fm_result_race_names[r] : "none");
    fputs("</tr>\n", out);
    for (int g = 0; g <= REP_GENDERS; g++) {
        fprintf(out, "<tr><th>%s</th>", g < REP_GENDERS ? fm_result_gender_names[g] : "none");
        for (int r = 0; r <= REP_RACES; r++) {
            int64_t n = c->n[g][r];
            fprintf(out, "<td class=\"n\" data-count=\"%lld\">%s", (long long)n,
                    grouped(b, sizeof b, n));
            if (n > 0 && g < REP_GENDERS && r < REP_RACES)
                fprintf(out, "<br><span class=\"note\">%.1f y</span>",
                        c->age_sum[g][r] / (double)n);
            fputs("</td>", out);
        }
        fputs("</tr>\n", out);
    }
    fputs("</table></figure>\n", out);
}

static void distributions(FILE *out, const rep_page *p)
{
    fputs("<section id=\"distributions\"><h2>Distributions</h2><div class=\"charts\">\n", out);
    for (int i = 0; i < REP_H_COUNT; i++)
        chart(out, &p->hist[i], i == REP_H_GENDER || i == REP_H_RACE);
    cross_table(out, &p->cross);
    fputs("</div></section>\n", out);
}

/* ---- faces -------------------------------------------------------------------------- */

static double face_conf(const rep_face *f)
{
    double g = fmax(f->pg[0], f->pg[1]), r = f->pr[0];
    for (int i = 1; i < REP_RACES; i++)
        r = fmax(r, f->pr[i]);
    return fmin(g, r);
}

static void face_figure(FILE *out, const rep_page *p, const rep_face *f)
{
    fprintf(out, "<figure class=\"face%s\" data-image=\"%lld\" data-face=\"%d\"",
            f->has_attrs && face_conf(f) < 0.6 ? " low" : "", (long long)f->image_id,
            f->face);
    if (f->has_attrs)
        fprintf(out,
                " data-gender=\"%s\" data-race=\"%s\" data-band=\"%s\" data-age=\"%.1f\" "
                "data-conf=\"%.4f\"",
                fm_result_gender_names[f->gender], fm_result_race_names[f->race],
                rep_band_names[f->band], f->age, face_conf(f));
    if (f->has_attrs && (f->gender_withheld || f->race_withheld))
        fprintf(out, " data-withheld=\"%s%s%s\"", f->gender_withheld ? "gender" : "",
                f->gender_withheld && f->race_withheld ? " " : "",
                f->race_withheld ? "race" : "");
    fputs(" title=\"", out);
    rep_html_text(out, f->source);
    fputs("\">", out);
    if (f->jpeg && p->thumbs_rel) {
        fputs("<img loading=\"lazy\" alt=\"face\" src=\"", out);
        rep_html_text(out, p->thumbs_rel);
        fprintf(out, "/%s\">", f->file);
    } else if (f->jpeg) {
        fputs("<img alt=\"face\" src=\"data:image/jpeg;base64,", out);
        rep_base64(out, f->jpeg, f->jpeg_len);
        fputs("\">", out);
    } else {
        fputs("<div class=\"ph\"><b>original missing</b>", out);
        rep_html_text(out, f->missing ? f->missing : "no thumbnail");
        fputs("</div>", out);
    }
    fputs("<figcaption>", out);
    /* A class withheld by heads.*_min_prob shows as "?", its most probable class
     * and probability still given after it. */
    if (f->has_attrs)
        fprintf(out,
                "<b>%s %.0f</b> %s<br><span class=\"p\">%s%s %.2f &middot; %s%s %.2f<br>"
                "age &plusmn;%.1f &middot; score %.3f</span>",
                f->gender_withheld ? "?" : f->gender == 0 ? "M" : "F", f->age,
                f->race_withheld ? "?" : fm_result_race_names[f->race],
                f->gender_withheld ? "withheld: " : "", fm_result_gender_names[f->gender],
                f->pg[f->gender], f->race_withheld ? "withheld: " : "",
                fm_result_race_names[f->race], f->pr[f->race], f->age_std, f->score);
    else
        fprintf(out, "<b>no labels</b><br><span class=\"p\">score %.3f</span>", f->score);
    fprintf(out, "<span class=\"p\"> &middot; %.0f px</span><span class=\"src\">",
            f->box[2] - f->box[0]);
    const char *base = f->source ? strrchr(f->source, '/') : NULL;
    rep_html_text(out, base ? base + 1 : f->source);
    fputs("</span></figcaption></figure>\n", out);
}

static void option_list(FILE *out, const char *id, const char *label,
                        const char *const *names, int n)
{
    fprintf(out, "<label>%s<select id=\"%s\"><option value=\"\">any</option>", label, id);
    for (int i = 0; i < n; i++)
        fprintf(out, "<option>%s</option>", names[i]);
    fputs("</select></label>\n", out);
}

static void filters(FILE *out, size_t total)
{
    fputs("<div id=\"filters\">", out);
    option_list(out, "f-gender", "gender", fm_result_gender_names, REP_GENDERS);
    option_list(out, "f-race", "ethnicity", fm_result_race_names, REP_RACES);
    option_list(out, "f-band", "age", rep_band_names, REP_BANDS);
    fprintf(out,
            "<label>confidence <input id=\"f-conf\" type=\"range\" min=\"0.3\" max=\"1\" "
            "step=\"0.01\" value=\"1\"> <span id=\"f-conf-v\">any</span></label>"
            "<button id=\"f-reset\" type=\"button\">reset</button>"
            "<span class=\"note\"><b id=\"f-shown\">%zu</b> of <span id=\"f-total\">%zu"
            "</span> faces shown</span></div>\n",
            total, total);
}

/* The sample as a grid: a row per gender x ethnicity, a column per age band. */
static void sample_grid(FILE *out, const rep_page *p)
{
    const rep_faces *s = &p->sample;
    size_t k = 0;
    fputs("<table class=\"grid\" id=\"sample\"><tr><th></th>", out);
    for (int b = 0; b < REP_BANDS; b++)
        fprintf(out, "<th>%s</th>", rep_band_names[b]);
    fputs("</tr>\n", out);
    for (int g = 0; g < REP_GENDERS; g++)
        for (int r = 0; r < REP_RACES; r++) {
            int first = (g * REP_RACES + r) * REP_BANDS;
            if (k >= s->n || s->v[k].cell >= first + REP_BANDS)
                continue; /* no face of this gender and ethnicity: no row */
            fprintf(out, "<tr><th class=\"row\">%s<br>%s</th>", fm_result_gender_names[g],
                    fm_result_race_names[r]);
            for (int b = 0; b < REP_BANDS; b++) {
                int cell = (g * REP_RACES + r) * REP_BANDS + b;
                fputs("<td>", out);
                while (k < s->n && s->v[k].cell == cell)
                    face_figure(out, p, &s->v[k++]);
                fputs("</td>", out);
            }
            fputs("</tr>\n", out);
        }
    fputs("</table>\n", out);
    if (k < s->n) {
        fputs("<h3>Faces without labels (no attribute heads ran)</h3><div class=\"strip\" "
              "id=\"unlabelled\">",
              out);
        while (k < s->n)
            face_figure(out, p, &s->v[k++]);
        fputs("</div>\n", out);
    }
}

static void strip(FILE *out, const rep_page *p, const char *id, const rep_faces *f)
{
    fprintf(out, "<div class=\"strip\" id=\"%s\">", id);
    for (size_t i = 0; i < f->n; i++)
        face_figure(out, p, &f->v[i]);
    if (f->n == 0)
        fputs("<i>none</i>", out);
    fputs("</div>\n", out);
}

static void faces(FILE *out, const rep_page *p)
{
    fprintf(out, "<section id=\"faces\" style=\"--px:%dpx\"><h2>Faces</h2>\n", p->thumb_px);
    fprintf(out,
            "<p class=\"note\">A sample of up to %d faces per predicted gender, ethnicity "
            "and age band (the same faces every time the report is made from the same "
            "database), then the %d least confident and the %d smallest faces. "
            "Confidence is the lower of the gender and the ethnicity probability. "
            "Thumbnails are cut from the original photos.</p>\n",
            p->per_cell, p->extremes, p->extremes);
    filters(out, p->sample.n + p->least.n + p->smallest.n);
    fputs("<h3>Sample by gender, ethnicity and age</h3>\n", out);
    sample_grid(out, p);
    fputs("<h3>Least confident</h3>\n", out);
    strip(out, p, "least", &p->least);
    fputs("<h3>Smallest faces</h3>\n", out);
    strip(out, p, "smallest", &p->smallest);
    fputs("</section>\n", out);
}

/* ---- failures ------------------------------------------------------------------------ */

static void failures(FILE *out, const rep_page *p)
{
    char a[32], b[32];
    const rep_failures *f = &p->failures;
    fputs("<section id=\"failures\"><h2>Failed images</h2>\n", out);
    fprintf(out,
            "<p class=\"note\" id=\"failures-shown\" data-shown=\"%zu\" data-total=\"%lld\">"
            "%s of %s failed images, by source%s.</p>\n",
            f->n, (long long)p->sum.failed, grouped(a, sizeof a, (int64_t)f->n),
            grouped(b, sizeof b, p->sum.failed),
            (int64_t)f->n < p->sum.failed ? " (the list stops at the report's bound)" : "");
    if (f->n == 0) {
        fputs("</section>\n", out);
        return;
    }
    fputs("<table id=\"failure-list\"><tr><th>source</th><th>kind</th><th>reason</th></tr>\n",
          out);
    for (size_t i = 0; i < f->n; i++) {
        const char *kind = fm_result_error_name((uint32_t)f->v[i].code);
        fprintf(out, "<tr data-kind=\"%s\"><td class=\"mono\">", kind);
        rep_html_text(out, f->v[i].source);
        fprintf(out, "</td><td>%s</td><td>", kind);
        rep_html_text(out, f->v[i].text);
        fputs("</td></tr>\n", out);
    }
    fputs("</table></section>\n", out);
}

void rep_html_page(FILE *out, const rep_page *p)
{
    char now[48];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
          "<meta name=\"generator\" content=\"facemill report\"><title>",
          out);
    rep_html_text(out, p->title);
    fprintf(out, "</title><style>%s</style></head>\n<body data-ready=\"0\">\n<header><h1>", css);
    rep_html_text(out, p->title);
    fputs("</h1><p>", out);
    rep_html_text(out, p->db_name);
    fprintf(out, " &middot; report made %s</p></header>\n",
            when(now, sizeof now, (int64_t)ts.tv_sec * 1000));
    fputs("<nav><a href=\"#summary\">Summary</a><a href=\"#distributions\">Distributions</a>"
          "<a href=\"#faces\">Faces</a><a href=\"#failures\">Failed images</a></nav>\n<main>\n",
          out);
    summary(out, p);
    distributions(out, p);
    faces(out, p);
    failures(out, p);
    fprintf(out, "</main>\n<footer>facemill report &middot; labels are predictions of the "
                 "models named above, not facts about the people shown.</footer>\n"
                 "<script>%s</script>\n</body></html>\n",
            script);
}
