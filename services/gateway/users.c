/* users.c: people's authentication: the /auth/ routes.
 *
 *   POST /auth/register  {email, password, name, organization} -> a user, a new organization
 *                        and the user's admin membership, in one statement (one transaction)
 *   POST /auth/token     JSON {email, password, organization?} or the OAuth2 password form
 *                        -> a JWT access token (HS256) and an opaque refresh token
 *   GET  /auth/me        Bearer JWT -> who the token speaks for
 *   POST /auth/refresh   {refresh_token} -> a new pair; the old token is revoked (rotation)
 *   POST /auth/logout    {refresh_token} -> 204, the token is revoked
 *
 * Nothing here blocks a loop: PostgreSQL is reached through the loop's db_pool, and argon2id runs
 * on the pwpool workers (see pwpool.c). A request therefore hops between callbacks, carrying an
 * auth_op_t; every path ends in op_reply*(), which answers and frees it. Until then the request
 * counts in loop->nwaiting, so that shutdown waits for it.
 *
 * Refresh tokens rotate: each use revokes the token and issues its successor in the same family.
 * A token presented after it was rotated can only come from a copy (the legitimate client holds
 * the successor), so the whole family is revoked and whoever holds it must sign in again.
 *
 * Secrets: passwords, access and refresh tokens never reach a log line; user ids do.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "auth_password.h"
#include "gateway.h"
#include "svc_log.h"
#include "svc_util.h"

#define AUTH_DB_TIMEOUT_MS 5000
#define AUTH_PW_QUEUE_MAX  256

typedef struct auth_op {
    gw_req_t *r;
    gw_loop_t *loop;
    char *email, *name, *org, *password; /* owned; the password is wiped when freed */
    bool found;                          /* token: the email belongs to someone */
    bool member;                         /* token: ... who is a member of the organization */
    char user_id[37], org_id[37], org_slug[64];
    unsigned roles;
    char refresh[GW_REFRESH_TOKEN_LEN + 1];
    char refresh_hash[GW_REFRESH_HASH_HEX + 1];
    char refresh_id[37];
} auth_op_t;

/* The gateway's database role is bound by row-level security (sql/0009_rls.sql): what happens
 * before the caller's organization is known goes through SECURITY DEFINER functions that each do
 * one narrow thing. Registering makes the organization, the user, their admin membership and the
 * audit row in one statement (one transaction). */
static const char sql_register[] = "SELECT user_id, org_id FROM sb_register($1, $2, $3, $4, $5)";

/* The person and one membership: the requested organization's, else the oldest. */
static const char sql_user[] =
    "SELECT user_id, password_hash, org_id, role FROM sb_login_lookup($1, $2)";

/* Stored only while the membership exists: false when it went away since the lookup. */
static const char sql_refresh_insert[] = "SELECT sb_refresh_issue($1, $2, $3, $4::float8)";

/* One statement, so one snapshot: either the token is live and is rotated (its membership must
 * still exist), or it was already revoked and its family is revoked (reuse), never both. */
static const char sql_refresh_rotate[] =
    "SELECT user_id, org_id, role, reused_by FROM sb_refresh_rotate($1, $2::uuid, $3, $4::float8)";

/* The revoked token's user, or NULL when it was not live. */
static const char sql_logout[] = "SELECT sb_refresh_revoke($1)";

/* Runs as the token's organization (RLS): its user and membership must be visible to it. */
static const char sql_me[] =
    "SELECT u.email, u.name, o.slug FROM users u JOIN memberships m ON m.user_id = u.id "
    "JOIN organizations o ON o.id = m.org_id WHERE u.id = $1 AND m.org_id = $2";

/* ---- small helpers ------------------------------------------------------------------------- */

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static json_t *roles_json(unsigned roles)
{
    json_t *a = json_array();

    if (a && (roles & AUTH_ROLE_ADMIN))
        json_array_append_new(a, json_string("admin"));
    if (a && (roles & AUTH_ROLE_OPERATOR))
        json_array_append_new(a, json_string("operator"));
    if (a && (roles & AUTH_ROLE_VIEWER))
        json_array_append_new(a, json_string("viewer"));
    return a;
}

