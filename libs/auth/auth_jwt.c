/* auth_jwt.c: issuing and verifying JWT access tokens with pinned algorithms, on libjwt for the
 * signatures and jansson for everything we check ourselves. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include "auth_jwt.h"
#include "svc_util.h"

#define JWKS_FILE_MAX  (1024 * 1024)
#define RSA_BITS_MIN   2048
#define P256_COORD_LEN 32
#define LEEWAY_MAX_S   3600
/* NumericDate values beyond this are not dates but attempts at overflow. */
#define TIME_MAX ((int64_t)1 << 53)

struct auth_jwt_key {
    auth_jwt_alg_t alg;
    char *kid;           /* NULL: none */
    unsigned char *sign; /* HS256 secret or private key PEM; NULL for a public key */
    size_t sign_len;
    unsigned char *check; /* HS256 secret or public key PEM (NUL-terminated) */
    size_t check_len;
};

typedef struct role_map {
    char *name;
    unsigned bit;
} role_map_t;

struct auth_jwt_verifier {
    char *iss, *aud;
    int64_t leeway_s;
    auth_jwt_key_t **keys;
    size_t n_keys;
    char *org_claim, *roles_claim; /* NULL: "org", "roles" */
    role_map_t *role_map;          /* an external issuer's group names */
    size_t n_role_map;
};

static const struct {
    const char *name;
    jwt_alg_t jwt;
} algs[] = {
    [AUTH_JWT_HS256] = {"HS256", JWT_ALG_HS256},
    [AUTH_JWT_RS256] = {"RS256", JWT_ALG_RS256},
    [AUTH_JWT_ES256] = {"ES256", JWT_ALG_ES256},
};

static const struct {
    const char *name;
    unsigned bit;
} roles[] = {
    {"admin", AUTH_ROLE_ADMIN},
    {"operator", AUTH_ROLE_OPERATOR},
    {"viewer", AUTH_ROLE_VIEWER},
};

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64url_index(char c)
{
    const char *p = c ? strchr(b64url, c) : NULL;

    return p ? (int)(p - b64url) : -1;
}

