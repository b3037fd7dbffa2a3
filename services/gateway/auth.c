/* auth.c: who is calling (an API key or a person's JWT), what they may do, and how often.
 *
 * Every route but /auth/, /healthz, /readyz, /metrics and the OpenAPI pages starts with
 * gw_auth_require(): a Bearer token beginning "lok_" is an API key (looked up by prefix through
 * the key cache, its secret checked against the stored HMAC on every request), anything else is
 * a JWT access token verified with the algorithm pinned per key, iss, aud, exp and nbf checked
 * (libs/auth/auth_jwt.h). Then the caller's token bucket is charged: per key prefix for machines,
 * per user id for people, so one noisy device cannot starve its organization's others.
 *
 * Secrets never reach a log line: a refusal logs the key's prefix or the JWT's reason phrase.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "svc_log.h"
#include "svc_util.h"

/* ---- roles ---------------------------------------------------------------------------------- */

const char *gw_role_name(unsigned role)
{
    switch (role) {
    case AUTH_ROLE_ADMIN:
        return "admin";
    case AUTH_ROLE_OPERATOR:
        return "operator";
    case AUTH_ROLE_VIEWER:
        return "viewer";
    default:
        return NULL;
    }
}

unsigned gw_role_parse(const char *name)
{
    if (!name)
        return 0;
    if (strcmp(name, "admin") == 0)
        return AUTH_ROLE_ADMIN;
    if (strcmp(name, "operator") == 0)
        return AUTH_ROLE_OPERATOR;
    if (strcmp(name, "viewer") == 0)
        return AUTH_ROLE_VIEWER;
    return 0;
}

/* admin > operator > viewer; a token's roles are a set, its rank the highest one it holds. */
static int role_rank(unsigned roles)
{
    if (roles & AUTH_ROLE_ADMIN)
        return 3;
    if (roles & AUTH_ROLE_OPERATOR)
        return 2;
    if (roles & AUTH_ROLE_VIEWER)
        return 1;
    return 0;
}

static unsigned role_top(unsigned roles)
{
    return roles & AUTH_ROLE_ADMIN      ? AUTH_ROLE_ADMIN
           : roles & AUTH_ROLE_OPERATOR ? AUTH_ROLE_OPERATOR
           : roles & AUTH_ROLE_VIEWER   ? AUTH_ROLE_VIEWER
                                        : 0;
}

static const char *scope_name(unsigned scope)
{
    return scope == GW_SCOPE_INGEST ? "ingest" : scope == GW_SCOPE_ORDERS ? "orders" : "read";
}

/* One line per second per thread at most: during an outage every request would log one. */
static void auth_db_warn(const char *what, int rc, db_t *db)
{
    static _Thread_local int64_t last_ms, suppressed;
    int64_t now = svc_now_ms();

    if (last_ms && now - last_ms < 1000) {
        suppressed++;
        return;
    }
    log_warn("%s failed: %s (%s)%s", what, strerror(-rc),
             db_errmsg(db)[0] ? db_errmsg(db) : "no connection",
             suppressed ? "; more failures since the last report were not logged" : "");
    last_ms = now;
    suppressed = 0;
}

/* ---- API keys ------------------------------------------------------------------------------- */

