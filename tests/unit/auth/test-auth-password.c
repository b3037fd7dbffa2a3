/* Passwords: argon2id PHC hashing, verification, malformed and hostile stored hashes, rehash. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "auth_password.h"

static const char password[] = "correct horse battery staple";

static char *hash_ok(const auth_password_params_t *params, const char *pw)
{
    char *phc = NULL;

    cr_assert_eq(auth_password_hash(params, pw, &phc), 0);
    cr_assert_not_null(phc);
    return phc;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

Test(auth_password, hash_is_argon2id_phc_with_owasp_defaults)
{
    char *phc = hash_ok(NULL, password);
    const char *prefix = "$argon2id$v=19$m=19456,t=2,p=1$";
    const char *salt = phc + strlen(prefix), *dollar = strchr(salt, '$');

    cr_assert_eq(strncmp(phc, prefix, strlen(prefix)), 0, "%s", phc);
    cr_assert_not_null(dollar, "%s", phc);
    /* 16 bytes of salt and 32 of hash in unpadded base64. */
    cr_expect_eq(dollar - salt, 22, "%s", phc);
    cr_expect_eq(strlen(dollar + 1), 43, "%s", phc);
    cr_expect_null(strchr(salt, '='), "%s", phc); /* no padding */
    cr_expect_eq(auth_password_verify(phc, password), 0);
    free(phc);
}

Test(auth_password, same_password_gets_a_different_salt_each_time)
{
    char *a = hash_ok(NULL, password), *b = hash_ok(NULL, password);

    cr_expect_str_neq(a, b);
    cr_expect_eq(auth_password_verify(a, password), 0);
    cr_expect_eq(auth_password_verify(b, password), 0);
    free(a);
    free(b);
}

Test(auth_password, wrong_password_is_refused)
{
    char *phc = hash_ok(NULL, password);

    cr_expect_eq(auth_password_verify(phc, "correct horse battery stapler"), -EACCES);
    cr_expect_eq(auth_password_verify(phc, "Correct horse battery staple"), -EACCES);
    cr_expect_eq(auth_password_verify(phc, "correct horse battery"), -EACCES);
    cr_expect_eq(auth_password_verify(phc, ""), -EACCES);
    cr_expect_eq(auth_password_verify(phc, NULL), -EACCES);
    free(phc);
}

Test(auth_password, tampered_hash_or_salt_is_refused)
{
    char *phc = hash_ok(NULL, password);
    char *last = phc + strlen(phc) - 2; /* a hash character with no spare bits */
    char *salt;

    *last = *last == 'A' ? 'B' : 'A';
    cr_expect_eq(auth_password_verify(phc, password), -EACCES, "%s", phc);
    free(phc);

    phc = hash_ok(NULL, password);
    salt = strrchr(phc, '$') - 2;
    *salt = *salt == 'A' ? 'B' : 'A';
    cr_expect_eq(auth_password_verify(phc, password), -EACCES, "%s", phc);
    free(phc);
}

Test(auth_password, empty_and_too_long_passwords_are_refused)
{
    char *phc = NULL, *pw = malloc(AUTH_PASSWORD_MAX_LEN + 2);

    cr_assert_not_null(pw);
    cr_expect_eq(auth_password_hash(NULL, "", &phc), -EINVAL);
    cr_expect_eq(auth_password_hash(NULL, NULL, &phc), -EINVAL);
    memset(pw, 'x', AUTH_PASSWORD_MAX_LEN + 1);
    pw[AUTH_PASSWORD_MAX_LEN + 1] = '\0';
    cr_expect_eq(auth_password_hash(NULL, pw, &phc), -E2BIG);
    cr_expect_null(phc);

    /* Exactly the maximum is fine, and one byte more never verifies against it. */
    pw[AUTH_PASSWORD_MAX_LEN] = '\0';
    phc = hash_ok(NULL, pw);
    cr_expect_eq(auth_password_verify(phc, pw), 0);
    pw[AUTH_PASSWORD_MAX_LEN] = 'x';
    cr_expect_eq(auth_password_verify(phc, pw), -EACCES);
    free(phc);
    free(pw);
}