/* Unpadded base64url of @len characters into a malloc'd buffer (NUL-terminated for JSON). */
static int b64url_decode(const char *in, size_t len, unsigned char **ret, size_t *ret_len)
{
    unsigned char *out;
    unsigned acc = 0;
    size_t o = 0;
    int bits = 0;

    if (len % 4 == 1)
        return -EINVAL;
    out = malloc(len / 4 * 3 + 3);
    if (!out)
        return -ENOMEM;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_index(in[i]);

        if (v < 0) {
            free(out);
            return -EINVAL;
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    out[o] = '\0';
    *ret = out;
    *ret_len = o;
    return 0;
}

static bool kid_valid(const char *kid)
{
    size_t n = kid ? strnlen(kid, AUTH_JWT_KID_MAX + 1) : 0;

    if (n == 0 || n > AUTH_JWT_KID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (kid[i] < 0x21 || kid[i] > 0x7e)
            return false;
    return true;
}

void auth_jwt_key_free(auth_jwt_key_t *key)
{
    if (!key)
        return;
    if (key->sign)
        OPENSSL_clear_free(key->sign, key->sign_len);
    if (key->check)
        OPENSSL_clear_free(key->check, key->check_len);
    free(key->kid);
    free(key);
}

static int key_alloc(auth_jwt_alg_t alg, const char *kid, auth_jwt_key_t **ret)
{
    auth_jwt_key_t *key;

    if (kid && !kid_valid(kid))
        return -EINVAL;
    key = calloc(1, sizeof(*key));
    if (!key)
        return -ENOMEM;
    key->alg = alg;
    if (kid && !(key->kid = strdup(kid))) {
        free(key);
        return -ENOMEM;
    }
    *ret = key;
    return 0;
}

int auth_jwt_key_new_hs256(const void *secret, size_t secret_len, const char *kid,
                           auth_jwt_key_t **ret_key)
{
    auth_jwt_key_t *key = NULL;
    int r;

    /* libjwt takes the key length as an int. */
    if (!secret || secret_len < AUTH_JWT_HS_SECRET_MIN || secret_len > 4096 || !ret_key)
        return -EINVAL;
    r = key_alloc(AUTH_JWT_HS256, kid, &key);
    if (r < 0)
        return r;
    key->sign = malloc(secret_len);
    key->check = malloc(secret_len);
    if (!key->sign || !key->check) {
        auth_jwt_key_free(key);
        return -ENOMEM;
    }
    memcpy(key->sign, secret, secret_len);
    memcpy(key->check, secret, secret_len);
    key->sign_len = key->check_len = secret_len;
    *ret_key = key;
    return 0;
}

/* PEM of @pkey (private when @private) into a malloc'd, NUL-terminated buffer. */
static int pem_write(EVP_PKEY *pkey, bool private, unsigned char **ret, size_t *ret_len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data;
    long n;
    int r = -ENOMEM;

    if (!bio)
        return -ENOMEM;
    if (!(private ? PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL)
                  : PEM_write_bio_PUBKEY(bio, pkey)))
        goto fail;
    n = BIO_get_mem_data(bio, &data);
    if (n <= 0)
        goto fail;
    *ret = malloc((size_t)n + 1);
    if (!*ret)
        goto fail;
    memcpy(*ret, data, (size_t)n);
    (*ret)[n] = '\0';
    *ret_len = (size_t)n;
    r = 0;
fail:
    /* The private PEM went through the BIO's buffer: wipe it. */
    if (bio && BIO_get_mem_data(bio, &data) > 0)
        OPENSSL_cleanse(data, (size_t)BIO_get_mem_data(bio, &data));
    BIO_free(bio);
    return r;
}

/* A key from @pkey after checking it fits @alg; @private says whether to keep a signing PEM. */
static int key_from_pkey(auth_jwt_alg_t alg, EVP_PKEY *pkey, bool private, const char *kid,
                         auth_jwt_key_t **ret_key)
{
    auth_jwt_key_t *key = NULL;
    char group[32];
    int r;

    if (alg == AUTH_JWT_RS256) {
        if (!EVP_PKEY_is_a(pkey, "RSA") || EVP_PKEY_get_bits(pkey) < RSA_BITS_MIN)
            return -EINVAL;
    } else if (alg == AUTH_JWT_ES256) {
        if (!EVP_PKEY_is_a(pkey, "EC") ||
            !EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                            NULL) ||
            strcmp(group, "prime256v1") != 0)
            return -EINVAL;
    } else {
        return -EINVAL;
    }

    r = key_alloc(alg, kid, &key);
    if (r < 0)
        return r;
    /* libjwt verifies with PEM_read_bio_PUBKEY, so even a private key gets its public PEM. */
    r = pem_write(pkey, false, &key->check, &key->check_len);
    if (r == 0 && private)
        r = pem_write(pkey, true, &key->sign, &key->sign_len);
    if (r < 0) {
        auth_jwt_key_free(key);
        return r;
    }
    *ret_key = key;
    return 0;
}

/* Never prompt on a terminal for an encrypted key's passphrase: fail instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

int auth_jwt_key_new_pem(auth_jwt_alg_t alg, const char *pem, size_t pem_len, const char *kid,
                         auth_jwt_key_t **ret_key)
{
    EVP_PKEY *pkey = NULL;
    bool private = true;
    BIO *bio;
    int r;

    if (!pem || pem_len == 0 || pem_len > INT32_MAX || !ret_key)
        return -EINVAL;
    bio = BIO_new_mem_buf(pem, (int)pem_len);
    if (!bio)
        return -ENOMEM;
    pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    if (!pkey) {
        private = false;
        (void)BIO_reset(bio);
        pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    }
    r = pkey ? key_from_pkey(alg, pkey, private, kid, ret_key) : -EINVAL;
    /* Failed attempts leave errors queued; they are ours, not the next OpenSSL user's. */
    ERR_clear_error();
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    return r;
}

