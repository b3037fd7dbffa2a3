/* auth_jwt.h: access tokens for people (JWT, RFC 7519) on top of libjwt.
 *
 * libjwt alone is not safe to verify with (FACTS.md): it accepts any token when given no key,
 * lets an HS256 token signed with an RSA public key's PEM pass as RS256, and checks no claim.
 * So every key here has its algorithm pinned when it is loaded; auth_jwt_verify() reads the
 * token's header itself, picks the key by `kid`, demands the key's algorithm before and after
 * libjwt checks the signature, and then checks every claim itself.
 *
 * Supported: HS256 (a shared secret of at least 32 bytes), RS256 (RSA >= 2048 bits) and ES256
 * (P-256). Keys are immutable once made.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define AUTH_JWT_KID_MAX       64   /* characters */
#define AUTH_JWT_TOKEN_MAX     8192 /* bytes; longer tokens are refused unparsed */
#define AUTH_JWT_HS_SECRET_MIN 32   /* bytes */
#define AUTH_JWT_LEEWAY_S      30   /* default clock skew allowed on exp, nbf and iat */

typedef enum auth_jwt_alg {
    AUTH_JWT_HS256,
    AUTH_JWT_RS256,
    AUTH_JWT_ES256,
} auth_jwt_alg_t;

/* Roles a person can hold in an organisation; a token carries them as
 * `"roles": ["admin", ...]`. */
enum {
    AUTH_ROLE_ADMIN = 1u << 0,
    AUTH_ROLE_OPERATOR = 1u << 1,
    AUTH_ROLE_VIEWER = 1u << 2,
};

typedef struct auth_jwt_key auth_jwt_key_t;
typedef struct auth_jwt_verifier auth_jwt_verifier_t;

/** What auth_jwt_issue() puts in a token. Strings are borrowed for the call. */
typedef struct auth_jwt_claims {
    const char *sub; /* required: the person's id */
    const char *org; /* optional: the organisation the roles apply to */
    unsigned roles;  /* AUTH_ROLE_* bits */
    const char *iss; /* required */
    const char *aud; /* required */
    int64_t ttl_s;   /* required, > 0: exp = now + ttl_s */
    const char *jti; /* NULL: a random UUIDv4 */
} auth_jwt_claims_t;

/** What auth_jwt_verify() found in a valid token. Owned by the caller: auth_jwt_verified_free(). */
typedef struct auth_jwt_verified {
    char *sub;
    char *org;      /* NULL when the token has none */
    unsigned roles; /* AUTH_ROLE_* bits */
    char *jti;      /* NULL when the token has none */
    int64_t exp;
    int64_t iat; /* 0 when the token has none */
} auth_jwt_verified_t;

/**
 * A HS256 key from @secret_len >= AUTH_JWT_HS_SECRET_MIN bytes (copied). @kid may be NULL,
 * else 1..AUTH_JWT_KID_MAX printable ASCII characters. 0, -EINVAL or -ENOMEM; *@ret_key is owned
 * by the caller (auth_jwt_key_free()).
 */
int auth_jwt_key_new_hs256(const void *secret, size_t secret_len, const char *kid,
                           auth_jwt_key_t **ret_key);

/**
 * A RS256 or ES256 key from a PEM string (@pem_len bytes, NUL not needed): a private key (the
 * key can then issue and verify) or a public key (verify only). The key type must match @alg:
 * RSA of at least 2048 bits, or EC on P-256. @kid as above. 0, -EINVAL (not a PEM key, wrong
 * type, HS256) or -ENOMEM.
 */
int auth_jwt_key_new_pem(auth_jwt_alg_t alg, const char *pem, size_t pem_len, const char *kid,
                         auth_jwt_key_t **ret_key);

/** auth_jwt_key_new_pem() reading the PEM from @path. Also -errno from reading the file. */
int auth_jwt_key_new_pem_file(auth_jwt_alg_t alg, const char *path, const char *kid,
                              auth_jwt_key_t **ret_key);

/** Frees a key and wipes its secret. NULL is fine. */
void auth_jwt_key_free(auth_jwt_key_t *key);

/**
 * Signs a token for @claims with @key (which must hold a secret or private key), issued at @now
 * (Unix seconds): header {alg, typ, kid if any}, claims iss, sub, aud, org, roles, iat, exp,
 * jti. On success *@ret_token is a malloc'd string the caller frees. 0, -EINVAL (missing
 * claim, ttl <= 0), -ENOKEY (a public key), -ENOMEM or -EIO.
 */
