/* auth_password.c: argon2id password hashing in PHC strings, with bounded verification. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <argon2.h>
#include <openssl/crypto.h>

#include "auth_password.h"
#include "svc_util.h"

#define PHC_PREFIX "$argon2id$v=19$m="

/* The parts of a PHC string we check before letting libargon2 near it. */
typedef struct phc {
    uint32_t m_kib, t, p;
    size_t salt_len, hash_len; /* decoded bytes */
} phc_t;

static bool is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* A decimal without sign or leading zero, at most 10 digits, then @sep. */
static int parse_u32(const char **p, char sep, uint32_t *ret)
{
    const char *s = *p;
    uint64_t v = 0;
    size_t n = 0;

    if (s[0] == '0' && s[1] != sep)
        return -EINVAL;
    for (; s[n] >= '0' && s[n] <= '9'; n++) {
        if (n == 10)
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[n] - '0');
    }
    if (n == 0 || s[n] != sep || v > UINT32_MAX)
        return -EINVAL;
    *ret = (uint32_t)v;
    *p = s + n + 1;
    return 0;
}

/* Unpadded base64 up to @sep ('\0' for the last field): its decoded length. */
static int parse_b64(const char **p, char sep, size_t *ret_len)
{
    const char *s = *p;
    size_t n = 0;

    while (is_b64(s[n]))
        n++;
    if (s[n] != sep || n % 4 == 1)
        return -EINVAL;
    *ret_len = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    *p = s + n + (sep ? 1 : 0);
    return 0;
}

static int phc_parse(const char *s, phc_t *ret)
{
    phc_t h;

    if (!s || strncmp(s, PHC_PREFIX, strlen(PHC_PREFIX)) != 0)
        return -EINVAL;
    s += strlen(PHC_PREFIX);
    if (parse_u32(&s, ',', &h.m_kib) < 0 || strncmp(s, "t=", 2) != 0)
        return -EINVAL;
    s += 2;
    if (parse_u32(&s, ',', &h.t) < 0 || strncmp(s, "p=", 2) != 0)
        return -EINVAL;
    s += 2;
    if (parse_u32(&s, '$', &h.p) < 0 || parse_b64(&s, '$', &h.salt_len) < 0 ||
        parse_b64(&s, '\0', &h.hash_len) < 0)
        return -EINVAL;
    if (h.m_kib > AUTH_PASSWORD_M_KIB_MAX || h.t == 0 || h.t > AUTH_PASSWORD_T_MAX || h.p == 0 ||
        h.p > AUTH_PASSWORD_P_MAX || h.m_kib < 8 * h.p || h.salt_len < 8 || h.salt_len > 64 ||
        h.hash_len < 16 || h.hash_len > 64)
        return -EINVAL;
    *ret = h;
    return 0;
}

static bool params_ok(const auth_password_params_t *pp)
{
    return pp->m_kib >= AUTH_PASSWORD_M_KIB_MIN && pp->m_kib <= AUTH_PASSWORD_M_KIB_MAX &&
           pp->t >= AUTH_PASSWORD_T_MIN && pp->t <= AUTH_PASSWORD_T_MAX && pp->p >= 1 &&
           pp->p <= AUTH_PASSWORD_P_MAX;
}

int auth_password_hash(const auth_password_params_t *params, const char *password, char **ret_phc)
{
    const auth_password_params_t pp = params ? *params : AUTH_PASSWORD_PARAMS_DEFAULT;
    unsigned char salt[AUTH_PASSWORD_SALT_LEN];
    char *phc = NULL;
    size_t len, phc_len;
    int r;

    if (!password || !ret_phc || !params_ok(&pp))
        return -EINVAL;
    len = strnlen(password, AUTH_PASSWORD_MAX_LEN + 1);
    if (len == 0)
        return -EINVAL;
    if (len > AUTH_PASSWORD_MAX_LEN)
        return -E2BIG;

    r = svc_random_bytes(salt, sizeof(salt));
    if (r < 0)
        goto fail;
    phc_len =
        argon2_encodedlen(pp.t, pp.m_kib, pp.p, sizeof(salt), AUTH_PASSWORD_HASH_LEN, Argon2_id);
    phc = malloc(phc_len);
    if (!phc) {
        r = -ENOMEM;
        goto fail;
    }
    r = argon2id_hash_encoded(pp.t, pp.m_kib, pp.p, password, len, salt, sizeof(salt),
                              AUTH_PASSWORD_HASH_LEN, phc, phc_len);
    if (r != ARGON2_OK) {
        r = r == ARGON2_MEMORY_ALLOCATION_ERROR ? -ENOMEM : -EIO;
        goto fail;
    }
    *ret_phc = phc;
    phc = NULL;
    r = 0;
fail:
    OPENSSL_cleanse(salt, sizeof(salt));
    free(phc);
    return r;
}

int auth_password_verify(const char *phc, const char *password)
{
    phc_t h;
    size_t len;
    int r;

    if (phc_parse(phc, &h) < 0)
        return -EINVAL;
    /* Such a password cannot have been stored: no need to spend 19 MiB to say no. */
    len = password ? strnlen(password, AUTH_PASSWORD_MAX_LEN + 1) : 0;
    if (len == 0 || len > AUTH_PASSWORD_MAX_LEN)
        return -EACCES;

    r = argon2id_verify(phc, password, len);
    switch (r) {
    case ARGON2_OK:
        return 0;
    case ARGON2_VERIFY_MISMATCH:
        return -EACCES;
    case ARGON2_MEMORY_ALLOCATION_ERROR:
        return -ENOMEM;
    default:
        return -EINVAL;
    }
}

int auth_password_needs_rehash(const char *phc, const auth_password_params_t *params)
{
    const auth_password_params_t pp = params ? *params : AUTH_PASSWORD_PARAMS_DEFAULT;
    phc_t h;

    if (phc_parse(phc, &h) < 0)
        return -EINVAL;
    return h.m_kib != pp.m_kib || h.t != pp.t || h.p != pp.p ||
           h.salt_len != AUTH_PASSWORD_SALT_LEN || h.hash_len != AUTH_PASSWORD_HASH_LEN;
}
