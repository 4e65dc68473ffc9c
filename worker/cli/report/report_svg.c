/* report_svg.c - the report's charts, written as inline SVG (report-impl.h).
 *
 * Why facemill draws them itself: the page must open from file:// with no script
 * library and no network, and a bar chart is a few rectangles. Every bar carries a
 * <title> (the exact count on hover) and a data-count attribute (what the tests
 * read); colours come from the page's CSS classes, so the charts follow its style.
 */
#include "report-impl.h"

#include <math.h>
#include <string.h>

#define W 440      /* chart width */
#define H 210      /* bar chart height */
#define LEFT 48    /* room for the y axis labels */
#define BOTTOM 40  /* room for the x axis labels */
#define TOP 18
#define RIGHT 8
#define ROW 24     /* shares: one row per class */
#define NAME_W 72  /* shares: class names */
#define PCT_W 110  /* shares: percentages and counts */

/* 1234 -> "1234", 12345 -> "12.3k", 1234567 -> "1.23M": axis labels stay short. */
static void compact(char *buf, size_t size, int64_t v)
{
    if (v < 10000)
        snprintf(buf, size, "%lld", (long long)v);
    else if (v < 1000000)
        snprintf(buf, size, "%.3gk", (double)v / 1e3);
    else if (v < 1000000000)
        snprintf(buf, size, "%.3gM", (double)v / 1e6);
    else
        snprintf(buf, size, "%.3gG", (double)v / 1e9);
}

/* The smallest 1, 2 or 5 x 10^k at least v: the top of the y axis. */
static double nice_ceiling(double v)
{
    if (v <= 1)
        return 1;
    double p = pow(10, floor(log10(v)));
    for (int m = 1; m <= 10; m *= 2)
        if (m * p >= v)
            return m * p;
    return 10 * p;
}

/* A bin label escaped for markup ("<0.8" -> "&lt;0.8"); labels are short. */
static const char *esc(char *buf, size_t size, const char *s)
{
    size_t n = 0;
    for (; *s && n + 6 < size; s++) {
        const char *rep = *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : *s == '&' ? "&amp;"
                        : *s == '"' ? "&quot;" : NULL;
        if (rep) {
            memcpy(buf + n, rep, strlen(rep));
            n += strlen(rep);
        } else {
            buf[n++] = *s;
        }
    }
    buf[n] = '\0';
    return buf;
}

static int64_t hist_total(const rep_hist *h)
{
    int64_t t = 0;
    for (int i = 0; i < h->n; i++)
        t += h->count[i];
    return t;
}

void rep_svg_bars(FILE *out, const rep_hist *h)
{
    int64_t max = 0;
    for (int i = 0; i < h->n; i++)
        if (h->count[i] > max)
            max = h->count[i];
    double top = nice_ceiling((double)max);
    double pw = W - LEFT - RIGHT, ph = H - TOP - BOTTOM;
    double bw = h->n > 0 ? pw / h->n : pw;
    int rotate = h->n > 12; /* long axes: labels turned to fit */
    fprintf(out,
            "<svg class=\"chart\" id=\"chart-%s\" viewBox=\"0 0 %d %d\" width=\"%d\" "
            "height=\"%d\" role=\"img\" aria-label=\"%s\" data-total=\"%lld\">\n",
            h->id, W, H, W, H, h->title, (long long)hist_total(h));
    /* y axis: 0, half, top, as grid lines */
    for (int k = 0; k <= 2; k++) {
        double v = top * k / 2, y = TOP + ph - ph * k / 2;
        char lab[32];
        compact(lab, sizeof lab, (int64_t)llround(v));
        fprintf(out,
                "<line class=\"grid\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>"
                "<text class=\"ytick\" x=\"%d\" y=\"%.1f\">%s</text>\n",
                LEFT, y, W - RIGHT, y, LEFT - 6, y + 4, lab);
    }
    for (int i = 0; i < h->n; i++) {
        char lab[4 * REP_LABEL_MAX];
        esc(lab, sizeof lab, h->labels[i]);
        double bh = top > 0 ? ph * (double)h->count[i] / top : 0;
        double x = LEFT + i * bw, y = TOP + ph - bh;
        fprintf(out,
                "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                "data-bin=\"%s\" data-count=\"%lld\"><title>%s: %lld</title></rect>\n",
                x + 1, y, bw > 3 ? bw - 2 : bw, bh, lab, (long long)h->count[i], lab,
                (long long)h->count[i]);
        double lx = x + bw / 2, ly = TOP + ph + 14;
        if (rotate)
            fprintf(out,
                    "<text class=\"xtick\" transform=\"translate(%.1f,%.1f) rotate(-45)\" "
                    "text-anchor=\"end\">%s</text>\n",
                    lx + 3, ly - 4, lab);
        else
            fprintf(out, "<text class=\"xtick\" x=\"%.1f\" y=\"%.1f\">%s</text>\n", lx, ly,
                    lab);
    }
    fprintf(out,
            "<line class=\"axis\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>\n"
            "<text class=\"unit\" x=\"%d\" y=\"12\">%s</text>\n</svg>\n",
            LEFT, TOP + ph, W - RIGHT, TOP + ph, LEFT, h->unit);
}

void rep_svg_shares(FILE *out, const rep_hist *h)
{
    int64_t total = hist_total(h);
    int height = h->n * ROW + 8;
    double bar_w = W - NAME_W - PCT_W;
    fprintf(out,
            "<svg class=\"chart shares\" id=\"chart-%s\" viewBox=\"0 0 %d %d\" width=\"%d\" "
            "height=\"%d\" role=\"img\" aria-label=\"%s\" data-total=\"%lld\">\n",
            h->id, W, height, W, height, h->title, (long long)total);
    for (int i = 0; i < h->n; i++) {
        char lab[4 * REP_LABEL_MAX];
        esc(lab, sizeof lab, h->labels[i]);
        double share = total > 0 ? (double)h->count[i] / (double)total : 0;
        double y = 4 + i * ROW;
        fprintf(out,
                "<text class=\"name\" x=\"%d\" y=\"%.1f\">%s</text>"
                "<rect class=\"track\" x=\"%d\" y=\"%.1f\" width=\"%.1f\" height=\"%d\"/>"
                "<rect class=\"bar c%d\" x=\"%d\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" "
                "data-bin=\"%s\" data-count=\"%lld\"><title>%s: %lld</title></rect>"
                "<text class=\"pct\" x=\"%.1f\" y=\"%.1f\">%.1f%% (%lld)</text>\n",
                NAME_W - 6, y + 15, lab, NAME_W, y + 3, bar_w, ROW - 8, i, NAME_W, y + 3,
                bar_w * share, ROW - 8, lab, (long long)h->count[i], lab,
                (long long)h->count[i], NAME_W + bar_w + 6, y + 15,
                100 * share, (long long)h->count[i]);
    }
    fprintf(out, "</svg>\n");
}