static int auth_key(gw_req_t *r, const char *token, size_t len, gw_principal_t *ret,
                    int64_t *ret_rate)
{
    gw_t *gw = r->loop->gw;
    char prefix[AUTH_KEY_PREFIX_LEN + 1], secret[AUTH_KEY_SECRET_LEN + 1];
    gw_key_t key;
    bool ok;
    int rc;

    if (auth_key_parse(token, len, prefix, secret) < 0) {
        gw_reply_problemf(r, 401, "unauthorized",
                          "the Authorization header does not hold a Bearer API key of the form "
                          "lok_<prefix>.<secret>");
        return -EPERM;
    }
    memcpy(r->key_prefix, prefix, sizeof(prefix));

    if (gw_keycache_get(gw->keys, prefix, svc_now_ms(), &key)) {
        svc_metric_inc(gw->metrics.key_cache_hits);
    } else {
        db_t *db;

        svc_metric_inc(gw->metrics.key_cache_misses);
        rc = gw_loop_db(r->loop, &db);
        if (rc == 0)
            rc = gw_key_fetch(db, prefix, &key);
        /* A connection the server closed while it sat idle (PostgreSQL restarted) fails its
         * next statement: the lookup only reads, so it is tried once more on a new one. */
        if (rc == -ECONNRESET && gw_loop_db(r->loop, &db) == 0)
            rc = gw_key_fetch(db, prefix, &key);
        if (rc < 0) {
            gw_loop_db_failed(r->loop);
            auth_db_warn("API key lookup", rc, r->loop->db);
            /* Ingest does not need PostgreSQL: a key the database vouched for recently keeps
             * working through an outage (a revocation made meanwhile waits for it to end). */
            if (!gw_keycache_get_stale(gw->keys, prefix, svc_now_ms(),
                                       gw->cfg.key_cache_ttl_ms + gw->cfg.key_cache_stale_ms,
                                       &key)) {
                explicit_bzero(secret, sizeof(secret));
                gw_reply_problemf(r, 503, "unavailable",
                                  "the API key cannot be checked right now (database unavailable)");
                return rc;
            }
        } else {
            gw_keycache_put(gw->keys, prefix, &key, svc_now_ms());
        }
    }

    /* Verify the secret before saying anything about the key's state, so that only the key's
     * holder learns that it was revoked or expired. */
    ok = key.found &&
         auth_key_verify(gw->cfg.key_pepper, strlen(gw->cfg.key_pepper), secret, key.secret_hash);
    explicit_bzero(secret, sizeof(secret));
    if (!ok) {
        gw_reply_problemf(r, 401, "unauthorized", "the API key is not valid");
        return -EPERM;
    }
    if (key.revoked) {
        gw_reply_problemf(r, 401, "unauthorized", "the API key has been revoked");
        return -EPERM;
    }
    if (svc_wall_us() >= key.expires_us) {
        gw_reply_problemf(r, 401, "unauthorized", "the API key has expired");
        return -EPERM;
    }
    ret->kind = GW_PRINCIPAL_KEY;
    memcpy(ret->org_id, key.org_id, sizeof(ret->org_id));
    memcpy(ret->project_id, key.project_id, sizeof(ret->project_id));
    snprintf(ret->subject, sizeof(ret->subject), "key:%s", prefix);
    ret->scopes = key.scopes;
    ret->role = 0;
    *ret_rate = key.rate_limit_per_s;
    gw_key_touch(r->loop, key.org_id, prefix);
    return 0;
}

/* ---- people's access tokens ----------------------------------------------------------------- */

static int auth_user(gw_req_t *r, const char *token, size_t len, gw_principal_t *ret)
{
    auth_jwt_verified_t *claims = NULL;
    const char *reason = NULL;
    int rc;

    rc = gw_jwt_verify(r->loop->gw, token, len, &claims, &reason);
    if (rc == -ENOMEM) {
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return rc;
    }
    if (rc == 0 && (!gw_is_uuid(claims->sub) || !claims->org || !gw_is_uuid(claims->org))) {
        rc = -EINVAL;
        reason = "it names no user or organization";
    } else if (rc == 0 && role_rank(claims->roles) == 0) {
        rc = -EINVAL;
        reason = "it grants no role";
    }
    if (rc < 0) {
        auth_jwt_verified_free(claims);
        log_info("access token refused: %s", reason ? reason : "invalid");
        gw_req_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        gw_reply_problemf(r, 401, "unauthorized", "the access token is not valid: %s",
                          reason ? reason : "invalid");
        return -EPERM;
    }
    ret->kind = GW_PRINCIPAL_USER;
    snprintf(ret->org_id, sizeof(ret->org_id), "%s", claims->org);
    ret->project_id[0] = '\0';
    snprintf(ret->subject, sizeof(ret->subject), "%s", claims->sub);
    ret->scopes = 0;
    ret->role = role_top(claims->roles);
    auth_jwt_verified_free(claims);
    return 0;
}

/* ---- the front door ------------------------------------------------------------------------- */

