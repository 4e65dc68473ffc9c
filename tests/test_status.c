/* test_status.c - status texts and the error record. */
#include "facemill/log.h"
#include "facemill/status.h"
#include "fm_test.h"

#include <string.h>

int main(void)
{
    for (int s = 0; s < FM_STATUS_COUNT; s++)
        CHECK(strcmp(fm_status_to_string((fm_status)s), "unknown status") != 0);
    CHECK(strcmp(fm_status_to_string(FM_STATUS_COUNT), "unknown status") == 0);
    CHECK(strcmp(fm_status_to_string((fm_status)-1), "unknown status") == 0);
    CHECK(strcmp(fm_status_to_string(FM_OK), "ok") == 0);

    fm_error e = {0};
    CHECK(fm_error_set(&e, FM_ERR_IO, "open %s: %s", "x.fmm", "No such file") == FM_ERR_IO);
    CHECK(e.code == FM_ERR_IO);
    CHECK(strcmp(e.msg, "open x.fmm: No such file") == 0);
    CHECK(fm_error_prefix(&e, "model %d", 3) == FM_ERR_IO);
    CHECK(strcmp(fm_error_text(&e), "model 3: open x.fmm: No such file") == 0);
    CHECK(fm_error_set(NULL, FM_ERR_FORMAT, "ignored") == FM_ERR_FORMAT);
    CHECK(fm_error_prefix(NULL, "x") == FM_OK);

    fm_error empty = {.code = FM_ERR_LIMIT};
    CHECK(strcmp(fm_error_text(&empty), "limit exceeded") == 0);

    /* Long messages are truncated, never overflow. */
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    fm_error_set(&e, FM_ERR_INVALID, "%s", big);
    CHECK(strlen(e.msg) == FM_ERROR_MSG_MAX - 1);
    fm_error_prefix(&e, "%s", big);
    CHECK(strlen(e.msg) == FM_ERROR_MSG_MAX - 1);

    CHECK(fm_log_level_parse("debug") == FM_LOG_DEBUG);
    CHECK(fm_log_level_parse("loud") == -1);
    fm_log_init("test", FM_LOG_WARN);
    CHECK(fm_log_current_level == FM_LOG_WARN);
    fm_log_info("not printed %d", 1);
    fm_log_warn("printed once: %s", "ok");
    return fm_test_done("test_status");
}