/* Reads a whole small file into a NUL-terminated malloc'd buffer. */
static int file_read(const char *path, size_t max, char **ret, size_t *ret_len)
{
    FILE *f = NULL;
    char *buf = NULL;
    size_t n;
    int r;

    if (!path)
        return -EINVAL;
    f = fopen(path, "re");
    if (!f)
        return -errno;
    buf = malloc(max + 1);
    if (!buf) {
        r = -ENOMEM;
        goto fail;
    }
    n = fread(buf, 1, max + 1, f);
    if (ferror(f)) {
        r = -EIO;
        goto fail;
    }
    if (n > max) {
        r = -EFBIG;
        goto fail;
    }
    buf[n] = '\0';
    *ret = buf;
    *ret_len = n;
    buf = NULL;
    r = 0;
fail:
    if (buf)
        OPENSSL_clear_free(buf, max + 1);
    fclose(f);
    return r;
}

int auth_jwt_key_new_pem_file(auth_jwt_alg_t alg, const char *path, const char *kid,
                              auth_jwt_key_t **ret_key)
{
    char *pem = NULL;
    size_t len = 0;
    int r;

    r = file_read(path, 64 * 1024, &pem, &len);
    if (r < 0)
        return r;
    r = auth_jwt_key_new_pem(alg, pem, len, kid, ret_key);
    OPENSSL_clear_free(pem, 64 * 1024 + 1);
    return r;
}

static int key_dup(const auth_jwt_key_t *key, auth_jwt_key_t **ret)
{
    auth_jwt_key_t *k = NULL;
    int r;

    r = key_alloc(key->alg, key->kid, &k);
    if (r < 0)
        return r;
    k->check = malloc(key->check_len + 1);
    if (key->sign)
        k->sign = malloc(key->sign_len + 1);
    if (!k->check || (key->sign && !k->sign)) {
        auth_jwt_key_free(k);
        return -ENOMEM;
    }
    memcpy(k->check, key->check, key->check_len + (key->alg == AUTH_JWT_HS256 ? 0 : 1));
    k->check_len = key->check_len;
    if (key->sign) {
        memcpy(k->sign, key->sign, key->sign_len + (key->alg == AUTH_JWT_HS256 ? 0 : 1));
        k->sign_len = key->sign_len;
    }
    *ret = k;
    return 0;
}

static bool nonempty(const char *s)
{
    return s && *s;
}

int auth_jwt_issue(const auth_jwt_key_t *key, const auth_jwt_claims_t *claims, int64_t now,
                   char **ret_token)
{
    json_t *payload = NULL, *role_list = NULL;
    char *payload_json = NULL, *token = NULL;
    jwt_t *jwt = NULL;
    char jti[37];
    int r;

    if (!key || !claims || !ret_token || !nonempty(claims->sub) || !nonempty(claims->iss) ||
        !nonempty(claims->aud) || claims->ttl_s <= 0 || now < 0 || claims->ttl_s > TIME_MAX - now ||
        (claims->jti && !*claims->jti) || (claims->org && !*claims->org))
        return -EINVAL;
    if (!key->sign)
        return -ENOKEY;
    if (!claims->jti) {
        r = svc_uuid4(jti);
        if (r < 0)
            return r;
    }

    r = -ENOMEM;
    payload = json_object();
    role_list = json_array();
    if (!payload || !role_list)
        goto fail;
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
        if ((claims->roles & roles[i].bit) &&
            json_array_append_new(role_list, json_string(roles[i].name)) < 0)
            goto fail;
    if (json_object_set_new(payload, "iss", json_string(claims->iss)) < 0 ||
        json_object_set_new(payload, "sub", json_string(claims->sub)) < 0 ||
        json_object_set_new(payload, "aud", json_string(claims->aud)) < 0 ||
        (claims->org && json_object_set_new(payload, "org", json_string(claims->org)) < 0) ||
        json_object_set(payload, "roles", role_list) < 0 ||
        json_object_set_new(payload, "iat", json_integer(now)) < 0 ||
        json_object_set_new(payload, "exp", json_integer(now + claims->ttl_s)) < 0 ||
        json_object_set_new(payload, "jti", json_string(claims->jti ? claims->jti : jti)) < 0)
        goto fail;
    /* json_string() refuses invalid UTF-8, which json_object_set_new() reports as an error. */
    payload_json = json_dumps(payload, JSON_COMPACT);
    if (!payload_json)
        goto fail;

    if (jwt_new(&jwt) != 0)
        goto fail;
    r = -EIO;
    if (jwt_add_grants_json(jwt, payload_json) != 0 ||
        (key->kid && jwt_add_header(jwt, "kid", key->kid) != 0) ||
        jwt_set_alg(jwt, algs[key->alg].jwt, key->sign, (int)key->sign_len) != 0)
        goto fail;
    token = jwt_encode_str(jwt);
    if (!token)
        goto fail;
    *ret_token = token;
    r = 0;
fail:
    jwt_free(jwt);
    free(payload_json);
    json_decref(role_list);
    json_decref(payload);
    return r;
}