int auth_jwt_issue(const auth_jwt_key_t *key, const auth_jwt_claims_t *claims, int64_t now,
                   char **ret_token);

/**
 * A verifier accepting tokens from issuer @iss for audience @aud (both copied, non-empty),
 * with AUTH_JWT_LEEWAY_S of leeway and no keys yet. 0, -EINVAL or -ENOMEM. Caller owns
 * *@ret_verifier (auth_jwt_verifier_free()).
 */
int auth_jwt_verifier_new(const char *iss, const char *aud, auth_jwt_verifier_t **ret_verifier);

/** Frees a verifier and its keys. NULL is fine. */
void auth_jwt_verifier_free(auth_jwt_verifier_t *verifier);

/** Sets the allowed clock skew in seconds (0..3600). 0 or -EINVAL. */
int auth_jwt_verifier_set_leeway(auth_jwt_verifier_t *verifier, int64_t leeway_s);

/**
 * Reads the organisation from the claim @org_claim instead of "org", and the roles from
 * @roles_claim instead of "roles" (an external issuer's names, such as Cognito's "custom:org"
 * and "cognito:groups"). NULL keeps a name as it is. Both are copied. 0, -EINVAL (an empty
 * name) or -ENOMEM.
 */
int auth_jwt_verifier_set_claims(auth_jwt_verifier_t *verifier, const char *org_claim,
                                 const char *roles_claim);

/**
 * Maps @name, a group name as it appears in the roles claim, to @role (one AUTH_ROLE_* bit).
 * Once a verifier holds a mapping, the roles claim is read through the mappings only: it may be
 * an array of strings or one string, and names without a mapping are ignored (an issuer's
 * groups include many that mean nothing here). Without mappings, the claim must list our role
 * names and an unknown one refuses the token. @name is copied. 0, -EINVAL, -EEXIST (@name is
 * mapped already) or -ENOMEM.
 */
int auth_jwt_verifier_map_role(auth_jwt_verifier_t *verifier, const char *name, unsigned role);

/**
 * Adds a copy of @key (the caller keeps @key). A token naming a `kid` is checked only with the
 * key of exactly that id; a token without one only when the verifier holds a single key.
 * 0, -EEXIST (a key with the same kid, or a second key without kid), -EINVAL or -ENOMEM.
 */
int auth_jwt_verifier_add_key(auth_jwt_verifier_t *verifier, const auth_jwt_key_t *key);

/**
 * Adds the signing keys of an RFC 7517 JWKS file (`{"keys": [...]}`), as an external OIDC
 * issuer publishes them: RSA keys (n, e) as RS256 and EC P-256 keys (x, y) as ES256, each with
 * its `kid` (required) and `alg` (optional; must agree with the key type). Keys for other uses
 * (`use` other than "sig"), types or curves are skipped. Nothing is added unless the whole file
 * is valid. 0, -EINVAL (malformed, or no usable key), -EEXIST (duplicate kid), -ENOMEM or
 * -errno from reading the file.
 */
int auth_jwt_verifier_add_jwks_file(auth_jwt_verifier_t *verifier, const char *path);

/**
 * Verifies @token (@len bytes) at @now (Unix seconds): structure, header `alg` equal to the
 * selected key's pinned algorithm, signature, then exp (required), nbf and iat (if present)
 * within the leeway, iss, aud (a string or an array holding ours), sub (a non-empty string),
 * org (a string if present), roles (an array of "admin", "operator", "viewer" if present; see
 * auth_jwt_verifier_set_claims() and auth_jwt_verifier_map_role() for other issuers' names).
 * On success *@ret_claims is malloc'd and owned by the caller. Whether it succeeds or not,
 * *@ret_reason (if not NULL) is set to a static, loggable phrase; it never holds token data.
 * 0, -EINVAL (malformed token, unknown role), -EKEYREJECTED (unknown kid, wrong algorithm, bad
 * signature), -ETIME (expired or not yet valid), -EACCES (wrong issuer or audience), -ENOMEM.
 */
int auth_jwt_verify(const auth_jwt_verifier_t *verifier, const char *token, size_t len, int64_t now,
                    auth_jwt_verified_t **ret_claims, const char **ret_reason);

/** Frees verified claims. NULL is fine. */
void auth_jwt_verified_free(auth_jwt_verified_t *claims);
