/* test_json.c - the JSON writer produces exact, valid text. */
#include "facemill/json.h"
#include "fm_test.h"

#include <string.h>

int main(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fm_json j;
    fm_json_init(&j, f);
    fm_json_obj_begin(&j);
    fm_json_key(&j, "path");
    fm_json_str(&j, "a\"b\\c\n\t\x01\xc3\xa9");
    fm_json_key(&j, "n");
    fm_json_int(&j, -42);
    fm_json_key(&j, "xs");
    fm_json_arr_begin(&j);
    fm_json_num(&j, 0.5, 6);
    fm_json_num(&j, NAN, 6);
    fm_json_arr_begin(&j);
    fm_json_arr_end(&j);
    fm_json_obj_begin(&j);
    fm_json_key(&j, "ok");
    fm_json_bool(&j, 1);
    fm_json_obj_end(&j);
    fm_json_arr_end(&j);
    fm_json_key(&j, "e");
    fm_json_null(&j);
    fm_json_obj_end(&j);
    fm_json_newline(&j);
    fm_json_arr_begin(&j);
    fm_json_int(&j, 1);
    fm_json_int(&j, 2);
    fm_json_arr_end(&j);
    fm_json_newline(&j);
    fclose(f);
    const char *want = "{\"path\":\"a\\\"b\\\\c\\n\\t\\u0001\xc3\xa9\",\"n\":-42,"
                       "\"xs\":[0.5,null,[],{\"ok\":true}],\"e\":null}\n[1,2]\n";
    CHECK_MSG(strcmp(buf, want) == 0, "got %s", buf);
    free(buf);
    return fm_test_done("test_json");
}