int auth_jwt_verifier_new(const char *iss, const char *aud, auth_jwt_verifier_t **ret_verifier)
{
    auth_jwt_verifier_t *v;

    if (!nonempty(iss) || !nonempty(aud) || !ret_verifier)
        return -EINVAL;
    v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->iss = strdup(iss);
    v->aud = strdup(aud);
    v->leeway_s = AUTH_JWT_LEEWAY_S;
    if (!v->iss || !v->aud) {
        auth_jwt_verifier_free(v);
        return -ENOMEM;
    }
    *ret_verifier = v;
    return 0;
}

void auth_jwt_verifier_free(auth_jwt_verifier_t *verifier)
{
    if (!verifier)
        return;
    for (size_t i = 0; i < verifier->n_keys; i++)
        auth_jwt_key_free(verifier->keys[i]);
    free(verifier->keys);
    for (size_t i = 0; i < verifier->n_role_map; i++)
        free(verifier->role_map[i].name);
    free(verifier->role_map);
    free(verifier->org_claim);
    free(verifier->roles_claim);
    free(verifier->iss);
    free(verifier->aud);
    free(verifier);
}

int auth_jwt_verifier_set_leeway(auth_jwt_verifier_t *verifier, int64_t leeway_s)
{
    if (!verifier || leeway_s < 0 || leeway_s > LEEWAY_MAX_S)
        return -EINVAL;
    verifier->leeway_s = leeway_s;
    return 0;
}

int auth_jwt_verifier_set_claims(auth_jwt_verifier_t *verifier, const char *org_claim,
                                 const char *roles_claim)
{
    char *org = NULL, *roles_name = NULL;

    if (!verifier || (org_claim && !*org_claim) || (roles_claim && !*roles_claim))
        return -EINVAL;
    if ((org_claim && !(org = strdup(org_claim))) ||
        (roles_claim && !(roles_name = strdup(roles_claim)))) {
        free(org);
        return -ENOMEM;
    }
    if (org) {
        free(verifier->org_claim);
        verifier->org_claim = org;
    }
    if (roles_name) {
        free(verifier->roles_claim);
        verifier->roles_claim = roles_name;
    }
    return 0;
}

int auth_jwt_verifier_map_role(auth_jwt_verifier_t *verifier, const char *name, unsigned role)
{
    role_map_t *map;
    bool known = false;

    for (size_t k = 0; k < sizeof(roles) / sizeof(roles[0]); k++)
        known |= role == roles[k].bit;
    if (!verifier || !nonempty(name) || !known)
        return -EINVAL;
    for (size_t i = 0; i < verifier->n_role_map; i++)
        if (strcmp(verifier->role_map[i].name, name) == 0)
            return -EEXIST;
    map = realloc(verifier->role_map, (verifier->n_role_map + 1) * sizeof(*map));
    if (!map)
        return -ENOMEM;
    verifier->role_map = map;
    map[verifier->n_role_map].name = strdup(name);
    if (!map[verifier->n_role_map].name)
        return -ENOMEM;
    map[verifier->n_role_map++].bit = role;
    return 0;
}

static bool kid_taken(const auth_jwt_verifier_t *v, const char *kid)
{
    for (size_t i = 0; i < v->n_keys; i++) {
        const char *k = v->keys[i]->kid;

        if ((!k && !kid) || (k && kid && strcmp(k, kid) == 0))
            return true;
    }
    return false;
}