int gw_authenticate(gw_req_t *r, unsigned accept, gw_principal_t *ret)
{
    gw_t *gw = r->loop->gw;
    const char *header = gw_req_get_header(r, "Authorization"), *token;
    int64_t rate, burst, wait_ms, key_rate = 0;
    char bucket[80];
    size_t len;
    bool is_key;
    int rc;

    memset(ret, 0, sizeof(*ret));
    if (!header || auth_bearer_token(header, &token, &len) < 0) {
        gw_reply_problemf(r, 401, "unauthorized", "send %s as \"Authorization: Bearer <token>\"",
                          accept == GW_PRINCIPAL_KEY    ? "an API key (lok_<prefix>.<secret>)"
                          : accept == GW_PRINCIPAL_USER ? "an access token (POST /auth/token)"
                                                        : "an API key or an access token");
        return -EPERM;
    }
    is_key = len >= 4 && memcmp(token, "lok_", 4) == 0;
    if (!(accept & (is_key ? GW_PRINCIPAL_KEY : GW_PRINCIPAL_USER))) {
        gw_reply_problemf(r, 401, "unauthorized", "%s",
                          is_key ? "this endpoint is for people: send an access token from "
                                   "POST /auth/token, not an API key"
                                 : "this endpoint takes an API key (lok_<prefix>.<secret>)");
        return -EPERM;
    }
    rc = is_key ? auth_key(r, token, len, ret, &key_rate) : auth_user(r, token, len, ret);
    if (rc < 0)
        return rc;

    if (is_key) {
        /* A key's own rate (api_keys.rate_limit_per_s) overrides the setting, burst 2x. */
        rate = key_rate > 0 ? key_rate : gw->cfg.key_rate_per_s;
        burst = key_rate > 0 ? 2 * key_rate : gw->cfg.key_rate_burst;
    } else {
        rate = gw->cfg.user_rate_per_s;
        burst = gw->cfg.user_rate_burst;
    }
    snprintf(bucket, sizeof(bucket), "%s", ret->subject);
    if (gw_ratelimit_take(gw->ratelimit, bucket, rate, burst, svc_now_ms(), &wait_ms) < 0) {
        char retry[24];

        svc_metric_inc(gw->metrics.rate_limited);
        snprintf(retry, sizeof(retry), "%" PRId64, (wait_ms + 999) / 1000);
        gw_req_header(r, "Retry-After", retry);
        gw_reply_problemf(r, 429, "rate-limited",
                          "more than %" PRId64 " requests per second (burst %" PRId64
                          ") for this %s; retry after %s s",
                          rate, burst, is_key ? "API key" : "user", retry);
        return -EAGAIN;
    }
    return 0;
}

int gw_authorize(gw_req_t *r, const gw_principal_t *who, unsigned scopes, unsigned min_role)
{
    if (who->kind == GW_PRINCIPAL_KEY) {
        if (scopes == 0) {
            gw_reply_problemf(r, 403, "forbidden", "API keys cannot use %s %s; sign in as a person",
                              r->method, r->path);
            return -EACCES;
        }
        for (unsigned bit = 1; bit <= GW_SCOPE_READ; bit <<= 1)
            if ((scopes & bit) && !(who->scopes & bit)) {
                gw_reply_problemf(r, 403, "forbidden", "the API key lacks the \"%s\" scope",
                                  scope_name(bit));
                return -EACCES;
            }
        return 0;
    }
    if (min_role == 0) {
        gw_reply_problemf(r, 403, "forbidden", "%s %s is for API keys", r->method, r->path);
        return -EACCES;
    }
    if (role_rank(who->role) < role_rank(min_role)) {
        gw_reply_problemf(r, 403, "forbidden", "%s %s needs the %s role (or higher); you are %s",
                          r->method, r->path, gw_role_name(min_role), gw_role_name(who->role));
        return -EACCES;
    }
    return 0;
}

int gw_auth_require(gw_req_t *r, unsigned scopes, unsigned min_role, gw_principal_t *ret)
{
    unsigned accept = (scopes ? GW_PRINCIPAL_KEY : 0) | (min_role ? GW_PRINCIPAL_USER : 0);
    int rc = gw_authenticate(r, accept, ret);

    return rc < 0 ? rc : gw_authorize(r, ret, scopes, min_role);
}