static void copy_field(char *dst, size_t size, PGresult *res, int col)
{
    snprintf(dst, size, "%s", PQgetisnull(res, 0, col) ? "" : PQgetvalue(res, 0, col));
}

/* ---- the operation's life ------------------------------------------------------------------ */

static auth_op_t *op_new(gw_req_t *r)
{
    auth_op_t *op = calloc(1, sizeof(*op));

    if (!op) {
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return NULL;
    }
    op->r = r;
    op->loop = r->loop;
    op->loop->nwaiting++;
    return op;
}

static void op_free(auth_op_t *op)
{
    op->loop->nwaiting--;
    free(op->email);
    free(op->name);
    free(op->org);
    wipe_free(op->password);
    explicit_bzero(op->refresh, sizeof(op->refresh));
    free(op);
}

static void op_reply_json(auth_op_t *op, int status, json_t *doc)
{
    gw_reply_json(op->r, status, doc);
    op_free(op);
}

static __attribute__((format(printf, 4, 5))) void op_fail(auth_op_t *op, int status,
                                                          const char *slug, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    gw_reply_problemv(op->r, status, slug, fmt, ap);
    va_end(ap);
    op_free(op);
}

/* The client left while we worked: count it and stop here. */
static bool op_gone(auth_op_t *op)
{
    if (op->r->evreq)
        return false;
    op_fail(op, 503, "unavailable", "the client went away");
    return true;
}

/* A query failed for a reason that is not the client's. The server's primary message only:
 * its DETAIL line can quote row values, such as a password hash. */
static void op_db_failed(auth_op_t *op, int err, PGresult *res)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    gw_req_enter(op->r);
    if (err == -EINVAL && state && strncmp(state, "22", 2) == 0) {
        /* Data exceptions: a value PostgreSQL cannot take, such as a form field that is not
         * UTF-8. The client's doing, not ours. */
        op_fail(op, 422, "invalid-fields", "a field holds a value that cannot be stored: %s",
                msg ? msg : "invalid data");
        return;
    }
    if (err == -EINVAL) {
        log_error("auth query failed: %s", msg ? msg : "unknown error");
        op_fail(op, 500, "internal-error", "the request could not be completed");
        return;
    }
    log_warn("auth query failed: %s", msg ? msg : strerror(-err));
    op_fail(op, 503, "unavailable", "the account database is unavailable; retry shortly");
}

static int op_query(auth_op_t *op, const char *sql, int n, const char *const *params, db_pool_cb cb)
{
    int rc = db_pool_query(op->loop->pool, sql, n, params, cb, op, AUTH_DB_TIMEOUT_MS);

    if (rc < 0)
        op_db_failed(op, rc == -EINVAL ? -EIO : rc, NULL);
    return rc;
}

/* Like op_query(), as organization @org_id (app.org_id set for row-level security). */
static int op_query_as(auth_op_t *op, const char *org_id, const char *sql, int n,
                       const char *const *params, db_pool_cb cb)
{
    int rc = db_pool_query_as(op->loop->pool, org_id, sql, n, params, cb, op, AUTH_DB_TIMEOUT_MS);

    if (rc < 0)
        op_db_failed(op, rc == -EINVAL ? -EIO : rc, NULL);
    return rc;
}

static int op_password(auth_op_t *op, const char *password, const char *phc, gw_pwpool_cb cb)
{
    int rc = gw_pwpool_submit(op->loop->gw->pwpool, op->loop->base, password, phc, cb, op);

    if (rc == -EAGAIN)
        op_fail(op, 503, "unavailable", "too many sign-ins are in progress; retry shortly");
    else if (rc < 0)
        op_fail(op, 500, "internal-error", "out of memory");
    return rc;
}

/* ---- request bodies ------------------------------------------------------------------------ */

/* ---- token pairs ----------------------------------------------------------------------------- */

/* Signs an access token for op's user, organization and roles and answers with the pair (the
 * refresh token is already stored). */