/* Appends @keys (taking them) after checking none collides; on failure the caller keeps them. */
static int verifier_take_keys(auth_jwt_verifier_t *v, auth_jwt_key_t **keys, size_t n)
{
    auth_jwt_key_t **all;

    for (size_t i = 0; i < n; i++) {
        if (kid_taken(v, keys[i]->kid))
            return -EEXIST;
        for (size_t j = 0; j < i; j++)
            if (strcmp(keys[i]->kid, keys[j]->kid) == 0)
                return -EEXIST;
    }
    all = realloc(v->keys, (v->n_keys + n) * sizeof(*all));
    if (!all)
        return -ENOMEM;
    memcpy(all + v->n_keys, keys, n * sizeof(*keys));
    v->keys = all;
    v->n_keys += n;
    return 0;
}

int auth_jwt_verifier_add_key(auth_jwt_verifier_t *verifier, const auth_jwt_key_t *key)
{
    auth_jwt_key_t *k = NULL;
    int r;

    if (!verifier || !key)
        return -EINVAL;
    if (kid_taken(verifier, key->kid))
        return -EEXIST;
    r = key_dup(key, &k);
    if (r < 0)
        return r;
    r = verifier_take_keys(verifier, &k, 1);
    if (r < 0)
        auth_jwt_key_free(k);
    return r;
}

/* A JSON string without embedded NUL, or NULL. */
static const char *json_cstr(const json_t *j)
{
    const char *s = json_string_value(j);

    return s && strlen(s) == json_string_length(j) ? s : NULL;
}

/* Decodes a base64url JWK member into a BIGNUM-ready byte string. */
static int jwk_bytes(const json_t *jwk, const char *name, unsigned char **ret, size_t *ret_len)
{
    const char *s = json_cstr(json_object_get(jwk, name));

    if (!s || !*s)
        return -EINVAL;
    return b64url_decode(s, strlen(s), ret, ret_len);
}

static int jwk_to_pkey(const json_t *jwk, const char *kty, EVP_PKEY **ret)
{
    unsigned char *a = NULL, *b = NULL, point[1 + 2 * P256_COORD_LEN];
    size_t a_len = 0, b_len = 0;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    BIGNUM *n = NULL, *e = NULL;
    bool rsa = strcmp(kty, "RSA") == 0;
    int r;

    r = jwk_bytes(jwk, rsa ? "n" : "x", &a, &a_len);
    if (r == 0)
        r = jwk_bytes(jwk, rsa ? "e" : "y", &b, &b_len);
    if (r < 0)
        goto fail;

    r = -ENOMEM;
    bld = OSSL_PARAM_BLD_new();
    if (!bld)
        goto fail;
    if (rsa) {
        n = BN_bin2bn(a, (int)a_len, NULL);
        e = BN_bin2bn(b, (int)b_len, NULL);
        if (!n || !e || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
            goto fail;
    } else {
        r = -EINVAL;
        if (a_len != P256_COORD_LEN || b_len != P256_COORD_LEN)
            goto fail;
        r = -ENOMEM;
        point[0] = 0x04; /* uncompressed */
        memcpy(point + 1, a, P256_COORD_LEN);
        memcpy(point + 1 + P256_COORD_LEN, b, P256_COORD_LEN);
        if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
            !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)))
            goto fail;
    }
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, rsa ? "RSA" : "EC", NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0)
        goto fail;
    /* For EC this also rejects a point that is not on the curve. */
    r = EVP_PKEY_fromdata(ctx, ret, EVP_PKEY_PUBLIC_KEY, params) > 0 ? 0 : -EINVAL;
fail:
    ERR_clear_error();
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    free(a);
    free(b);
    return r;
}

