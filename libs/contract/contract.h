/* contract.h: C validators for the JSON contracts in proto/.
 *
 * Each validator gives exactly the verdict of the JSON Schema in proto/ (checked on every fixture
 * in proto/examples/ by tests/unit/contract, with Python's jsonschema as the referee). A breaking
 * change is a new contract version, never an edit.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define CONTRACT_READING_V1    "sensor_reading.v1"
#define CONTRACT_SENSOR_ID_MAX 64
#define CONTRACT_UNIT_MAX      16
#define CONTRACT_TAGS_MAX      16
#define CONTRACT_TAG_KEY_MAX   32
#define CONTRACT_TAG_VALUE_MAX 64

/**
 * The jansson decode flags every producer of contract documents must use (the gateway, sbctl,
 * consumers re-validating records). Integers are decoded as reals so that an integer beyond
 * int64 is still the number the schema sees; any JSON value is decoded so that `"t1"` or `42`
 * gets the validator's "must be an object" rather than a parse error; duplicate keys are
 * rejected because parsers disagree on which one wins (the schema itself cannot see them).
 * Never JSON_ALLOW_NUL: a NUL cannot be stored in PostgreSQL text.
 */
#define CONTRACT_JSON_DECODE_FLAGS \
    (JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL | JSON_DECODE_ANY)

/** Why a document was rejected: a JSON Pointer into it and a sentence. */
typedef struct contract_error {
    char pointer[96]; /* "/sensor_id", "" for the root */
    char reason[160]; /* "must be a string of 1-64 characters [A-Za-z0-9._:-]" */
} contract_error_t;

/** A valid sensor_reading.v1, normalised. */
typedef struct contract_reading {
    bool has_id;
    char id[37]; /* lower-case UUID when has_id */
    char sensor_id[CONTRACT_SENSOR_ID_MAX + 1];
    bool has_ts;
    int64_t ts_us; /* microseconds since the epoch, UTC */
    double value;
    bool has_unit;
    char unit[CONTRACT_UNIT_MAX + 1];
    json_t *tags; /* borrowed from the validated document, or NULL */
} contract_reading_t;

/**
 * Validates @doc against sensor_reading.v1. Returns 0 and fills @ret_reading (when not NULL), or
 * -EINVAL and describes the first violation in @ret_error (when not NULL). @doc is borrowed.
 */
int contract_reading_validate(const json_t *doc, contract_reading_t *ret_reading,
                              contract_error_t *ret_error);

/**
 * Parses a timestamp ("2026-11-23T09:40:01.5Z", "...+01:00") exactly as the schema's `ts` rule
 * does (`format: date-time` plus its pattern): real calendar dates, seconds 00-59 (Python's
 * jsonschema, the referee, has no leap seconds), 'T'/'Z' in either case, a fraction of 1-9 digits
 * (truncated to microseconds), local years 2000-2099 or 1999-12-31/2100-01-01 in UTC. Gives
 * microseconds since the epoch. 0 or -EINVAL.
 */
int contract_parse_rfc3339(const char *s, int64_t *ret_us);

/** Copies the @len bytes at @v into @out lower-cased and NUL-terminated when they are a UUID
 *  written 8-4-4-4-12 in hex of either case; false (and @out unspecified) otherwise. */
bool contract_uuid_copy(const void *v, size_t len, char out[37]);

/** Formats @us as "YYYY-MM-DDTHH:MM:SS.ffffffZ" into @buf (at least 28 bytes). */
void contract_format_rfc3339(int64_t us, char *buf, size_t size);

/**
 * Serialises a reading as the canonical sensor_reading.v1 JSON document put on Kafka (compact,
 * ts in UTC with microseconds, shortest exact value, tag names sorted; see proto/README.md). id
 * and ts are written only when has_id/has_ts: the gateway sets both, with a new UUID and its
 * receive time, when the device sent none. Returns a malloc'd string the caller frees, or NULL
 * on ENOMEM.
 */
char *contract_reading_dump(const contract_reading_t *reading);

/* ---- sensor.readings.v1 Kafka records (proto/README.md) ------------------------------------ */

#define CONTRACT_REQUEST_ID_MAX 128

/** The parts of a sensor.readings.v1 record a consumer reads; every pointer is borrowed, and a
 *  header pointer is NULL when the record lacks that header. */
typedef struct contract_record_in {
    const void *value;
    size_t value_len;
    const void *org_id; /* header sb-org-id */
    size_t org_id_len;
    const void *project_id; /* header sb-project-id */
    size_t project_id_len;
    const void *request_id; /* header sb-request-id (optional) */
    size_t request_id_len;
} contract_record_in_t;

/** A decoded record: tenant ids from the headers, the validated reading from the value. */
typedef struct contract_reading_record {
    char org_id[37];                              /* lower-case UUID */
    char project_id[37];                          /* lower-case UUID */
    char request_id[CONTRACT_REQUEST_ID_MAX + 1]; /* "" when absent or unusable */
    contract_reading_t reading; /* has_id and has_ts always true; tags borrow from doc */
    json_t *doc;                /* owned: the decoded value */
} contract_reading_record_t;

/**
 * Decodes a record as the gateway writes it: tenant headers that are UUIDs, a value decoded with
 * CONTRACT_JSON_DECODE_FLAGS that passes sensor_reading.v1 and carries id and ts. The request id
 * is only for tracing: kept when it is short printable ASCII, else dropped (never a rejection).
 * Returns 0 (release @ret with contract_reading_record_clear()), or -EINVAL with a one-line
 * reason for the dead-letter header in @reason.
 */
int contract_reading_record_decode(const contract_record_in_t *in, contract_reading_record_t *ret,
                                   char *reason, size_t reason_size);

/** Releases the decoded document. Accepts a zeroed or already-cleared record. */
void contract_reading_record_clear(contract_reading_record_t *rec);
