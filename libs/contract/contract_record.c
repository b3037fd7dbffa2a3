/* contract_record.c: the sensor.readings.v1 Kafka record, decoded once for every consumer. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "contract.h"

bool contract_uuid_copy(const void *v, size_t len, char out[37])
{
    const char *s = v;

    if (!v || len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        char c = s[i];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');

        if (dash ? c != '-' : !hex)
            return false;
        out[i] = (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
    }
    out[36] = '\0';
    return true;
}

static int header_uuid(const char *name, const void *v, size_t len, char out[37], char *reason,
                       size_t reason_size)
{
    if (!v) {
        snprintf(reason, reason_size, "missing header %s", name);
        return -EINVAL;
    }
    if (!contract_uuid_copy(v, len, out)) {
        snprintf(reason, reason_size, "header %s is not a UUID", name);
        return -EINVAL;
    }
    return 0;
}

int contract_reading_record_decode(const contract_record_in_t *in, contract_reading_record_t *ret,
                                   char *reason, size_t reason_size)
{
    contract_reading_record_t rec = {0};
    contract_error_t cerr;
    json_error_t jerr;

    if (header_uuid("sb-org-id", in->org_id, in->org_id_len, rec.org_id, reason, reason_size) < 0 ||
        header_uuid("sb-project-id", in->project_id, in->project_id_len, rec.project_id, reason,
                    reason_size) < 0)
        return -EINVAL;
    if (!in->value || in->value_len == 0) {
        snprintf(reason, reason_size, "empty record value");
        return -EINVAL;
    }
    rec.doc = json_loadb(in->value, in->value_len, CONTRACT_JSON_DECODE_FLAGS, &jerr);
    if (!rec.doc) {
        snprintf(reason, reason_size, "invalid JSON at line %d column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        return -EINVAL;
    }
    if (contract_reading_validate(rec.doc, &rec.reading, &cerr) < 0) {
        snprintf(reason, reason_size, "%s: %s: %s", CONTRACT_READING_V1,
                 cerr.pointer[0] ? cerr.pointer : "/", cerr.reason);
        goto fail;
    }
    /* The gateway always fills id and ts; a record without them did not come through it. */
    if (!rec.reading.has_id || !rec.reading.has_ts) {
        snprintf(reason, reason_size, "reading has no %s (records must come from the gateway)",
                 rec.reading.has_id ? "ts" : "id");
        goto fail;
    }
    if (in->request_id && in->request_id_len > 0 && in->request_id_len <= CONTRACT_REQUEST_ID_MAX) {
        const char *s = in->request_id;
        bool ok = true;

        for (size_t i = 0; i < in->request_id_len && ok; i++)
            ok = s[i] > 0x20 && s[i] < 0x7f;
        if (ok) {
            memcpy(rec.request_id, s, in->request_id_len);
            rec.request_id[in->request_id_len] = '\0';
        }
    }
    *ret = rec;
    return 0;

fail:
    json_decref(rec.doc);
    return -EINVAL;
}

void contract_reading_record_clear(contract_reading_record_t *rec)
{
    json_decref(rec->doc);
    rec->doc = NULL;
    rec->reading.tags = NULL;
}
