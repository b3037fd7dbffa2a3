/* JWT access tokens: issuing, verifying with pinned algorithms, claims, kid selection, JWKS,
 * and the libjwt pitfalls of FACTS.md (alg none, algorithm confusion, unchecked claims). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jwt.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth_jwt.h"

#define NOW ((int64_t)1700000000)
#define ISS "https://sensorbus.test"
#define AUD "sensorbus-api"

static const char secret[] = "0123456789abcdef0123456789abcdef"; /* 32 bytes */

static char tmpdir[] = "/tmp/sb-test-jwt-XXXXXX";
static char rsa_priv[64], rsa_pub[64], ec_priv[64], ec_pub[64], jwks[64];
static EVP_PKEY *rsa, *ec;

/* ---- helpers ---- */

static char *b64url(const void *data, size_t len)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *in = data;
    char *out = malloc(len / 3 * 4 + 5), *o = out;
    size_t i = 0;

    cr_assert_not_null(out);
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *o++ = a[v >> 18 & 63], *o++ = a[v >> 12 & 63], *o++ = a[v >> 6 & 63], *o++ = a[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        *o++ = a[v >> 18 & 63], *o++ = a[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        *o++ = a[v >> 18 & 63], *o++ = a[v >> 12 & 63], *o++ = a[v >> 6 & 63];
    }
    *o = '\0';
    return out;
}

/* "b64(header).b64(payload).signature", signature given as is. */
static char *craft(const char *header, const char *payload, const char *signature)
{
    char *h = b64url(header, strlen(header)), *p = b64url(payload, strlen(payload)), *t = NULL;

    cr_assert_gt(asprintf(&t, "%s.%s.%s", h, p, signature), 0);
    free(h);
    free(p);
    return t;
}

/* A token for any @payload, signed by libjwt itself with @alg and @key. */
static char *sign(jwt_alg_t alg, const void *key, size_t key_len, const char *kid,
                  const char *payload)
{
    jwt_t *jwt = NULL;
    char *t;

    cr_assert_eq(jwt_new(&jwt), 0);
    cr_assert_eq(jwt_add_grants_json(jwt, payload), 0, "%s", payload);
    if (kid)
        cr_assert_eq(jwt_add_header(jwt, "kid", kid), 0);
    cr_assert_eq(jwt_set_alg(jwt, alg, key, (int)key_len), 0);
    t = jwt_encode_str(jwt);
    cr_assert_not_null(t);
    jwt_free(jwt);
    return t;
}

/* A valid payload with @extra members appended (e.g. ",\"nbf\":1"). */
static char *payload(int64_t exp, const char *extra)
{
    char *p = NULL;

    cr_assert_gt(
        asprintf(&p, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"u-1\",\"exp\":%lld%s}",
                 (long long)exp, extra ? extra : ""),
        0);
    return p;
}

static char *hs_sign(const char *kid, const char *p)
{
    return sign(JWT_ALG_HS256, secret, strlen(secret), kid, p);
}

static auth_jwt_key_t *hs_key(const char *kid)
{
    auth_jwt_key_t *key = NULL;

    cr_assert_eq(auth_jwt_key_new_hs256(secret, strlen(secret), kid, &key), 0);
    return key;
}

/* A verifier holding copies of @keys. */
static auth_jwt_verifier_t *verifier(auth_jwt_key_t *const *keys, size_t n)
{
    auth_jwt_verifier_t *v = NULL;

    cr_assert_eq(auth_jwt_verifier_new(ISS, AUD, &v), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(auth_jwt_verifier_add_key(v, keys[i]), 0);
    return v;
}

static auth_jwt_verifier_t *hs_verifier(const char *kid)
{
    auth_jwt_key_t *key = hs_key(kid);
    auth_jwt_verifier_t *v = verifier(&key, 1);

    auth_jwt_key_free(key);
    return v;
}

/* auth_jwt_verify() on a NUL-terminated token, checking the reason is set and leaks nothing. */
static int verify(const auth_jwt_verifier_t *v, const char *token, int64_t now,
                  auth_jwt_verified_t **ret)
{
    const char *reason = NULL, *dot = strchr(token, '.');
    auth_jwt_verified_t *c = NULL;
    int r = auth_jwt_verify(v, token, strlen(token), now, &c, &reason);

    cr_assert_not_null(reason);
    if (dot && dot - token > 8)
        cr_expect_null(strstr(reason, dot + 1), "reason holds token data: %s", reason);
    cr_assert_eq(r == 0, c != NULL);
    if (ret)
        *ret = c;
    else
        auth_jwt_verified_free(c);
    return r;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fputs(text, f) >= 0, 1);
    cr_assert_eq(fclose(f), 0);
}

static void write_pem(const char *path, EVP_PKEY *pkey, int private)
{
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f, "%s", path);
    cr_assert(private ? PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL)
                      : PEM_write_PUBKEY(f, pkey));
    cr_assert_eq(fclose(f), 0);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = calloc(1, 65536);
    size_t n;

    cr_assert_not_null(f, "%s", path);
    cr_assert_not_null(buf);
    n = fread(buf, 1, 65535, f);
    cr_assert_gt(n, 0);
    fclose(f);
    return buf;
}