Test(auth_password, weak_or_excessive_parameters_are_refused_for_hashing)
{
    const auth_password_params_t bad[] = {
        {.m_kib = 19455, .t = 2, .p = 1},
        {.m_kib = 19456, .t = 1, .p = 1},
        {.m_kib = 19456, .t = 2, .p = 0},
        {.m_kib = AUTH_PASSWORD_M_KIB_MAX + 1, .t = 2, .p = 1},
        {.m_kib = 19456, .t = AUTH_PASSWORD_T_MAX + 1, .p = 1},
        {.m_kib = 19456, .t = 2, .p = AUTH_PASSWORD_P_MAX + 1},
    };
    char *phc = NULL;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(auth_password_hash(&bad[i], password, &phc), -EINVAL, "case %zu", i);
    cr_expect_null(phc);
}

Test(auth_password, stronger_parameters_are_written_and_verified)
{
    const auth_password_params_t pp = {.m_kib = 32768, .t = 3, .p = 2};
    char *phc = hash_ok(&pp, password);

    cr_expect_eq(strncmp(phc, "$argon2id$v=19$m=32768,t=3,p=2$", 31), 0, "%s", phc);
    cr_expect_eq(auth_password_verify(phc, password), 0);
    cr_expect_eq(auth_password_needs_rehash(phc, &pp), 0);
    cr_expect_eq(auth_password_needs_rehash(phc, NULL), 1);
    free(phc);
}

Test(auth_password, malformed_or_foreign_phc_strings_are_einval)
{
    char *phc = hash_ok(NULL, password);
    const char *tail = strchr(phc + 1, '$'); /* "$v=19$m=..." */
    char buf[256];
    const char *bad[] = {
        "",
        "argon2id",
        "$argon2id$",
        "$argon2id$v=19$m=19456,t=2,p=1$",
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$",
        "$argon2id$v=19$m=19456,t=2$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=019456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=-1,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA==$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=2,p=1$c29t$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=16$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "$bcrypt$2b$12$abcdefghijklmnopqrstuu",
    };

    cr_assert_not_null(tail);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_expect_eq(auth_password_verify(bad[i], password), -EINVAL, "%s", bad[i]);
        cr_expect_eq(auth_password_needs_rehash(bad[i], NULL), -EINVAL, "%s", bad[i]);
    }
    cr_expect_eq(auth_password_verify(NULL, password), -EINVAL);

    /* The same valid hash under another argon2 variant's name is refused, not verified. */
    snprintf(buf, sizeof(buf), "$argon2i%s", tail);
    cr_expect_eq(auth_password_verify(buf, password), -EINVAL, "%s", buf);
    snprintf(buf, sizeof(buf), "$argon2d%s", tail);
    cr_expect_eq(auth_password_verify(buf, password), -EINVAL, "%s", buf);
    /* ... and trailing data after a valid hash too. */
    snprintf(buf, sizeof(buf), "%s$", phc);
    cr_expect_eq(auth_password_verify(buf, password), -EINVAL, "%s", buf);
    free(phc);
}

Test(auth_password, stored_hash_with_huge_cost_is_refused_without_running_it)
{
    /* 4 GiB and 2^32-1 passes: argon2 would try to allocate or spin for minutes. */
    const char *hostile[] = {
        "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$"
        "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=4294967295,p=1$c29tZXNhbHRzb21lc2FsdA$"
        "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=2,p=255$c29tZXNhbHRzb21lc2FsdA$"
        "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=99999999999,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$"
        "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
    };
    struct timespec t0;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++)
        cr_expect_eq(auth_password_verify(hostile[i], password), -EINVAL, "%s", hostile[i]);
    cr_expect_lt(seconds_since(&t0), 0.5);
}

Test(auth_password, needs_rehash_compares_with_current_parameters)
{
    const auth_password_params_t more_memory = {.m_kib = 65536, .t = 2, .p = 1};
    const auth_password_params_t more_passes = {.m_kib = 19456, .t = 3, .p = 1};
    char *phc = hash_ok(NULL, password);

    cr_expect_eq(auth_password_needs_rehash(phc, NULL), 0);
    cr_expect_eq(auth_password_needs_rehash(phc, &more_memory), 1);
    cr_expect_eq(auth_password_needs_rehash(phc, &more_passes), 1);
    /* A hash with a shorter salt than ours (8 bytes), still verifiable, should be redone. */
    cr_expect_eq(
        auth_password_needs_rehash(
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
            NULL),
        1);
    free(phc);
}