static void op_reply_pair(auth_op_t *op)
{
    const gw_config_t *cfg = &op->loop->gw->cfg;
    auth_jwt_claims_t claims = {.sub = op->user_id,
                                .org = op->org_id,
                                .roles = op->roles,
                                .iss = cfg->jwt_issuer,
                                .aud = cfg->jwt_audience,
                                .ttl_s = cfg->access_ttl_s};
    char *jwt = NULL;
    json_t *doc;
    int rc;

    rc = auth_jwt_issue(op->loop->gw->jwt_key, &claims, svc_wall_us() / 1000000, &jwt);
    if (rc < 0) {
        gw_req_enter(op->r);
        log_error("cannot sign an access token: %s", strerror(-rc));
        op_fail(op, 500, "internal-error", "the access token could not be signed");
        return;
    }
    doc = json_pack("{s:s, s:s, s:I, s:s}", "access_token", jwt, "token_type", "bearer",
                    "expires_in", (json_int_t)cfg->access_ttl_s, "refresh_token", op->refresh);
    explicit_bzero(jwt, strlen(jwt));
    free(jwt);
    /* RFC 6749 5.1: token responses must not be cached. */
    gw_req_header(op->r, "Cache-Control", "no-store");
    op_reply_json(op, 200, doc);
}

/* ---- POST /auth/register ------------------------------------------------------------------- */

static void register_done(int err, PGresult *res, void *arg)
{
    auth_op_t *op = arg;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;

    if (err == 0 && PQntuples(res) == 1) {
        json_t *doc = json_pack("{s:{s:s, s:s, s:s}, s:{s:s, s:s}}", "user", "id",
                                PQgetvalue(res, 0, 0), "email", op->email, "name", op->name,
                                "organization", "id", PQgetvalue(res, 0, 1), "slug", op->org);

        gw_req_enter(op->r);
        log_info("registered user_id=%s as admin of org_id=%s", PQgetvalue(res, 0, 0),
                 PQgetvalue(res, 0, 1));
        op_reply_json(op, 201, doc);
    } else if (err == -EINVAL && state && strcmp(state, "23505") == 0 && constraint &&
               strcmp(constraint, "users_email_lower_key") == 0) {
        op_fail(op, 409, "conflict", "an account with this email already exists");
    } else if (err == -EINVAL && state && strcmp(state, "23505") == 0) {
        op_fail(op, 409, "conflict", "the organization \"%s\" already exists", op->org);
    } else {
        op_db_failed(op, err == 0 ? -EIO : err, res);
    }
    PQclear(res);
}

static void register_hashed(int rc, char *phc, void *arg)
{
    auth_op_t *op = arg;
    const char *params[5];

    if (rc < 0) {
        gw_req_enter(op->r);
        if (rc != -ECANCELED)
            log_error("cannot hash a password: %s", strerror(-rc));
        op_fail(op, rc == -ECANCELED ? 503 : 500,
                rc == -ECANCELED ? "unavailable" : "internal-error",
                "the password could not be hashed");
        return;
    }
    if (op_gone(op)) {
        free(phc);
        return;
    }
    params[0] = op->org;
    params[1] = op->email;
    params[2] = op->name;
    params[3] = phc;
    params[4] = op->r->request_id;
    op_query(op, sql_register, 5, params, register_done);
    free(phc);
}

static void register_handle(gw_req_t *r)
{
    json_t *doc = gw_body_object(r), *errors;
    const char *email, *password, *name, *org, *why;
    auth_op_t *op;

    if (!doc)
        return;
    errors = json_array();
    email = gw_field_str(doc, "email", true, errors);
    password = gw_field_str(doc, "password", true, errors);
    name = gw_field_str(doc, "name", true, errors);
    org = gw_field_str(doc, "organization", true, errors);
    if (email && (why = gw_people_email_check(email)))
        gw_field_error(errors, "email", why);
    if (password && (why = gw_people_password_check(
                         password, json_string_length(json_object_get(doc, "password")))))
        gw_field_error(errors, "password", why);
    if (name && (why = gw_people_name_check(name)))
        gw_field_error(errors, "name", why);
    if (org && (why = gw_people_slug_check(org)))
        gw_field_error(errors, "organization", why);
    if (gw_fields_rejected(r, errors) || !(op = op_new(r))) {
        json_decref(doc);
        return;
    }
    op->email = strdup(email);
    op->name = strdup(name);
    op->org = strdup(org);
    if (!op->email || !op->name || !op->org)
        op_fail(op, 500, "internal-error", "out of memory");
    else
        op_password(op, password, NULL, register_hashed);
    json_decref(doc);
}

