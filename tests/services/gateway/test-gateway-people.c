/* What the /auth/ routes accept from people, and the refresh tokens it hands out. */
#include <criterion/criterion.h>
#include <string.h>

#include "auth_password.h"
#include "gateway.h"

Test(people, emails)
{
    char longest[GW_EMAIL_MAX + 2];

    cr_assert_null(gw_people_email_check("ada@example.com"));
    cr_assert_null(gw_people_email_check("Ada.Lovelace+x@Example.co.uk"));
    cr_assert_not_null(gw_people_email_check(""));
    cr_assert_not_null(gw_people_email_check("ada.example.com"));
    cr_assert_not_null(gw_people_email_check("a@b@example.com"));
    cr_assert_not_null(gw_people_email_check("@example.com"));
    cr_assert_not_null(gw_people_email_check("ada@"));
    cr_assert_not_null(gw_people_email_check("ada lovelace@example.com"));
    cr_assert_not_null(gw_people_email_check("ada@\texample.com"));
    cr_assert_not_null(gw_people_email_check("ada@example.com."));

    memset(longest, 'a', sizeof(longest));
    memcpy(longest + GW_EMAIL_MAX - 12, "@example.com", 12);
    longest[GW_EMAIL_MAX] = '\0';
    cr_assert_null(gw_people_email_check(longest), "254 bytes are allowed");
    memmove(longest + 1, longest, GW_EMAIL_MAX + 1);
    cr_assert_not_null(gw_people_email_check(longest), "255 bytes are not");
}

Test(people, slugs_follow_the_organizations_table)
{
    char s[70];

    cr_assert_null(gw_people_slug_check("acme"));
    cr_assert_null(gw_people_slug_check("0-acme-2"));
    cr_assert_not_null(gw_people_slug_check(""));
    cr_assert_not_null(gw_people_slug_check("-acme"));
    cr_assert_not_null(gw_people_slug_check("Acme"));
    cr_assert_not_null(gw_people_slug_check("ac me"));
    cr_assert_not_null(gw_people_slug_check("acme_co"));
    memset(s, 'a', 63);
    s[63] = '\0';
    cr_assert_null(gw_people_slug_check(s));
    s[63] = 'a';
    s[64] = '\0';
    cr_assert_not_null(gw_people_slug_check(s));
}

Test(people, password_lengths)
{
    static char big[AUTH_PASSWORD_MAX_LEN + 2];

    cr_assert_not_null(gw_people_password_check("elevenchars", 11));
    cr_assert_null(gw_people_password_check("twelve chars", 12));
    memset(big, 'x', AUTH_PASSWORD_MAX_LEN);
    cr_assert_null(gw_people_password_check(big, AUTH_PASSWORD_MAX_LEN));
    big[AUTH_PASSWORD_MAX_LEN] = 'x';
    cr_assert_not_null(gw_people_password_check(big, AUTH_PASSWORD_MAX_LEN + 1));
    /* A JSON "\u0000" makes the C string shorter than what was received. */
    cr_assert_not_null(gw_people_password_check("twelve chars", 13));
}

Test(people, names)
{
    cr_assert_null(gw_people_name_check("Ada Lovelace"));
    cr_assert_not_null(gw_people_name_check(""));
    cr_assert_not_null(gw_people_name_check("Ada\nLovelace"));
}

Test(people, refresh_tokens_are_32_random_bytes_stored_as_sha256)
{
    char a[GW_REFRESH_TOKEN_LEN + 1], b[GW_REFRESH_TOKEN_LEN + 1];
    char ha[GW_REFRESH_HASH_HEX + 1], hb[GW_REFRESH_HASH_HEX + 1], again[GW_REFRESH_HASH_HEX + 1];

    cr_assert_eq(gw_refresh_token_new(a, ha), 0);
    cr_assert_eq(gw_refresh_token_new(b, hb), 0);
    cr_assert_eq(strlen(a), 43);
    cr_assert_eq(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), 43);
    cr_assert_str_neq(a, b);
    gw_refresh_token_hash(a, strlen(a), again);
    cr_assert_str_eq(ha, again);
    cr_assert_str_neq(ha, hb);
    cr_assert_eq(strspn(ha, "0123456789abcdef"), 64);

    /* SHA-256("abc"), FIPS 180-2's example. */
    gw_refresh_token_hash("abc", 3, again);
    cr_assert_str_eq(again, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