static char *bn_b64url(EVP_PKEY *pkey, const char *param, size_t pad)
{
    BIGNUM *bn = NULL;
    unsigned char buf[512];
    int n;

    cr_assert(EVP_PKEY_get_bn_param(pkey, param, &bn), "%s", param);
    n = pad ? BN_bn2binpad(bn, buf, (int)pad) : BN_bn2bin(bn, buf);
    cr_assert_gt(n, 0);
    BN_free(bn);
    return b64url(buf, (size_t)n);
}

/* Fresh RSA-2048 and P-256 keys for every test process, as PEM files and one JWKS file. */
static void keys_setup(void)
{
    char *n, *e, *x, *y, *text = NULL;

    cr_assert_not_null(mkdtemp(tmpdir));
    snprintf(rsa_priv, sizeof(rsa_priv), "%s/rsa.pem", tmpdir);
    snprintf(rsa_pub, sizeof(rsa_pub), "%s/rsa.pub.pem", tmpdir);
    snprintf(ec_priv, sizeof(ec_priv), "%s/ec.pem", tmpdir);
    snprintf(ec_pub, sizeof(ec_pub), "%s/ec.pub.pem", tmpdir);
    snprintf(jwks, sizeof(jwks), "%s/jwks.json", tmpdir);
    rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    cr_assert_not_null(rsa);
    cr_assert_not_null(ec);
    write_pem(rsa_priv, rsa, 1);
    write_pem(rsa_pub, rsa, 0);
    write_pem(ec_priv, ec, 1);
    write_pem(ec_pub, ec, 0);

    n = bn_b64url(rsa, OSSL_PKEY_PARAM_RSA_N, 0);
    e = bn_b64url(rsa, OSSL_PKEY_PARAM_RSA_E, 0);
    x = bn_b64url(ec, OSSL_PKEY_PARAM_EC_PUB_X, 32);
    y = bn_b64url(ec, OSSL_PKEY_PARAM_EC_PUB_Y, 32);
    /* Shaped like Cognito's: an encryption key and an unsupported curve are skipped. */
    cr_assert_gt(asprintf(&text,
                          "{\"keys\":["
                          "{\"kty\":\"RSA\",\"kid\":\"rsa-1\",\"alg\":\"RS256\",\"use\":\"sig\","
                          "\"n\":\"%s\",\"e\":\"%s\"},"
                          "{\"kty\":\"EC\",\"kid\":\"ec-1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":"
                          "\"%s\"},"
                          "{\"kty\":\"RSA\",\"kid\":\"enc-1\",\"use\":\"enc\",\"n\":\"%s\",\"e\":"
                          "\"%s\"},"
                          "{\"kty\":\"EC\",\"kid\":\"p384\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":"
                          "\"AA\"}]}",
                          n, e, x, y, n, e),
                 0);
    write_file(jwks, text);
    free(n), free(e), free(x), free(y), free(text);
}

static void keys_teardown(void)
{
    const char *files[] = {rsa_priv, rsa_pub, ec_priv, ec_pub, jwks};

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(files[i]);
    rmdir(tmpdir);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
}

static auth_jwt_key_t *pem_key(auth_jwt_alg_t alg, const char *path, const char *kid)
{
    auth_jwt_key_t *key = NULL;

    cr_assert_eq(auth_jwt_key_new_pem_file(alg, path, kid, &key), 0, "%s", path);
    return key;
}

static const auth_jwt_claims_t claims = {
    .sub = "user-42",
    .org = "org-7",
    .roles = AUTH_ROLE_ADMIN | AUTH_ROLE_VIEWER,
    .iss = ISS,
    .aud = AUD,
    .ttl_s = 900,
};

/* ---- issuing and round trips ---- */

Test(auth_jwt, hs256_round_trip_carries_every_claim)
{
    auth_jwt_key_t *key = hs_key("k1");
    auth_jwt_verifier_t *v = verifier(&key, 1);
    auth_jwt_verified_t *c = NULL;
    auth_jwt_claims_t with_jti = claims;
    char *token = NULL, *token2 = NULL;

    cr_assert_eq(auth_jwt_issue(key, &claims, NOW, &token), 0);
    cr_assert_eq(verify(v, token, NOW + 1, &c), 0);
    cr_expect_str_eq(c->sub, "user-42");
    cr_expect_str_eq(c->org, "org-7");
    cr_expect_eq(c->roles, AUTH_ROLE_ADMIN | AUTH_ROLE_VIEWER);
    cr_expect_eq(c->iat, NOW);
    cr_expect_eq(c->exp, NOW + 900);
    /* A generated jti is a UUIDv4. */
    cr_assert_not_null(c->jti);
    cr_expect_eq(strlen(c->jti), 36, "%s", c->jti);
    cr_expect_eq(c->jti[14], '4', "%s", c->jti);
    cr_expect(strchr("89ab", c->jti[19]) != NULL, "%s", c->jti);
    auth_jwt_verified_free(c);

    /* Two tokens get two jtis; a given jti is kept. */
    with_jti.jti = "fixed-id";
    cr_assert_eq(auth_jwt_issue(key, &with_jti, NOW, &token2), 0);
    cr_assert_eq(verify(v, token2, NOW, &c), 0);
    cr_expect_str_eq(c->jti, "fixed-id");
    auth_jwt_verified_free(c);

    free(token), free(token2);
    auth_jwt_verifier_free(v);
    auth_jwt_key_free(key);
}