/* ---- POST /auth/token ---------------------------------------------------------------------- */

static void token_stored(int err, PGresult *res, void *arg)
{
    auth_op_t *op = arg;

    if (err < 0) {
        op_db_failed(op, err, res);
    } else if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        gw_req_enter(op->r);
        log_info("sign-in refused: user_id=%s left org_id=%s meanwhile", op->user_id, op->org_id);
        op_fail(op, 403, "forbidden", "you are no longer a member of this organization");
    } else {
        op_reply_pair(op);
    }
    PQclear(res);
}

static void token_verified(int rc, char *phc, void *arg)
{
    auth_op_t *op = arg;
    char ttl[24];
    const char *params[4] = {op->user_id, op->org_id, op->refresh_hash, ttl};

    (void)phc;
    wipe_free(op->password);
    op->password = NULL;
    gw_req_enter(op->r);
    if (rc == -ECANCELED) {
        op_fail(op, 503, "unavailable", "the gateway is shutting down");
        return;
    }
    if (rc < 0 && rc != -EACCES)
        log_error("password check failed for user_id=%s: %s", op->user_id, strerror(-rc));
    if (rc < 0 || !op->found) {
        if (op->found)
            log_info("sign-in refused: wrong password for user_id=%s", op->user_id);
        else
            log_info("sign-in refused: unknown email");
        op_fail(op, 401, "unauthorized", "the email or password is wrong");
        return;
    }
    if (!op->member) {
        log_info("sign-in refused: user_id=%s is not a member of the organization", op->user_id);
        if (op->org)
            op_fail(op, 403, "forbidden", "you are not a member of the organization \"%s\"",
                    op->org);
        else
            op_fail(op, 403, "forbidden", "you are not a member of any organization");
        return;
    }
    if (op_gone(op))
        return;
    if (gw_refresh_token_new(op->refresh, op->refresh_hash) < 0) {
        op_fail(op, 500, "internal-error", "no randomness available");
        return;
    }
    log_info("user_id=%s signed in to org_id=%s", op->user_id, op->org_id);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)op->loop->gw->cfg.refresh_ttl_s);
    op_query(op, sql_refresh_insert, 4, params, token_stored);
}

static void token_user(int err, PGresult *res, void *arg)
{
    auth_op_t *op = arg;
    const char *phc = op->loop->gw->dummy_phc;

    if (err < 0) {
        op_db_failed(op, err, res);
        PQclear(res);
        return;
    }
    if (PQntuples(res) == 1) {
        op->found = true;
        copy_field(op->user_id, sizeof(op->user_id), res, 0);
        phc = PQgetvalue(res, 0, 1);
        op->member = !PQgetisnull(res, 0, 2);
        copy_field(op->org_id, sizeof(op->org_id), res, 2);
        op->roles = gw_role_parse(PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3));
    }
    /* Unknown emails are checked against the dummy hash: the same work, the same answer. */
    if (!op_gone(op))
        op_password(op, op->password, phc, token_verified);
    PQclear(res);
}

/* The OAuth2 password grant (RFC 6749 4.3), as form-posting clients such as FastAPI's send it. */
static int token_form(gw_req_t *r, auth_op_t *op, json_t *errors)
{
    struct evbuffer *input = evhttp_request_get_input_buffer(r->evreq);
    size_t len = evbuffer_get_length(input);
    struct evkeyvalq form = {0};
    const char *grant, *v;
    char *body = malloc(len + 1);
    int rc = 0;

    if (!body)
        return -ENOMEM;
    evbuffer_copyout(input, body, len);
    body[len] = '\0';
    if (evhttp_parse_query_str(body, &form) < 0) {
        gw_field_error(errors, "grant_type",
                       "the form is not valid application/x-www-form-urlencoded");
        goto out;
    }
    grant = evhttp_find_header(&form, "grant_type");
    if (!grant || strcmp(grant, "password") != 0)
        gw_field_error(errors, "grant_type", "must be \"password\"");
    if (!(v = evhttp_find_header(&form, "username")) || !*v)
        gw_field_error(errors, "username", "is required");
    else if (!(op->email = strdup(v)))
        rc = -ENOMEM;
    if (!(v = evhttp_find_header(&form, "password")) || !*v)
        gw_field_error(errors, "password", "is required");
    else if (!(op->password = strdup(v)))
        rc = -ENOMEM;
    if ((v = evhttp_find_header(&form, "organization")) && *v && !(op->org = strdup(v)))
        rc = -ENOMEM;
out:
    /* The form's values include the password: wipe them before freeing. */
    for (struct evkeyval *kv = form.tqh_first; kv; kv = kv->next.tqe_next)
        explicit_bzero(kv->value, strlen(kv->value));
    evhttp_clear_headers(&form);
    explicit_bzero(body, len);
    free(body);
    return rc;
}