/* One JWKS entry: 0 with *@ret_key set, 0 with NULL for a key we skip, or -errno. */
static int jwk_to_key(const json_t *jwk, auth_jwt_key_t **ret_key)
{
    const json_t *use = json_object_get(jwk, "use"), *alg_j = json_object_get(jwk, "alg");
    const char *kty = json_cstr(json_object_get(jwk, "kty"));
    const char *alg = json_cstr(alg_j), *crv = json_cstr(json_object_get(jwk, "crv"));
    const char *kid = json_cstr(json_object_get(jwk, "kid"));
    auth_jwt_alg_t a;
    EVP_PKEY *pkey = NULL;
    int r;

    *ret_key = NULL;
    if (!json_is_object(jwk) || !kty || (use && !json_cstr(use)) || (alg_j && !alg))
        return -EINVAL;
    if (use && strcmp(json_string_value(use), "sig") != 0)
        return 0;
    if (strcmp(kty, "RSA") == 0 && (!alg || strcmp(alg, "RS256") == 0))
        a = AUTH_JWT_RS256;
    else if (strcmp(kty, "EC") == 0 && crv && strcmp(crv, "P-256") == 0 &&
             (!alg || strcmp(alg, "ES256") == 0))
        a = AUTH_JWT_ES256;
    else
        return 0;
    if (!kid_valid(kid))
        return -EINVAL;

    r = jwk_to_pkey(jwk, kty, &pkey);
    if (r == 0)
        r = key_from_pkey(a, pkey, false, kid, ret_key);
    EVP_PKEY_free(pkey);
    return r;
}

int auth_jwt_verifier_add_jwks_file(auth_jwt_verifier_t *verifier, const char *path)
{
    auth_jwt_key_t **keys = NULL;
    json_t *root = NULL, *list;
    size_t len = 0, n = 0;
    char *text = NULL;
    int r;

    if (!verifier || !path)
        return -EINVAL;
    r = file_read(path, JWKS_FILE_MAX, &text, &len);
    if (r < 0)
        return r;
    r = -EINVAL;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    list = json_object_get(root, "keys");
    if (!json_is_array(list) || json_array_size(list) == 0)
        goto fail;
    keys = calloc(json_array_size(list), sizeof(*keys));
    if (!keys) {
        r = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < json_array_size(list); i++) {
        r = jwk_to_key(json_array_get(list, i), &keys[n]);
        if (r < 0)
            goto fail;
        if (keys[n])
            n++;
    }
    r = n > 0 ? verifier_take_keys(verifier, keys, n) : -EINVAL;
    if (r == 0)
        n = 0; /* the verifier owns them now */
fail:
    for (size_t i = 0; i < n; i++)
        auth_jwt_key_free(keys[i]);
    free(keys);
    json_decref(root);
    free(text);
    return r;
}

void auth_jwt_verified_free(auth_jwt_verified_t *claims)
{
    if (!claims)
        return;
    free(claims->sub);
    free(claims->org);
    free(claims->jti);
    free(claims);
}

/* A base64url segment holding a JSON object, parsed strictly (duplicate members would let
 * libjwt and us read different values from the same bytes). */