Test(auth_jwt, issue_refuses_incomplete_claims_and_weak_secrets)
{
    auth_jwt_key_t *key = hs_key(NULL), *k = NULL;
    auth_jwt_claims_t c = claims;
    char *token = NULL;

    c.sub = "";
    cr_expect_eq(auth_jwt_issue(key, &c, NOW, &token), -EINVAL);
    c = claims, c.iss = NULL;
    cr_expect_eq(auth_jwt_issue(key, &c, NOW, &token), -EINVAL);
    c = claims, c.aud = NULL;
    cr_expect_eq(auth_jwt_issue(key, &c, NOW, &token), -EINVAL);
    c = claims, c.ttl_s = 0;
    cr_expect_eq(auth_jwt_issue(key, &c, NOW, &token), -EINVAL);
    cr_expect_null(token);

    cr_expect_eq(auth_jwt_key_new_hs256(secret, 31, NULL, &k), -EINVAL);
    cr_expect_eq(auth_jwt_key_new_hs256(secret, 32, "", &k), -EINVAL);
    cr_expect_eq(auth_jwt_key_new_hs256(secret, 32, "with space", &k), -EINVAL);
    cr_expect_null(k);
    auth_jwt_key_free(key);
}

Test(auth_jwt, rs256_and_es256_round_trip, .init = keys_setup, .fini = keys_teardown)
{
    const struct {
        auth_jwt_alg_t alg;
        const char *priv, *pub;
    } cases[] = {{AUTH_JWT_RS256, rsa_priv, rsa_pub}, {AUTH_JWT_ES256, ec_priv, ec_pub}};

    for (size_t i = 0; i < 2; i++) {
        auth_jwt_key_t *signer = pem_key(cases[i].alg, cases[i].priv, "k1");
        auth_jwt_key_t *pub = pem_key(cases[i].alg, cases[i].pub, "k1");
        auth_jwt_verifier_t *v = verifier(&pub, 1), *v_priv = verifier(&signer, 1);
        auth_jwt_verified_t *c = NULL;
        char *token = NULL, *again = NULL;

        cr_assert_eq(auth_jwt_issue(signer, &claims, NOW, &token), 0, "case %zu", i);
        cr_assert_eq(verify(v, token, NOW, &c), 0, "case %zu", i);
        cr_expect_str_eq(c->sub, "user-42");
        cr_expect_eq(c->roles, AUTH_ROLE_ADMIN | AUTH_ROLE_VIEWER);
        /* A verifier given the private key checks with its public half. */
        cr_expect_eq(verify(v_priv, token, NOW, NULL), 0, "case %zu", i);
        /* A public key cannot sign. */
        cr_expect_eq(auth_jwt_issue(pub, &claims, NOW, &again), -ENOKEY);
        cr_expect_null(again);

        auth_jwt_verified_free(c);
        free(token);
        auth_jwt_verifier_free(v), auth_jwt_verifier_free(v_priv);
        auth_jwt_key_free(signer), auth_jwt_key_free(pub);
    }
}

Test(auth_jwt, pem_must_match_the_pinned_algorithm, .init = keys_setup, .fini = keys_teardown)
{
    auth_jwt_key_t *key = NULL;
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    char path[96];

    cr_expect_eq(auth_jwt_key_new_pem_file(AUTH_JWT_ES256, rsa_pub, NULL, &key), -EINVAL);
    cr_expect_eq(auth_jwt_key_new_pem_file(AUTH_JWT_RS256, ec_priv, NULL, &key), -EINVAL);
    cr_expect_eq(auth_jwt_key_new_pem_file(AUTH_JWT_HS256, rsa_pub, NULL, &key), -EINVAL);
    cr_expect_eq(auth_jwt_key_new_pem(AUTH_JWT_RS256, "not a pem", 9, NULL, &key), -EINVAL);
    cr_expect_eq(auth_jwt_key_new_pem_file(AUTH_JWT_RS256, "/nonexistent/k.pem", NULL, &key),
                 -ENOENT);

    cr_assert_not_null(small);
    cr_assert_not_null(p384);
    snprintf(path, sizeof(path), "%s/small.pem", tmpdir);
    write_pem(path, small, 0);
    cr_expect_eq(auth_jwt_key_new_pem_file(AUTH_JWT_RS256, path, NULL, &key), -EINVAL);
    write_pem(path, p384, 0);
    cr_expect_eq(auth_jwt_key_new_pem_file(AUTH_JWT_ES256, path, NULL, &key), -EINVAL);
    unlink(path);
    cr_expect_null(key);
    EVP_PKEY_free(small);
    EVP_PKEY_free(p384);
}