static int token_json(gw_req_t *r, auth_op_t *op, json_t *errors)
{
    json_t *doc = gw_body_object(r);
    const char *email, *password, *org;
    int rc = 0;

    if (!doc)
        return -EBADMSG;
    email = gw_field_str(doc, "email", true, errors);
    password = gw_field_str(doc, "password", true, errors);
    org = gw_field_str(doc, "organization", false, errors);
    if (email && !*email)
        gw_field_error(errors, "email", "must not be empty");
    if (password && !*password)
        gw_field_error(errors, "password", "must not be empty");
    if ((email && !(op->email = strdup(email))) ||
        (password && !(op->password = strdup(password))) || (org && !(op->org = strdup(org))))
        rc = -ENOMEM;
    json_decref(doc);
    return rc;
}

static void token_handle(gw_req_t *r)
{
    const char *ct = gw_req_get_header(r, "Content-Type");
    json_t *errors = json_array();
    auth_op_t *op = op_new(r);
    const char *params[2];
    int rc;

    if (!op) {
        json_decref(errors);
        return;
    }
    if (gw_content_type_is(ct, "application/x-www-form-urlencoded"))
        rc = token_form(r, op, errors);
    else
        rc = token_json(r, op, errors);
    if (rc == -EBADMSG) { /* answered */
        json_decref(errors);
        op_free(op);
        return;
    }
    if (rc < 0 || !errors) {
        json_decref(errors);
        op_fail(op, 500, "internal-error", "out of memory");
        return;
    }
    if (op->org && gw_people_slug_check(op->org))
        gw_field_error(errors, "organization", gw_people_slug_check(op->org));
    if (gw_fields_rejected(r, errors)) {
        op_free(op);
        return;
    }
    params[0] = op->email;
    params[1] = op->org;
    op_query(op, sql_user, 2, params, token_user);
}

/* ---- GET /auth/me -------------------------------------------------------------------------- */

