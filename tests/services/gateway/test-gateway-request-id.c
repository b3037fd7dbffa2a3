/* X-Request-Id: what a client may send, and what it gets instead. */
#include <criterion/criterion.h>
#include <string.h>

#include "gateway.h"

static bool is_uuid4(const char *s)
{
    if (strlen(s) != 36 || s[14] != '4')
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;

        if (dash ? s[i] != '-' : !strchr("0123456789abcdef", s[i]))
            return false;
    }
    return true;
}

Test(request_id, sane_ids_are_kept)
{
    char id[GW_REQUEST_ID_MAX + 1], max[GW_REQUEST_ID_MAX + 1];

    memset(max, 'a', GW_REQUEST_ID_MAX);
    max[GW_REQUEST_ID_MAX] = '\0';
    const char *ok[] = {"a", "trace-01.ABC_z", max};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        cr_assert(gw_request_id_sane(ok[i]), "%s", ok[i]);
        cr_assert_eq(gw_request_id_pick(ok[i], id), 0);
        cr_assert_str_eq(id, ok[i]);
    }
}

Test(request_id, unsafe_ids_are_replaced_by_a_fresh_uuid)
{
    char longer[GW_REQUEST_ID_MAX + 2], id[GW_REQUEST_ID_MAX + 1], prev[GW_REQUEST_ID_MAX + 1] = "";

    memset(longer, 'a', GW_REQUEST_ID_MAX + 1);
    longer[GW_REQUEST_ID_MAX + 1] = '\0';
    const char *bad[] = {NULL, "", longer, "a b", "a\nb", "a\"b", "a/b", "caf\xc3\xa9", "x\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_not(gw_request_id_sane(bad[i]), "accepted %s", bad[i] ? bad[i] : "NULL");
        cr_assert_eq(gw_request_id_pick(bad[i], id), 0);
        cr_assert(is_uuid4(id), "not a UUID: %s", id);
        cr_assert_str_neq(id, prev, "the same id twice");
        strcpy(prev, id);
    }
}