/* ---- algorithm attacks ---- */

Test(auth_jwt, alg_none_is_rejected)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    char *p = payload(NOW + 60, NULL);
    char *none = craft("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, "");
    char *none_caps = craft("{\"alg\":\"NONE\"}", p, "");
    char *no_alg = craft("{\"typ\":\"JWT\"}", p, "");
    char *alg_nul = craft("{\"alg\":\"HS256\\u0000\"}", p, "");

    cr_expect_eq(verify(v, none, NOW, NULL), -EKEYREJECTED);
    cr_expect_eq(verify(v, none_caps, NOW, NULL), -EKEYREJECTED);
    cr_expect_eq(verify(v, no_alg, NOW, NULL), -EKEYREJECTED);
    /* jansson refuses \u0000 in strings, so this one does not even parse. */
    cr_expect_eq(verify(v, alg_nul, NOW, NULL), -EINVAL);
    free(p), free(none), free(none_caps), free(no_alg), free(alg_nul);
    auth_jwt_verifier_free(v);
}

Test(auth_jwt, hs256_signed_with_rsa_public_pem_is_rejected, .init = keys_setup,
     .fini = keys_teardown)
{
    auth_jwt_key_t *pub = pem_key(AUTH_JWT_RS256, rsa_pub, NULL);
    auth_jwt_verifier_t *v = verifier(&pub, 1);
    char *pem = read_text(rsa_pub), *p = payload(NOW + 60, NULL);
    char *forged = sign(JWT_ALG_HS256, pem, strlen(pem), NULL, p);
    jwt_t *jwt = NULL;

    /* The attack is real: libjwt alone accepts the forgery when given the public PEM. */
    cr_assert_eq(jwt_decode(&jwt, forged, (const unsigned char *)pem, (int)strlen(pem)), 0);
    jwt_free(jwt);

    cr_expect_eq(verify(v, forged, NOW, NULL), -EKEYREJECTED);
    free(forged), free(p), free(pem);
    auth_jwt_verifier_free(v);
    auth_jwt_key_free(pub);
}

Test(auth_jwt, other_algorithm_with_the_right_secret_is_rejected)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    char *p = payload(NOW + 60, NULL);
    char *hs512 = sign(JWT_ALG_HS512, secret, strlen(secret), NULL, p);
    char *hs384 = sign(JWT_ALG_HS384, secret, strlen(secret), NULL, p);
    char *hs256 = sign(JWT_ALG_HS256, secret, strlen(secret), NULL, p);

    cr_expect_eq(verify(v, hs512, NOW, NULL), -EKEYREJECTED);
    cr_expect_eq(verify(v, hs384, NOW, NULL), -EKEYREJECTED);
    cr_expect_eq(verify(v, hs256, NOW, NULL), 0);
    free(p), free(hs512), free(hs384), free(hs256);
    auth_jwt_verifier_free(v);
}

Test(auth_jwt, wrong_secret_and_tampered_payload_are_rejected)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    auth_jwt_key_t *key = hs_key(NULL), *other = NULL;
    char *token = NULL, *forged = NULL, *evil = NULL, *wrong = NULL, *b64;
    const char *dot1, *dot2;

    cr_assert_eq(auth_jwt_key_new_hs256("another secret, also 32 bytes long", 34, NULL, &other), 0);
    cr_assert_eq(auth_jwt_issue(other, &claims, NOW, &wrong), 0);
    cr_expect_eq(verify(v, wrong, NOW, NULL), -EKEYREJECTED);

    /* Swap the payload for one granting more, keeping header and signature. */
    cr_assert_eq(auth_jwt_issue(key, &claims, NOW, &token), 0);
    cr_assert_eq(verify(v, token, NOW, NULL), 0);
    dot1 = strchr(token, '.');
    dot2 = strchr(dot1 + 1, '.');
    evil = payload(NOW + 900, ",\"roles\":[\"admin\",\"operator\",\"viewer\"]");
    b64 = b64url(evil, strlen(evil));
    cr_assert_gt(asprintf(&forged, "%.*s.%s%s", (int)(dot1 - token), token, b64, dot2), 0);
    cr_expect_eq(verify(v, forged, NOW, NULL), -EKEYREJECTED);
    /* And one flipped signature character. */
    token[strlen(token) - 2] = token[strlen(token) - 2] == 'A' ? 'B' : 'A';
    cr_expect_eq(verify(v, token, NOW, NULL), -EKEYREJECTED);

    free(token), free(forged), free(evil), free(b64), free(wrong);
    auth_jwt_key_free(key), auth_jwt_key_free(other);
    auth_jwt_verifier_free(v);
}

/* ---- kid ---- */

