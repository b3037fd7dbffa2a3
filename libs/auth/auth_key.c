/* auth_key.c: machine API keys `lok_<prefix>.<secret>`: generation, strict parsing, peppered
 * HMAC-SHA256 hashing and constant-time verification. */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth_key.h"
#include "svc_util.h"

#define SCHEME_LEN   4
#define SECRET_BYTES 32

static const char base32_alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
static const char base64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int base64url_index(char c)
{
    const char *p = c ? strchr(base64url_alphabet, c) : NULL;

    return p ? (int)(p - base64url_alphabet) : -1;
}

static bool is_base32(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '2' && c <= '7');
}

int auth_key_parse(const char *token, size_t len, char *ret_prefix, char *ret_secret)
{
    const char *prefix, *secret;

    if (!token || len != AUTH_KEY_TOKEN_LEN || memcmp(token, AUTH_KEY_SCHEME, SCHEME_LEN) != 0)
        return -EINVAL;
    prefix = token + SCHEME_LEN;
    secret = prefix + AUTH_KEY_PREFIX_LEN + 1;
    if (prefix[AUTH_KEY_PREFIX_LEN] != '.')
        return -EINVAL;
    for (size_t i = 0; i < AUTH_KEY_PREFIX_LEN; i++)
        if (!is_base32(prefix[i]))
            return -EINVAL;
    for (size_t i = 0; i < AUTH_KEY_SECRET_LEN; i++) {
        int v = base64url_index(secret[i]);

        if (v < 0)
            return -EINVAL;
        /* 43 characters carry 258 bits for 256: the last character's two spare bits must be
         * zero, so that every secret has exactly one spelling. */
        if (i == AUTH_KEY_SECRET_LEN - 1 && (v & 3) != 0)
            return -EINVAL;
    }

    memcpy(ret_prefix, prefix, AUTH_KEY_PREFIX_LEN);
    ret_prefix[AUTH_KEY_PREFIX_LEN] = '\0';
    memcpy(ret_secret, secret, AUTH_KEY_SECRET_LEN);
    ret_secret[AUTH_KEY_SECRET_LEN] = '\0';
    return 0;
}

/* Unpadded base64url of @len bytes into @out (4*len/3 rounded up characters + NUL). */
static void base64url_encode(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0, i = 0;

    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = base64url_alphabet[v >> 18 & 63];
        out[o++] = base64url_alphabet[v >> 12 & 63];
        out[o++] = base64url_alphabet[v >> 6 & 63];
        out[o++] = base64url_alphabet[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = base64url_alphabet[v >> 18 & 63];
        out[o++] = base64url_alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = base64url_alphabet[v >> 18 & 63];
        out[o++] = base64url_alphabet[v >> 12 & 63];
        out[o++] = base64url_alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
}

int auth_key_generate(char *ret_token, char *ret_prefix)
{
    unsigned char raw[AUTH_KEY_PREFIX_LEN + SECRET_BYTES];
    char *p = ret_token;
    int r;

    r = svc_random_bytes(raw, sizeof(raw));
    if (r < 0)
        goto fail;

    memcpy(p, AUTH_KEY_SCHEME, SCHEME_LEN);
    p += SCHEME_LEN;
    /* 32 divides 256, so the low five bits of a uniform byte are a uniform base32 digit. */
    for (size_t i = 0; i < AUTH_KEY_PREFIX_LEN; i++)
        *p++ = base32_alphabet[raw[i] & 31];
    *p++ = '.';
    base64url_encode(raw + AUTH_KEY_PREFIX_LEN, SECRET_BYTES, p);

    memcpy(ret_prefix, ret_token + SCHEME_LEN, AUTH_KEY_PREFIX_LEN);
    ret_prefix[AUTH_KEY_PREFIX_LEN] = '\0';
fail:
    OPENSSL_cleanse(raw, sizeof(raw));
    return r;
}

int auth_key_hash(const void *pepper, size_t pepper_len, const char *secret,
                  char ret_hex[AUTH_KEY_HASH_HEX + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    /* An empty pepper would make the stored hash a plain SHA-256 of the secret: refuse it. */
    if (!pepper || pepper_len == 0 || pepper_len > INT_MAX || !secret)
        return -EINVAL;
    if (!HMAC(EVP_sha256(), pepper, (int)pepper_len, (const unsigned char *)secret, strlen(secret),
              md, &md_len) ||
        md_len * 2 != AUTH_KEY_HASH_HEX)
        return -EIO;
    for (unsigned int i = 0; i < md_len; i++) {
        ret_hex[2 * i] = hex[md[i] >> 4];
        ret_hex[2 * i + 1] = hex[md[i] & 15];
    }
    ret_hex[AUTH_KEY_HASH_HEX] = '\0';
    OPENSSL_cleanse(md, sizeof(md));
    return 0;
}

bool auth_key_verify(const void *pepper, size_t pepper_len, const char *secret,
                     const char *stored_hex)
{
    char hex[AUTH_KEY_HASH_HEX + 1];

    /* The stored hash's length is not secret, so checking it first leaks nothing. */
    if (!stored_hex || strnlen(stored_hex, AUTH_KEY_HASH_HEX + 1) != AUTH_KEY_HASH_HEX)
        return false;
    if (auth_key_hash(pepper, pepper_len, secret, hex) < 0)
        return false;
    return CRYPTO_memcmp(hex, stored_hex, AUTH_KEY_HASH_HEX) == 0;
}

/* RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
static bool is_b64token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("-._~+/", c));
}

int auth_bearer_token(const char *header, const char **ret_token, size_t *ret_len)
{
    const char *p, *start;

    if (!header || strncasecmp(header, "Bearer", 6) != 0 || header[6] != ' ')
        return -EINVAL;
    for (p = header + 6; *p == ' '; p++)
        ;
    start = p;
    while (is_b64token_char(*p))
        p++;
    if (p == start)
        return -EINVAL;
    while (*p == '=')
        p++;
    /* Anything after the token (a second token, a comma, trailing blanks) is not ours to guess. */
    if (*p != '\0')
        return -EINVAL;

    *ret_token = start;
    *ret_len = (size_t)(p - start);
    return 0;
}
