/* ingest_row.h: one Kafka record of sensor.readings.v1 -> one sensor_readings row.
 *
 * Kept apart from the consume loop so that it can be tested without Kafka or PostgreSQL.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "contract.h"

#define INGEST_REQUEST_ID_MAX CONTRACT_REQUEST_ID_MAX
#define INGEST_NCOLS          11

/* The parts of a record the conversion reads; every pointer is borrowed. */
typedef struct ingest_input {
    const void *value;
    size_t value_len;
    const void *org_id; /* header sb-org-id, NULL when absent */
    size_t org_id_len;
    const void *project_id; /* header sb-project-id, NULL when absent */
    size_t project_id_len;
    const void *request_id; /* header sb-request-id, NULL when absent (optional) */
    size_t request_id_len;
    int32_t partition;
    int64_t offset;
} ingest_input_t;

typedef struct ingest_row {
    char org_id[37];
    char project_id[37];
    char reading_id[37];
    char sensor_id[CONTRACT_SENSOR_ID_MAX + 1];
    int64_t ts_us;
    double value;
    bool has_unit;
    char unit[CONTRACT_UNIT_MAX + 1];
    char *tags_json; /* owned, compact JSON object, NULL when the reading has no tags */
    bool has_request_id;
    char request_id[INGEST_REQUEST_ID_MAX + 1];
    int32_t partition;
    int64_t offset;
} ingest_row_t;

/* A growable byte buffer for COPY data. */
typedef struct ingest_buf {
    char *data;
    size_t len, cap;
} ingest_buf_t;

/** The column list shared by the staging table, the COPY and the INSERTs, in COPY order. */
extern const char ingest_columns[];

/**
 * Converts a record. Returns 0 and fills @ret_row (release with ingest_row_clear()), or -EINVAL
 * with a one-line reason for the dead-letter header in @reason (bad JSON, contract violation,
 * missing or malformed tenant header, missing id or ts), or -ENOMEM.
 */
int ingest_row_parse(const ingest_input_t *in, ingest_row_t *ret_row, char *reason,
                     size_t reason_size);

/** Frees what a row owns. Accepts a zeroed row. */
void ingest_row_clear(ingest_row_t *row);

/** Appends the row as one line of COPY text format (columns as in ingest_columns). 0 or -ENOMEM. */
int ingest_row_copy_append(const ingest_row_t *row, ingest_buf_t *buf);

/** Text parameters for a one-row INSERT, in ingest_columns order; NULL for SQL NULL. The
 *  pointers point into @row and @scratch, which must outlive @ret_params. */
typedef struct ingest_params_scratch {
    char ts[40], value[40], partition[16], offset[24];
} ingest_params_scratch_t;
void ingest_row_params(const ingest_row_t *row, ingest_params_scratch_t *scratch,
                       const char *ret_params[INGEST_NCOLS]);

/** Months since 1970-01 (UTC) of the row's ts: rows with equal keys share a partition. */
int64_t ingest_row_month(const ingest_row_t *row);

void ingest_buf_free(ingest_buf_t *buf);