Test(auth_jwt, kid_is_only_matched_against_configured_ids)
{
    auth_jwt_verifier_t *v = hs_verifier("k1"), *v_nokid = hs_verifier(NULL);
    char *p = payload(NOW + 60, NULL);
    const char *bad[] = {"../../etc/passwd", "/dev/null", "k2", "K1", "k1 ", "k"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *t = hs_sign(bad[i], p);

        cr_expect_eq(verify(v, t, NOW, NULL), -EKEYREJECTED, "kid %s", bad[i]);
        /* A single key without id is not a wildcard for tokens naming some other key. */
        cr_expect_eq(verify(v_nokid, t, NOW, NULL), -EKEYREJECTED, "kid %s", bad[i]);
        free(t);
    }
    {
        char *t = hs_sign("k1", p), *nokid = hs_sign(NULL, p);
        char *nul = craft("{\"alg\":\"HS256\",\"kid\":\"k1\\u0000x\"}", p, "AAAA");
        char *num = craft("{\"alg\":\"HS256\",\"kid\":1}", p, "AAAA");

        cr_expect_eq(verify(v, t, NOW, NULL), 0);
        /* The single configured key is the default for a token without kid. */
        cr_expect_eq(verify(v, nokid, NOW, NULL), 0);
        cr_expect_eq(verify(v_nokid, nokid, NOW, NULL), 0);
        cr_expect_eq(verify(v, nul, NOW, NULL), -EINVAL);
        cr_expect_eq(verify(v, num, NOW, NULL), -EKEYREJECTED);
        free(t), free(nokid), free(nul), free(num);
    }
    free(p);
    auth_jwt_verifier_free(v), auth_jwt_verifier_free(v_nokid);
}

Test(auth_jwt, kid_selects_the_key_and_its_algorithm, .init = keys_setup, .fini = keys_teardown)
{
    auth_jwt_key_t *keys[] = {hs_key("hs"), pem_key(AUTH_JWT_RS256, rsa_pub, "rsa"),
                              pem_key(AUTH_JWT_ES256, ec_priv, "ec")};
    auth_jwt_key_t *rsa_signer = pem_key(AUTH_JWT_RS256, rsa_priv, "rsa");
    auth_jwt_key_t *mislabelled = pem_key(AUTH_JWT_ES256, ec_priv, "rsa");
    auth_jwt_verifier_t *v = verifier(keys, 3);
    char *p = payload(NOW + 60, NULL), *no_kid = hs_sign(NULL, p);
    char *t_hs = NULL, *t_rsa = NULL, *t_ec = NULL, *t_bad = NULL;

    cr_assert_eq(auth_jwt_issue(keys[0], &claims, NOW, &t_hs), 0);
    cr_assert_eq(auth_jwt_issue(rsa_signer, &claims, NOW, &t_rsa), 0);
    cr_assert_eq(auth_jwt_issue(keys[2], &claims, NOW, &t_ec), 0);
    cr_assert_eq(auth_jwt_issue(mislabelled, &claims, NOW, &t_bad), 0);
    cr_expect_eq(verify(v, t_hs, NOW, NULL), 0);
    cr_expect_eq(verify(v, t_rsa, NOW, NULL), 0);
    cr_expect_eq(verify(v, t_ec, NOW, NULL), 0);
    /* ES256 under the RSA key's kid: the algorithm does not follow the token. */
    cr_expect_eq(verify(v, t_bad, NOW, NULL), -EKEYREJECTED);
    /* With several keys there is no default. */
    cr_expect_eq(verify(v, no_kid, NOW, NULL), -EKEYREJECTED);
    /* Ids are unique within a verifier. */
    cr_expect_eq(auth_jwt_verifier_add_key(v, rsa_signer), -EEXIST);

    free(p), free(no_kid), free(t_hs), free(t_rsa), free(t_ec), free(t_bad);
    for (size_t i = 0; i < 3; i++)
        auth_jwt_key_free(keys[i]);
    auth_jwt_key_free(rsa_signer), auth_jwt_key_free(mislabelled);
    auth_jwt_verifier_free(v);
}

/* ---- claims ---- */

Test(auth_jwt, expiry_honours_the_leeway)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    auth_jwt_key_t *key = hs_key(NULL);
    char *token = NULL, *p = payload(NOW, NULL), *no_exp = NULL, *t_no_exp;

    cr_assert_eq(auth_jwt_issue(key, &claims, NOW, &token), 0);
    cr_expect_eq(verify(v, token, NOW + 899, NULL), 0);
    cr_expect_eq(verify(v, token, NOW + 900 + 29, NULL), 0); /* expired, within leeway */
    cr_expect_eq(verify(v, token, NOW + 900 + 30, NULL), -ETIME);
    cr_expect_eq(verify(v, token, NOW + 900 + 3600, NULL), -ETIME);
    cr_assert_eq(auth_jwt_verifier_set_leeway(v, 0), 0);
    cr_expect_eq(verify(v, token, NOW + 900, NULL), -ETIME);
    cr_expect_eq(verify(v, token, NOW + 899, NULL), 0);
    cr_expect_eq(auth_jwt_verifier_set_leeway(v, -1), -EINVAL);

    /* exp is required. */
    cr_assert_gt(asprintf(&no_exp, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"u\"}"), 0);
    t_no_exp = hs_sign(NULL, no_exp);
    cr_expect_eq(verify(v, t_no_exp, NOW, NULL), -EINVAL);

    free(token), free(p), free(no_exp), free(t_no_exp);
    auth_jwt_key_free(key);
    auth_jwt_verifier_free(v);
}