static json_t *segment_json(const char *seg, size_t len)
{
    unsigned char *raw = NULL;
    size_t raw_len = 0;
    json_t *j;

    if (len == 0 || b64url_decode(seg, len, &raw, &raw_len) < 0)
        return NULL;
    j = json_loadb((const char *)raw, raw_len, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static bool json_str_eq(const json_t *j, const char *s)
{
    return json_is_string(j) && json_string_length(j) == strlen(s) &&
           memcmp(json_string_value(j), s, json_string_length(j)) == 0;
}

/* A NumericDate claim: 0 with *@ret set, 1 when absent, -EINVAL when not a sane number. */
static int claim_time(const json_t *payload, const char *name, int64_t *ret)
{
    const json_t *j = json_object_get(payload, name);
    double d;

    if (!j)
        return 1;
    if (json_is_integer(j)) {
        *ret = json_integer_value(j);
    } else if (json_is_real(j)) {
        d = json_real_value(j);
        if (!(d > -(double)TIME_MAX && d < (double)TIME_MAX))
            return -EINVAL;
        *ret = (int64_t)d;
    } else {
        return -EINVAL;
    }
    return *ret > -TIME_MAX && *ret < TIME_MAX ? 0 : -EINVAL;
}

/* The optional string claim @name copied into *@ret: 0, or -EINVAL when not a clean string. */
static int claim_str(const json_t *payload, const char *name, char **ret)
{
    const json_t *j = json_object_get(payload, name);
    const char *s = json_cstr(j);

    *ret = NULL;
    if (!j)
        return 0;
    if (!s || !*s)
        return -EINVAL;
    *ret = strdup(s);
    return *ret ? 0 : -ENOMEM;
}

/* An external issuer's groups, through the verifier's mapping: unmapped names are ignored. */
static int claim_groups(const auth_jwt_verifier_t *v, const json_t *claim, unsigned *ret)
{
    const json_t *item;
    size_t i;

    if (json_is_string(claim)) {
        for (size_t k = 0; k < v->n_role_map; k++)
            if (json_str_eq(claim, v->role_map[k].name))
                *ret |= v->role_map[k].bit;
        return 0;
    }
    if (!json_is_array(claim))
        return -EINVAL;
    json_array_foreach(claim, i, item)
    {
        if (!json_is_string(item))
            return -EINVAL;
        for (size_t k = 0; k < v->n_role_map; k++)
            if (json_str_eq(item, v->role_map[k].name))
                *ret |= v->role_map[k].bit;
    }
    return 0;
}

static int claim_roles(const auth_jwt_verifier_t *v, const json_t *payload, unsigned *ret)
{
    const json_t *list = json_object_get(payload, v->roles_claim ? v->roles_claim : "roles"), *item;
    size_t i, k;

    *ret = 0;
    if (!list)
        return 0;
    if (v->n_role_map > 0)
        return claim_groups(v, list, ret);
    if (!json_is_array(list))
        return -EINVAL;
    json_array_foreach(list, i, item)
    {
        for (k = 0; k < sizeof(roles) / sizeof(roles[0]); k++)
            if (json_str_eq(item, roles[k].name))
                break;
        /* A role we do not know is refused rather than dropped: a token that means more than
         * we understand is not one we should half-honour. */
        if (k == sizeof(roles) / sizeof(roles[0]))
            return -EINVAL;
        *ret |= roles[k].bit;
    }
    return 0;
}

static bool aud_matches(const json_t *aud, const char *expected)
{
    const json_t *item;
    size_t i;

    if (json_is_string(aud))
        return json_str_eq(aud, expected);
    json_array_foreach(aud, i, item)
    {
        if (json_str_eq(item, expected))
            return true;
    }
    return false;
}

static const auth_jwt_key_t *key_select(const auth_jwt_verifier_t *v, const json_t *kid)
{
    if (!kid)
        return v->n_keys == 1 ? v->keys[0] : NULL;
    /* The kid is only ever compared, exactly and with its length, to the ids we configured. */
    if (!json_is_string(kid) || json_string_length(kid) > AUTH_JWT_KID_MAX)
        return NULL;
    for (size_t i = 0; i < v->n_keys; i++)
        if (v->keys[i]->kid && json_str_eq(kid, v->keys[i]->kid))
            return v->keys[i];
    return NULL;
}

/* HS256 is checked here too, because libjwt 1.10 compares MACs with strcmp(), whose timing
 * tells a forger how many leading characters of a guess are right. 0 if the MAC matches. */
static int hs256_check(const auth_jwt_key_t *key, const char *token, size_t signed_len,
                       const char *sig, size_t sig_len)
{
    unsigned char mac[EVP_MAX_MD_SIZE], *given = NULL;
    unsigned int mac_len = 0;
    size_t given_len = 0;
    int r = -EKEYREJECTED;

    if (!HMAC(EVP_sha256(), key->check, (int)key->check_len, (const unsigned char *)token,
              signed_len, mac, &mac_len))
        return -EIO;
    if (b64url_decode(sig, sig_len, &given, &given_len) == 0 && given_len == mac_len &&
        CRYPTO_memcmp(given, mac, mac_len) == 0)
        r = 0;
    free(given);
    return r;
}

#define FAIL(err, why)  \
    do {                \
        r = (err);      \
        reason = (why); \
        goto fail;      \
    } while (0)

int auth_jwt_verify(const auth_jwt_verifier_t *verifier, const char *token, size_t len, int64_t now,
                    auth_jwt_verified_t **ret_claims, const char **ret_reason)
{
    json_t *header = NULL, *payload = NULL;
    auth_jwt_verified_t *out = NULL;
    const auth_jwt_key_t *key;
    const char *reason = "ok", *dot1, *dot2;
    const json_t *alg;
    int64_t exp, t;
    jwt_t *jwt = NULL;
    char *copy = NULL;
    int r;

    if (!verifier || !ret_claims)
        FAIL(-EINVAL, "invalid arguments");
    if (!token || len == 0 || len > AUTH_JWT_TOKEN_MAX || memchr(token, '\0', len))
        FAIL(-EINVAL, "token empty or too long");
    dot1 = memchr(token, '.', len);
    dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        FAIL(-EINVAL, "token is not three dot-separated parts");
    header = segment_json(token, (size_t)(dot1 - token));
    payload = segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (!header || !payload)
        FAIL(-EINVAL, "token header or payload is not base64url JSON");

    /* Choose the key and its one algorithm before libjwt sees the token, and never let libjwt
     * decode without a key: it would then accept any signature. */
    if (json_object_get(header, "crit"))
        FAIL(-EINVAL, "token has critical header parameters");
    key = key_select(verifier, json_object_get(header, "kid"));
    if (!key)
        FAIL(-EKEYREJECTED, "no key for the token's kid");
    alg = json_object_get(header, "alg");
    if (!json_str_eq(alg, algs[key->alg].name))
        FAIL(-EKEYREJECTED, "token alg is not the key's algorithm");

    if (key->alg == AUTH_JWT_HS256 && hs256_check(key, token, (size_t)(dot2 - token), dot2 + 1,
                                                  len - (size_t)(dot2 + 1 - token)) != 0)
        FAIL(-EKEYREJECTED, "bad signature");
    copy = strndup(token, len);
    if (!copy)
        FAIL(-ENOMEM, "out of memory");
    r = jwt_decode(&jwt, copy, key->check, (int)key->check_len);
    if (r == ENOMEM)
        FAIL(-ENOMEM, "out of memory");
    if (r != 0 || !jwt)
        FAIL(-EKEYREJECTED, "bad signature");
    /* An HS256 token keyed with our RSA public PEM passes jwt_decode: check what it checked. */
    if (jwt_get_alg(jwt) != algs[key->alg].jwt)
        FAIL(-EKEYREJECTED, "token alg is not the key's algorithm");

    if (!json_is_string(json_object_get(payload, "iss")) ||
        !json_str_eq(json_object_get(payload, "iss"), verifier->iss))
        FAIL(-EACCES, "wrong issuer");
    if (!aud_matches(json_object_get(payload, "aud"), verifier->aud))
        FAIL(-EACCES, "wrong audience");
    if (claim_time(payload, "exp", &exp) != 0)
        FAIL(-EINVAL, "exp missing or not a number");
    if (exp <= now - verifier->leeway_s)
        FAIL(-ETIME, "token expired");
    r = claim_time(payload, "nbf", &t);
    if (r < 0)
        FAIL(-EINVAL, "nbf not a number");
    if (r == 0 && t > now + verifier->leeway_s)
        FAIL(-ETIME, "token not valid yet");
    r = claim_time(payload, "iat", &t);
    if (r < 0)
        FAIL(-EINVAL, "iat not a number");
    if (r == 0 && t > now + verifier->leeway_s)
        FAIL(-ETIME, "token issued in the future");

    out = calloc(1, sizeof(*out));
    if (!out)
        FAIL(-ENOMEM, "out of memory");
    out->exp = exp;
    out->iat = r == 0 ? t : 0;
    r = claim_str(payload, "sub", &out->sub);
    if (r == 0 && !out->sub)
        r = -EINVAL;
    if (r < 0)
        FAIL(r, "sub missing or not a string");
    r = claim_str(payload, verifier->org_claim ? verifier->org_claim : "org", &out->org);
    if (r < 0)
        FAIL(r, "org not a string");
    r = claim_str(payload, "jti", &out->jti);
    if (r < 0)
        FAIL(r, "jti not a string");
    if (claim_roles(verifier, payload, &out->roles) < 0)
        FAIL(-EINVAL, "roles not a list of known roles");

    *ret_claims = out;
    out = NULL;
    r = 0;
fail:
    if (ret_reason)
        *ret_reason = reason;
    auth_jwt_verified_free(out);
    jwt_free(jwt);
    free(copy);
    json_decref(payload);
    json_decref(header);
    return r;
}