static void me_reject(auth_op_t *op, const char *reason)
{
    gw_req_enter(op->r);
    log_info("access token refused: %s", reason);
    gw_req_header(op->r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
    op_fail(op, 401, "unauthorized", "the access token is not valid: %s", reason);
}

static void me_done(int err, PGresult *res, void *arg)
{
    auth_op_t *op = arg;

    if (err < 0) {
        op_db_failed(op, err, res);
    } else if (PQntuples(res) != 1) {
        me_reject(op, "its user or membership no longer exists");
    } else {
        json_t *doc =
            json_pack("{s:s, s:s, s:s, s:{s:s, s:s}, s:o}", "id", op->user_id, "email",
                      PQgetvalue(res, 0, 0), "name", PQgetvalue(res, 0, 1), "organization", "id",
                      op->org_id, "slug", PQgetvalue(res, 0, 2), "roles", roles_json(op->roles));

        op_reply_json(op, 200, doc);
    }
    PQclear(res);
}

static void me_handle(gw_req_t *r)
{
    const char *header = gw_req_get_header(r, "Authorization"), *token, *reason = NULL;
    auth_jwt_verified_t *claims = NULL;
    auth_op_t *op;
    const char *params[2];
    size_t len;
    int rc;

    if (!header) {
        gw_reply_problemf(r, 401, "unauthorized",
                          "send an access token as \"Authorization: Bearer <token>\" (from "
                          "POST /auth/token)");
        return;
    }
    if (!(op = op_new(r)))
        return;
    rc = auth_bearer_token(header, &token, &len);
    if (rc == 0)
        rc = auth_jwt_verify(r->loop->gw->jwt_verifier, token, len, svc_wall_us() / 1000000,
                             &claims, &reason);
    if (rc == -ENOMEM) {
        op_fail(op, 500, "internal-error", "out of memory");
        return;
    }
    if (rc < 0 || !gw_is_uuid(claims->sub) || !gw_is_uuid(claims->org)) {
        auth_jwt_verified_free(claims);
        me_reject(op,
                  rc < 0 ? (reason ? reason : "not a Bearer token") : "it names no organization");
        return;
    }
    snprintf(op->user_id, sizeof(op->user_id), "%s", claims->sub);
    snprintf(op->org_id, sizeof(op->org_id), "%s", claims->org);
    op->roles = claims->roles;
    auth_jwt_verified_free(claims);
    params[0] = op->user_id;
    params[1] = op->org_id;
    op_query_as(op, op->org_id, sql_me, 2, params, me_done);
}

/* ---- POST /auth/refresh and /auth/logout ---------------------------------------------------- */

/* Reads {refresh_token} into op->refresh_hash (hashed at once: the token itself is not kept).
 * 0, or -1 after answering. */
static int refresh_body(gw_req_t *r, auth_op_t *op)
{
    json_t *doc = gw_body_object(r), *errors;
    const char *token;

    if (!doc) {
        op_free(op);
        return -1;
    }
    errors = json_array();
    token = gw_field_str(doc, "refresh_token", true, errors);
    if (token)
        gw_refresh_token_hash(token, strlen(token), op->refresh_hash);
    json_decref(doc);
    if (gw_fields_rejected(r, errors)) {
        op_free(op);
        return -1;
    }
    return 0;
}

static void refresh_done(int err, PGresult *res, void *arg)
{
    auth_op_t *op = arg;

    if (err < 0) {
        op_db_failed(op, err, res);
        PQclear(res);
        return;
    }
    gw_req_enter(op->r);
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 3))
        log_warn("a rotated refresh token was presented again: every token of that session is "
                 "revoked user_id=%s",
                 PQgetvalue(res, 0, 3));
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        op_fail(op, 401, "unauthorized",
                "the refresh token is not valid (unknown, expired, revoked or already used); "
                "sign in again");
    } else {
        copy_field(op->user_id, sizeof(op->user_id), res, 0);
        copy_field(op->org_id, sizeof(op->org_id), res, 1);
        op->roles = gw_role_parse(PQgetvalue(res, 0, 2));
        log_info("user_id=%s refreshed its tokens", op->user_id);
        op_reply_pair(op);
    }
    PQclear(res);
}

static void refresh_handle(gw_req_t *r)
{
    auth_op_t *op = op_new(r);
    char ttl[24], old_hash[GW_REFRESH_HASH_HEX + 1];
    const char *params[4] = {old_hash, op ? op->refresh_id : NULL, op ? op->refresh_hash : NULL,
                             ttl};

    if (!op || refresh_body(r, op) < 0)
        return;
    memcpy(old_hash, op->refresh_hash, sizeof(old_hash));
    if (svc_uuid4(op->refresh_id) < 0 || gw_refresh_token_new(op->refresh, op->refresh_hash) < 0) {
        op_fail(op, 500, "internal-error", "no randomness available");
        return;
    }
    snprintf(ttl, sizeof(ttl), "%lld", (long long)r->loop->gw->cfg.refresh_ttl_s);
    op_query(op, sql_refresh_rotate, 4, params, refresh_done);
}

static void logout_done(int err, PGresult *res, void *arg)
{
    auth_op_t *op = arg;

    if (err < 0) {
        op_db_failed(op, err, res);
    } else {
        if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
            gw_req_enter(op->r);
            log_info("user_id=%s signed out", PQgetvalue(res, 0, 0));
        }
        /* 204 whether or not the token was live (RFC 7009 2.2): logging out is idempotent. */
        gw_reply(op->r, 204, NULL, "", 0);
        op_free(op);
    }
    PQclear(res);
}

static void logout_handle(gw_req_t *r)
{
    auth_op_t *op = op_new(r);
    const char *params[1];

    if (!op || refresh_body(r, op) < 0)
        return;
    params[0] = op->refresh_hash;
    op_query(op, sql_logout, 1, params, logout_done);
}