Test(auth_jwt, not_before_and_issued_at_in_the_future_are_rejected)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    char *nbf_far = payload(NOW + 600, ",\"nbf\":1700000060");
    char *nbf_near = payload(NOW + 600, ",\"nbf\":1700000020");
    char *iat_far = payload(NOW + 600, ",\"iat\":1700000300");
    char *nbf_str = payload(NOW + 600, ",\"nbf\":\"soon\"");
    char *t[4] = {hs_sign(NULL, nbf_far), hs_sign(NULL, nbf_near), hs_sign(NULL, iat_far),
                  hs_sign(NULL, nbf_str)};

    cr_expect_eq(verify(v, t[0], NOW, NULL), -ETIME);
    cr_expect_eq(verify(v, t[0], NOW + 60, NULL), 0);
    cr_expect_eq(verify(v, t[1], NOW, NULL), 0); /* 20 s ahead: within leeway */
    cr_expect_eq(verify(v, t[2], NOW, NULL), -ETIME);
    cr_expect_eq(verify(v, t[3], NOW, NULL), -EINVAL);
    for (size_t i = 0; i < 4; i++)
        free(t[i]);
    free(nbf_far), free(nbf_near), free(iat_far), free(nbf_str);
    auth_jwt_verifier_free(v);
}

Test(auth_jwt, issuer_and_audience_must_match)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    const struct {
        const char *json;
        int expect;
    } cases[] = {
        {"{\"iss\":\"https://evil.test\",\"aud\":\"" AUD "\",\"sub\":\"u\",\"exp\":1700000060}",
         -EACCES},
        {"{\"aud\":\"" AUD "\",\"sub\":\"u\",\"exp\":1700000060}", -EACCES},
        {"{\"iss\":\"" ISS "\",\"aud\":\"other-api\",\"sub\":\"u\",\"exp\":1700000060}", -EACCES},
        {"{\"iss\":\"" ISS "\",\"sub\":\"u\",\"exp\":1700000060}", -EACCES},
        {"{\"iss\":\"" ISS "\",\"aud\":[\"a\",\"b\"],\"sub\":\"u\",\"exp\":1700000060}", -EACCES},
        {"{\"iss\":\"" ISS "\",\"aud\":[\"a\",\"" AUD "\"],\"sub\":\"u\",\"exp\":1700000060}", 0},
        {"{\"iss\":\"" ISS "\",\"aud\":[\"" AUD "\"],\"sub\":\"u\",\"exp\":1700000060}", 0},
        {"{\"iss\":\"" ISS "/\",\"aud\":\"" AUD "\",\"sub\":\"u\",\"exp\":1700000060}", -EACCES},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *t = hs_sign(NULL, cases[i].json);

        cr_expect_eq(verify(v, t, NOW, NULL), cases[i].expect, "%s", cases[i].json);
        free(t);
    }
    auth_jwt_verifier_free(v);
}

Test(auth_jwt, subject_org_and_roles_are_checked)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    auth_jwt_verified_t *c = NULL;
    const struct {
        const char *extra;
        int expect;
    } cases[] = {
        {",\"roles\":[\"operator\"]", 0},
        {",\"roles\":[\"root\"]", -EINVAL},
        {",\"roles\":[\"viewer\",\"superuser\"]", -EINVAL},
        {",\"roles\":\"admin\"", -EINVAL},
        {",\"roles\":[1]", -EINVAL},
        {",\"org\":7", -EINVAL},
        {",\"jti\":false", -EINVAL},
    };
    const char *no_sub[] = {
        "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":1700000060}",
        "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"\",\"exp\":1700000060}",
        "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":42,\"exp\":1700000060}",
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *p = payload(NOW + 60, cases[i].extra), *t = hs_sign(NULL, p);

        cr_expect_eq(verify(v, t, NOW, NULL), cases[i].expect, "%s", p);
        free(p), free(t);
    }
    for (size_t i = 0; i < sizeof(no_sub) / sizeof(no_sub[0]); i++) {
        char *t = hs_sign(NULL, no_sub[i]);

        cr_expect_eq(verify(v, t, NOW, NULL), -EINVAL, "%s", no_sub[i]);
        free(t);
    }
    {
        /* Without org, roles and jti: a bare external identity with no roles. */
        char *p = payload(NOW + 60, NULL), *t = hs_sign(NULL, p);

        cr_assert_eq(verify(v, t, NOW, &c), 0);
        cr_expect_str_eq(c->sub, "u-1");
        cr_expect_null(c->org);
        cr_expect_null(c->jti);
        cr_expect_eq(c->roles, 0);
        auth_jwt_verified_free(c);
        free(p), free(t);
    }
    auth_jwt_verifier_free(v);
}

