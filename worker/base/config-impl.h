/* config-impl.h - the settings table behind config.h, visible to config.c and its
 * test only. The test walks the table to check its invariants (defaults inside their
 * bounds, keys unique, sections contiguous) and to prove config/facemill.yaml names
 * every key; programs use the functions of config.h. */
#ifndef FACEMILL_CONFIG_IMPL_H
#define FACEMILL_CONFIG_IMPL_H

#include "facemill/config.h"

#include <stddef.h>
#include <stdint.h>

typedef enum fm_config_type {
    FM_CONFIG_BOOL,   /* field: bool */
    FM_CONFIG_INT,    /* field: int64_t */
    FM_CONFIG_FLOAT,  /* field: double */
    FM_CONFIG_STRING, /* field: char[FM_CONFIG_STRING_MAX] */
    FM_CONFIG_ENUM,   /* field: int, an index into names */
    FM_CONFIG_SET,    /* field: int, bit i for names[i]; written "a,b,c" */
} fm_config_type;

/* Deepest key ("a.b.c" has depth 3) the loader handles. */
#define FM_CONFIG_MAX_DEPTH 8

/* One row of the table. Which members matter depends on type. */
typedef struct fm_config_setting {
    const char *key;     /* dotted path, e.g. "detect.min_face" */
    fm_config_type type;
    size_t offset;       /* of the field in fm_config (or in any struct, for parse) */
    int64_t def_int;     /* default of bool (0/1), int, enum (index) and set (bits) */
    double def_float;    /* default of float */
    const char *def_string;
    int64_t min_int;     /* bounds, inclusive: int values; string lengths in bytes */
    int64_t max_int;
    double min_float;    /* bounds, inclusive: float values */
    double max_float;
    const char *const *names; /* enum, set: allowed names, NULL-terminated */
    const char *help;    /* one line */
} fm_config_setting;

/* The table, in the order dump and describe list it. */
extern const fm_config_setting fm_config_settings[];
extern const size_t fm_config_settings_count;

/* Parses len bytes of text (no NUL needed; embedded NULs are refused) as a value of
 * setting s and, when valid and in bounds, stores it at (char *)base + s->offset.
 * Errors are FM_ERR_CONFIG with "KEY: ..." in err; base is untouched then. */
fm_status fm_config_setting_parse(const fm_config_setting *s, const char *text,
                                  size_t len, void *base, fm_error *err);

#endif
