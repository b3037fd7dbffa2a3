/* API keys: generation, strict parsing, HMAC hashing, verification, Bearer headers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "auth_key.h"

#define KEYS 1000

static const char pepper[] = "server-side pepper, not in the database";

/* A well-formed token to mutate: 12 base32 characters, 43 canonical base64url characters. */
static const char good[] = "lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0";

static int parse(const char *token)
{
    char prefix[AUTH_KEY_PREFIX_LEN + 1], secret[AUTH_KEY_SECRET_LEN + 1];

    return auth_key_parse(token, strlen(token), prefix, secret);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

Test(auth_key, generate_then_parse_round_trips)
{
    char token[AUTH_KEY_TOKEN_LEN + 1], prefix[AUTH_KEY_PREFIX_LEN + 1];
    char p2[AUTH_KEY_PREFIX_LEN + 1], secret[AUTH_KEY_SECRET_LEN + 1];

    cr_assert_eq(auth_key_generate(token, prefix), 0);
    cr_expect_eq(strlen(token), AUTH_KEY_TOKEN_LEN);
    cr_expect_eq(strncmp(token, "lok_", 4), 0, "%s", token);
    cr_assert_eq(auth_key_parse(token, strlen(token), p2, secret), 0, "%s", token);
    cr_expect_str_eq(p2, prefix);
    cr_expect_eq(strncmp(token + 4, prefix, AUTH_KEY_PREFIX_LEN), 0);
    cr_expect_str_eq(token + 4 + AUTH_KEY_PREFIX_LEN + 1, secret);
}

Test(auth_key, a_thousand_keys_are_distinct_and_well_formed)
{
    char **tokens = calloc(KEYS, sizeof(*tokens)), **prefixes = calloc(KEYS, sizeof(*prefixes));

    cr_assert(tokens && prefixes);
    for (int i = 0; i < KEYS; i++) {
        tokens[i] = malloc(AUTH_KEY_TOKEN_LEN + 1);
        prefixes[i] = malloc(AUTH_KEY_PREFIX_LEN + 1);
        cr_assert_eq(auth_key_generate(tokens[i], prefixes[i]), 0);
        cr_assert_eq(parse(tokens[i]), 0, "generated an unparsable key %s", tokens[i]);
    }
    qsort(tokens, KEYS, sizeof(*tokens), cmp_str);
    qsort(prefixes, KEYS, sizeof(*prefixes), cmp_str);
    for (int i = 1; i < KEYS; i++) {
        cr_expect_str_neq(tokens[i - 1], tokens[i]);
        /* 60 random bits: a repeated prefix among 1000 would mean a broken generator. */
        cr_expect_str_neq(prefixes[i - 1], prefixes[i]);
    }
    for (int i = 0; i < KEYS; i++) {
        free(tokens[i]);
        free(prefixes[i]);
    }
    free(tokens);
    free(prefixes);
}

Test(auth_key, parse_accepts_the_reference_token)
{
    char prefix[AUTH_KEY_PREFIX_LEN + 1], secret[AUTH_KEY_SECRET_LEN + 1];

    cr_assert_eq(auth_key_parse(good, strlen(good), prefix, secret), 0);
    cr_expect_str_eq(prefix, "abcdefgh2345");
    cr_expect_str_eq(secret, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0");
}

Test(auth_key, parse_rejects_malformed_tokens)
{
    static const char *const bad[] = {
        "",
        "lok_",
        "LOK_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* scheme case */
        "lak_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* scheme */
        "lok-abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* scheme separator */
        "lok_abcdefgh2345ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",   /* no dot */
        "lok_abcdefgh2345_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* '_' instead of '.' */
        "lok_abcdefgh234.AABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* prefix 11 */
        "lok_abcdefgh2345a.BCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* prefix 13 */
        "lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_",   /* secret 42 */
        "lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0A", /* secret 44 */
        "lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0 ", /* trailing blank */
        "lok_abcdefgh2341.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* '1' is not base32 */
        "lok_abcdefgh2348.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* '8' is not base32 */
        "lok_Abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0",  /* upper-case prefix */
        "lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn+/0",  /* base64, not url */
        "lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_=",  /* padding */
        "lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_1",  /* spare bits set */
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(parse(bad[i]), -EINVAL, "accepted '%s'", bad[i]);

    /* The length is the caller's: a token followed by more bytes is not the token. */
    char prefix[AUTH_KEY_PREFIX_LEN + 1], secret[AUTH_KEY_SECRET_LEN + 1];
    cr_expect_eq(auth_key_parse(good, strlen(good) - 1, prefix, secret), -EINVAL);
    cr_expect_eq(auth_key_parse(NULL, AUTH_KEY_TOKEN_LEN, prefix, secret), -EINVAL);
}

Test(auth_key, hmac_matches_rfc4231_test_case_2)
{
    char hex[AUTH_KEY_HASH_HEX + 1];

    /* Expected value from `openssl dgst -sha256 -hmac Jefe`, as printed in RFC 4231. */
    cr_assert_eq(auth_key_hash("Jefe", 4, "what do ya want for nothing?", hex), 0);
    cr_expect_str_eq(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

Test(auth_key, hash_needs_a_pepper)
{
    char hex[AUTH_KEY_HASH_HEX + 1];

    cr_expect_eq(auth_key_hash("", 0, "secret", hex), -EINVAL);
    cr_expect_eq(auth_key_hash(NULL, 8, "secret", hex), -EINVAL);
}

Test(auth_key, verify)
{
    char token[AUTH_KEY_TOKEN_LEN + 1], prefix[AUTH_KEY_PREFIX_LEN + 1];
    char secret[AUTH_KEY_SECRET_LEN + 1], hex[AUTH_KEY_HASH_HEX + 1], other[sizeof(hex)];

    cr_assert_eq(auth_key_generate(token, prefix), 0);
    cr_assert_eq(auth_key_parse(token, strlen(token), prefix, secret), 0);
    cr_assert_eq(auth_key_hash(pepper, sizeof(pepper) - 1, secret, hex), 0);
    cr_expect_eq(strspn(hex, "0123456789abcdef"), AUTH_KEY_HASH_HEX, "%s", hex);

    cr_expect(auth_key_verify(pepper, sizeof(pepper) - 1, secret, hex));

    /* One character of the secret changed. */
    char wrong[sizeof(secret)];
    memcpy(wrong, secret, sizeof(secret));
    wrong[10] = wrong[10] == 'A' ? 'B' : 'A';
    cr_expect_not(auth_key_verify(pepper, sizeof(pepper) - 1, wrong, hex));

    /* Another pepper, a changed stored hash, a truncated or upper-cased one. */
    cr_expect_not(auth_key_verify("another pepper", 14, secret, hex));
    memcpy(other, hex, sizeof(hex));
    other[63] = other[63] == '0' ? '1' : '0';
    cr_expect_not(auth_key_verify(pepper, sizeof(pepper) - 1, secret, other));
    memcpy(other, hex, sizeof(hex));
    other[63] = '\0';
    cr_expect_not(auth_key_verify(pepper, sizeof(pepper) - 1, secret, other));
    cr_expect_not(auth_key_verify(pepper, sizeof(pepper) - 1, secret, ""));
    cr_expect_not(auth_key_verify(pepper, sizeof(pepper) - 1, secret, NULL));
    cr_expect_not(auth_key_verify("", 0, secret, hex));
}

static void bearer_ok(const char *header, const char *want)
{
    const char *tok = NULL;
    size_t len = 0;

    cr_assert_eq(auth_bearer_token(header, &tok, &len), 0, "rejected '%s'", header);
    cr_expect_eq(len, strlen(want), "'%s'", header);
    cr_expect_eq(strncmp(tok, want, len), 0, "'%s'", header);
    cr_expect(tok >= header && tok + len <= header + strlen(header), "points into the header");
}

Test(auth_key, bearer_accepts)
{
    bearer_ok("Bearer lok_abcdefgh2345.xyz", "lok_abcdefgh2345.xyz");
    bearer_ok("bearer abc", "abc");
    bearer_ok("BEARER abc", "abc");
    bearer_ok("Bearer    abc", "abc");
    bearer_ok("Bearer eyJhbGciOi.eyJzdWIi.c2ln+/~_-==", "eyJhbGciOi.eyJzdWIi.c2ln+/~_-==");
    bearer_ok("Bearer lok_abcdefgh2345.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn-_0", good);
}

Test(auth_key, bearer_rejects)
{
    static const char *const bad[] = {
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Bearerabc",
        "Bearer\tabc",
        "Basic dXNlcjpwYXNz",
        "Bearers abc",
        " Bearer abc",
        "Bearer abc ",
        "Bearer abc def",
        "Bearer abc,def",
        "Bearer =abc",
        "Bearer abc=d",
        "Bearer ab\"c",
    };
    const char *tok;
    size_t len;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(auth_bearer_token(bad[i], &tok, &len), -EINVAL, "accepted '%s'", bad[i]);
    cr_expect_eq(auth_bearer_token(NULL, &tok, &len), -EINVAL);
}