/* ---- an external issuer's claim names and groups ---- */

Test(auth_jwt, configured_claim_names_and_group_mapping)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    auth_jwt_verified_t *c = NULL;
    const struct {
        const char *extra;
        int expect;
        unsigned roles;
        const char *org;
    } cases[] = {
        /* Cognito-style: groups the mapping names give roles, the others are ignored. */
        {",\"custom:org\":\"org-9\",\"cognito:groups\":[\"eu-west\",\"sb-operators\"]", 0,
         AUTH_ROLE_OPERATOR, "org-9"},
        {",\"cognito:groups\":[\"sb-admins\",\"sb-viewers\"]", 0,
         AUTH_ROLE_ADMIN | AUTH_ROLE_VIEWER, NULL},
        {",\"cognito:groups\":\"sb-viewers\"", 0, AUTH_ROLE_VIEWER, NULL},
        {",\"cognito:groups\":[\"everyone\"]", 0, 0, NULL},
        /* Our own claim names no longer count: "roles" is just another claim now. */
        {",\"org\":\"org-1\",\"roles\":[\"admin\"]", 0, 0, NULL},
        {",\"cognito:groups\":[7]", -EINVAL, 0, NULL},
        {",\"cognito:groups\":{\"a\":1}", -EINVAL, 0, NULL},
        {",\"custom:org\":42", -EINVAL, 0, NULL},
    };

    cr_assert_eq(auth_jwt_verifier_set_claims(v, "custom:org", "cognito:groups"), 0);
    cr_assert_eq(auth_jwt_verifier_map_role(v, "sb-admins", AUTH_ROLE_ADMIN), 0);
    cr_assert_eq(auth_jwt_verifier_map_role(v, "sb-operators", AUTH_ROLE_OPERATOR), 0);
    cr_assert_eq(auth_jwt_verifier_map_role(v, "sb-viewers", AUTH_ROLE_VIEWER), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *p = payload(NOW + 60, cases[i].extra), *t = hs_sign(NULL, p);

        cr_expect_eq(verify(v, t, NOW, &c), cases[i].expect, "%s", p);
        if (c) {
            cr_expect_eq(c->roles, cases[i].roles, "%s", p);
            if (cases[i].org)
                cr_expect_str_eq(c->org, cases[i].org);
            else
                cr_expect_null(c->org, "%s", p);
        }
        auth_jwt_verified_free(c);
        c = NULL;
        free(p), free(t);
    }
    auth_jwt_verifier_free(v);
}

Test(auth_jwt, claim_names_and_mappings_are_checked)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);

    cr_expect_eq(auth_jwt_verifier_set_claims(NULL, "a", "b"), -EINVAL);
    cr_expect_eq(auth_jwt_verifier_set_claims(v, "", NULL), -EINVAL);
    cr_expect_eq(auth_jwt_verifier_set_claims(v, NULL, ""), -EINVAL);
    cr_expect_eq(auth_jwt_verifier_set_claims(v, NULL, NULL), 0);
    cr_expect_eq(auth_jwt_verifier_map_role(v, "", AUTH_ROLE_ADMIN), -EINVAL);
    cr_expect_eq(auth_jwt_verifier_map_role(v, "g", 0), -EINVAL);
    cr_expect_eq(auth_jwt_verifier_map_role(v, "g", AUTH_ROLE_ADMIN | AUTH_ROLE_VIEWER), -EINVAL);
    cr_expect_eq(auth_jwt_verifier_map_role(v, "g", AUTH_ROLE_ADMIN), 0);
    cr_expect_eq(auth_jwt_verifier_map_role(v, "g", AUTH_ROLE_VIEWER), -EEXIST);
    auth_jwt_verifier_free(v);
}

/* ---- JWKS ---- */

