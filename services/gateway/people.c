/* people.c: what the /auth/ endpoints accept from people, and their refresh tokens.
 *
 * A refresh token is 32 random bytes in base64url, handed to the client once; the database keeps
 * only its SHA-256, so a leaked table lets nobody sign in. A plain hash (no salt, no pepper) is
 * enough here because the token is 256 random bits: there is nothing to guess.
 */
#include <errno.h>
#include <string.h>

#include <openssl/sha.h>

#include "auth_password.h"
#include "gateway.h"
#include "svc_util.h"

const char *gw_people_email_check(const char *email)
{
    const char *at = strchr(email, '@');
    size_t len = strlen(email);

    if (len == 0)
        return "must not be empty";
    if (len > GW_EMAIL_MAX)
        return "must be at most 254 bytes";
    if (!at || strchr(at + 1, '@'))
        return "must contain exactly one '@'";
    if (at == email || at[1] == '\0')
        return "needs a local part before '@' and a domain after it";
    for (const unsigned char *c = (const unsigned char *)email; *c; c++)
        if (*c <= ' ' || *c == 0x7f)
            return "must not contain spaces or control characters";
    if (at[1] == '.' || email[len - 1] == '.')
        return "has a malformed domain";
    return NULL;
}

const char *gw_people_slug_check(const char *slug)
{
    size_t len = strlen(slug);

    if (len == 0 || len > 63)
        return "must be 1 to 63 characters";
    for (size_t i = 0; i < len; i++) {
        char c = slug[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0);

        if (!ok)
            return "must be lower-case letters, digits and '-', not starting with '-'";
    }
    return NULL;
}

const char *gw_people_password_check(const char *password, size_t len)
{
    if (strlen(password) != len)
        return "must not contain a NUL character";
    if (len < GW_PASSWORD_MIN)
        return "must be at least 12 bytes long";
    if (len > AUTH_PASSWORD_MAX_LEN)
        return "must be at most 1024 bytes long";
    return NULL;
}

const char *gw_people_name_check(const char *name)
{
    size_t len = strlen(name);

    if (len == 0)
        return "must not be empty";
    if (len > GW_NAME_MAX)
        return "must be at most 200 bytes";
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        if (*c < ' ' || *c == 0x7f)
            return "must not contain control characters";
    return NULL;
}

void gw_refresh_token_hash(const char *token, size_t len, char ret_hash[GW_REFRESH_HASH_HEX + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)token, len, md);
    for (size_t i = 0; i < sizeof(md); i++) {
        ret_hash[2 * i] = hex[md[i] >> 4];
        ret_hash[2 * i + 1] = hex[md[i] & 15];
    }
    ret_hash[GW_REFRESH_HASH_HEX] = '\0';
}

int gw_refresh_token_new(char ret_token[GW_REFRESH_TOKEN_LEN + 1],
                         char ret_hash[GW_REFRESH_HASH_HEX + 1])
{
    static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[33] = {0}; /* 32 random bytes, padded to whole 3-byte groups */
    size_t o = 0;
    int rc;

    rc = svc_random_bytes(raw, 32);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < sizeof(raw); i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];

        for (int k = 3; k >= 0 && o < GW_REFRESH_TOKEN_LEN; k--)
            ret_token[o++] = b64url[(v >> (6 * k)) & 63];
    }
    ret_token[GW_REFRESH_TOKEN_LEN] = '\0';
    explicit_bzero(raw, sizeof(raw));
    gw_refresh_token_hash(ret_token, GW_REFRESH_TOKEN_LEN, ret_hash);
    return 0;
}