/* ---- setup --------------------------------------------------------------------------------- */

void gw_auth_handle(gw_req_t *r)
{
    switch (r->route) {
    case GW_ROUTE_AUTH_REGISTER:
        register_handle(r);
        break;
    case GW_ROUTE_AUTH_TOKEN:
        token_handle(r);
        break;
    case GW_ROUTE_AUTH_ME:
        me_handle(r);
        break;
    case GW_ROUTE_AUTH_REFRESH:
        refresh_handle(r);
        break;
    case GW_ROUTE_AUTH_LOGOUT:
        logout_handle(r);
        break;
    default:
        gw_reply_problemf(r, 404, "not-found", "no route for %s", r->path);
        break;
    }
}

/* Our signing key: HS256 from jwt_secret, or RS256/ES256 from a PEM private key file. */
static int auth_key_load(gw_t *gw)
{
    const gw_config_t *cfg = &gw->cfg;
    auth_jwt_claims_t probe = {.sub = "probe", .iss = "probe", .aud = "probe", .ttl_s = 1};
    auth_jwt_alg_t alg;
    char *token = NULL;
    int rc;

    if (strcmp(cfg->jwt_alg, "HS256") == 0)
        return auth_jwt_key_new_hs256(cfg->jwt_secret, strlen(cfg->jwt_secret), NULL, &gw->jwt_key);
    if (strcmp(cfg->jwt_alg, "RS256") == 0) {
        alg = AUTH_JWT_RS256;
    } else if (strcmp(cfg->jwt_alg, "ES256") == 0) {
        alg = AUTH_JWT_ES256;
    } else {
        log_error("jwt_alg must be HS256, RS256 or ES256, not \"%s\"", cfg->jwt_alg);
        return -EINVAL;
    }
    if (!cfg->jwt_private_key_file || !*cfg->jwt_private_key_file) {
        log_error(
            "jwt_alg %s needs jwt_private_key_file (SB_GATEWAY_JWT_PRIVATE_KEY_FILE): the PEM "
            "private key access tokens are signed with",
            cfg->jwt_alg);
        return -EINVAL;
    }
    rc = auth_jwt_key_new_pem_file(alg, cfg->jwt_private_key_file, NULL, &gw->jwt_key);
    /* A public key loads too, but cannot sign: find out now rather than at the first sign-in. */
    if (rc == 0)
        rc = auth_jwt_issue(gw->jwt_key, &probe, 0, &token);
    free(token);
    if (rc < 0)
        log_error("jwt_private_key_file %s: %s (want an unencrypted PEM private key: RSA of at "
                  "least 2048 bits for RS256, EC P-256 for ES256)",
                  cfg->jwt_private_key_file,
                  rc == -EINVAL || rc == -ENOKEY ? "not a usable private key" : strerror(-rc));
    return rc;
}

/* oidc_role_map: "group=role,group=role"; the last '=' splits, blanks around items are dropped. */
static int oidc_role_map_parse(auth_jwt_verifier_t *v, const char *map)
{
    const char *s = map;
    int rc = 0;

    while (rc == 0 && *s) {
        size_t len = strcspn(s, ",");
        char *item = strndup(s, len), *b = item, *e, *eq;
        unsigned role;

        if (!item)
            return -ENOMEM;
        while (*b == ' ')
            b++;
        for (e = b + strlen(b); e > b && e[-1] == ' '; e--)
            e[-1] = '\0';
        eq = strrchr(b, '=');
        if (*b) {
            role = eq ? gw_role_parse(eq + 1) : 0;
            if (eq)
                *eq = '\0';
            if (!eq || eq == b || !role) {
                log_error("oidc_role_map: \"%s\" is not group=admin, group=operator or "
                          "group=viewer",
                          b);
                rc = -EINVAL;
            } else if ((rc = auth_jwt_verifier_map_role(v, b, role)) == -EEXIST) {
                log_error("oidc_role_map maps the group \"%s\" twice", b);
            }
        }
        free(item);
        s += len + (s[len] == ',');
    }
    return rc;
}