Test(auth_jwt, jwks_keys_verify_tokens_of_their_private_keys, .init = keys_setup,
     .fini = keys_teardown)
{
    auth_jwt_key_t *rsa_signer = pem_key(AUTH_JWT_RS256, rsa_priv, "rsa-1");
    auth_jwt_key_t *ec_signer = pem_key(AUTH_JWT_ES256, ec_priv, "ec-1");
    auth_jwt_key_t *enc_signer = pem_key(AUTH_JWT_RS256, rsa_priv, "enc-1");
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    auth_jwt_key_t *impostor = NULL;
    auth_jwt_verifier_t *v = NULL;
    char *t_rsa = NULL, *t_ec = NULL, *t_enc = NULL, *t_imp = NULL, path[96];

    cr_assert_eq(auth_jwt_verifier_new(ISS, AUD, &v), 0);
    cr_assert_eq(auth_jwt_verifier_add_jwks_file(v, jwks), 0);
    cr_assert_eq(auth_jwt_issue(rsa_signer, &claims, NOW, &t_rsa), 0);
    cr_assert_eq(auth_jwt_issue(ec_signer, &claims, NOW, &t_ec), 0);
    cr_assert_eq(auth_jwt_issue(enc_signer, &claims, NOW, &t_enc), 0);
    cr_expect_eq(verify(v, t_rsa, NOW, NULL), 0);
    cr_expect_eq(verify(v, t_ec, NOW, NULL), 0);
    /* The "use":"enc" key was not loaded. */
    cr_expect_eq(verify(v, t_enc, NOW, NULL), -EKEYREJECTED);

    /* Another RSA key claiming kid rsa-1 fails the signature. */
    cr_assert_not_null(other);
    snprintf(path, sizeof(path), "%s/other.pem", tmpdir);
    write_pem(path, other, 1);
    impostor = pem_key(AUTH_JWT_RS256, path, "rsa-1");
    unlink(path);
    cr_assert_eq(auth_jwt_issue(impostor, &claims, NOW, &t_imp), 0);
    cr_expect_eq(verify(v, t_imp, NOW, NULL), -EKEYREJECTED);

    /* Loading the same set again would duplicate kids. */
    cr_expect_eq(auth_jwt_verifier_add_jwks_file(v, jwks), -EEXIST);

    free(t_rsa), free(t_ec), free(t_enc), free(t_imp);
    auth_jwt_key_free(rsa_signer), auth_jwt_key_free(ec_signer), auth_jwt_key_free(enc_signer);
    auth_jwt_key_free(impostor);
    EVP_PKEY_free(other);
    auth_jwt_verifier_free(v);
}

Test(auth_jwt, malformed_jwks_files_are_refused_whole)
{
    const char *bad[] = {
        "",
        "[]",
        "{\"keys\":[]}",
        "{\"keys\":{}}",
        /* Only unsupported keys: nothing usable. */
        "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"s\",\"k\":\"AAAA\"}]}",
        /* A supported key without kid, or with a broken modulus. */
        "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"***\",\"e\":\"AQAB\"}]}",
        /* A small RSA modulus. */
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        /* A P-256 point that is not on the curve. */
        "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\","
        "\"x\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
        "\"y\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}",
    };
    char dir[] = "/tmp/sb-test-jwks-XXXXXX", path[64];
    auth_jwt_verifier_t *v = NULL;

    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/jwks.json", dir);
    cr_assert_eq(auth_jwt_verifier_new(ISS, AUD, &v), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, bad[i]);
        cr_expect_eq(auth_jwt_verifier_add_jwks_file(v, path), -EINVAL, "%s", bad[i]);
    }
    cr_expect_eq(auth_jwt_verifier_add_jwks_file(v, "/nonexistent/jwks.json"), -ENOENT);
    unlink(path);
    rmdir(dir);
    auth_jwt_verifier_free(v);
}

/* ---- garbage ---- */

Test(auth_jwt, garbage_is_einval_without_crashing)
{
    auth_jwt_verifier_t *v = hs_verifier(NULL);
    auth_jwt_verified_t *c = NULL;
    char *p = payload(NOW + 60, NULL), *good = hs_sign(NULL, p), *huge, *mut;
    const char *reason = NULL;
    const char *bad[] = {
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "..",
        "...",
        "W10.e30.AAAA", /* header is [] */
        "!!!.e30.AAAA",
        "eyJhbGciOiJIUzI1NiJ9..AAAA",                      /* empty payload */
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.AAAA",           /* payload "not json" */
        "eyJhbGciOiJIUzI1NiIsImFsZyI6Im5vbmUifQ.e30.AAAA", /* duplicate alg */
    };
    size_t len;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(verify(v, bad[i], NOW, NULL), -EINVAL, "%s", bad[i]);

    /* A valid token padded past 8 KiB is refused before parsing. */
    len = AUTH_JWT_TOKEN_MAX + 1;
    huge = malloc(len + 1);
    cr_assert_not_null(huge);
    memset(huge, 'A', len);
    memcpy(huge, good, strlen(good));
    huge[len] = '\0';
    cr_expect_eq(verify(v, huge, NOW, NULL), -EINVAL);
    /* A NUL inside the given length is not hidden by C strings. */
    cr_expect_eq(auth_jwt_verify(v, good, strlen(good) + 1, NOW, &c, &reason), -EINVAL);
    cr_expect_null(c);
    free(huge);

    /* Every single-character change of a valid token is refused, whatever the reason. */
    mut = strdup(good);
    cr_assert_not_null(mut);
    for (size_t i = 0; i < strlen(good); i++) {
        const char repl[] = {'.', 'A', '_', '*', 'z'};

        for (size_t k = 0; k < sizeof(repl); k++) {
            int r;

            if (good[i] == repl[k])
                continue;
            mut[i] = repl[k];
            r = verify(v, mut, NOW, NULL);
            cr_expect(r == -EINVAL || r == -EKEYREJECTED, "pos %zu '%c': %d", i, repl[k], r);
            mut[i] = good[i];
        }
    }
    cr_expect_eq(verify(v, good, NOW, NULL), 0);
    free(mut), free(good), free(p);
    auth_jwt_verifier_free(v);
}