/* The external issuer's verifier, when oidc_issuer is set. */
static int oidc_init(gw_t *gw)
{
    const gw_config_t *cfg = &gw->cfg;
    int rc;

    if (!cfg->oidc_issuer || !*cfg->oidc_issuer)
        return 0;
    if (!*cfg->oidc_audience || !*cfg->oidc_jwks_file) {
        log_error("oidc_issuer is set: oidc_audience (the app client id) and oidc_jwks_file (the "
                  "issuer's JWKS) are required too");
        return -EINVAL;
    }
    rc = auth_jwt_verifier_new(cfg->oidc_issuer, cfg->oidc_audience, &gw->oidc_verifier);
    if (rc == 0 &&
        (rc = auth_jwt_verifier_add_jwks_file(gw->oidc_verifier, cfg->oidc_jwks_file)) < 0)
        log_error("oidc_jwks_file %s: %s", cfg->oidc_jwks_file,
                  rc == -EINVAL ? "not a JWKS with an RS256 or ES256 signing key" : strerror(-rc));
    if (rc == 0 && (rc = auth_jwt_verifier_set_claims(gw->oidc_verifier, cfg->oidc_org_claim,
                                                      cfg->oidc_roles_claim)) < 0)
        log_error("oidc_org_claim and oidc_roles_claim must not be empty");
    if (rc == 0)
        rc = oidc_role_map_parse(gw->oidc_verifier, cfg->oidc_role_map);
    if (rc == 0)
        log_info("accepting access tokens from %s (audience %s)", cfg->oidc_issuer,
                 cfg->oidc_audience);
    return rc;
}

int gw_jwt_verify(gw_t *gw, const char *token, size_t len, auth_jwt_verified_t **ret_claims,
                  const char **ret_reason)
{
    int64_t now = svc_wall_us() / 1000000;
    const char *why = NULL;
    int rc, rc2;

    rc = auth_jwt_verify(gw->jwt_verifier, token, len, now, ret_claims, ret_reason);
    if (rc == 0 || rc == -ENOMEM || !gw->oidc_verifier)
        return rc;
    rc2 = auth_jwt_verify(gw->oidc_verifier, token, len, now, ret_claims, &why);
    /* A token one verifier has no key for was meant for the other: its refusal is the one that
     * tells what is wrong. */
    if (rc2 == 0 || rc2 == -ENOMEM || (rc == -EKEYREJECTED && rc2 != -EKEYREJECTED)) {
        if (ret_reason)
            *ret_reason = why;
        return rc2;
    }
    return rc;
}

int gw_auth_init(gw_t *gw)
{
    const gw_config_t *cfg = &gw->cfg;
    unsigned char raw[24];
    char password[49];
    int rc;

    rc = auth_key_load(gw);
    if (rc == 0)
        rc = auth_jwt_verifier_new(cfg->jwt_issuer, cfg->jwt_audience, &gw->jwt_verifier);
    if (rc == 0)
        rc = auth_jwt_verifier_add_key(gw->jwt_verifier, gw->jwt_key);
    if (rc == 0)
        rc = oidc_init(gw);
    if (rc < 0) {
        log_error("cannot set up access tokens: %s", strerror(-rc));
        return rc;
    }
    /* A hash of a random password nobody knows, with the current parameters. */
    rc = svc_random_bytes(raw, sizeof(raw));
    for (size_t i = 0; rc == 0 && i < sizeof(raw); i++)
        snprintf(password + 2 * i, 3, "%02x", raw[i]);
    if (rc == 0)
        rc = auth_password_hash(NULL, password, &gw->dummy_phc);
    explicit_bzero(password, sizeof(password));
    explicit_bzero(raw, sizeof(raw));
    if (rc == 0)
        rc = gw_pwpool_new((size_t)cfg->password_workers, AUTH_PW_QUEUE_MAX, &gw->pwpool);
    if (rc < 0) {
        log_error("cannot set up password hashing: %s", strerror(-rc));
        return rc;
    }
    return 0;
}

void gw_auth_stop(gw_t *gw)
{
    gw_pwpool_free(gw->pwpool);
    gw->pwpool = NULL;
}

void gw_auth_free(gw_t *gw)
{
    gw_auth_stop(gw);
    auth_jwt_verifier_free(gw->jwt_verifier);
    auth_jwt_verifier_free(gw->oidc_verifier);
    auth_jwt_key_free(gw->jwt_key);
    free(gw->dummy_phc);
}
