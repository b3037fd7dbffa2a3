/* admin.c: an organization's administration: projects, API keys, members and the audit log.
 *
 *   POST   /projects        {slug, name?}                          -> 201 the project
 *   GET    /projects        ?limit&cursor                          -> a page, oldest first
 *   POST   /api-keys        {project_id, scopes, name?, expires_at?, rate_limit_per_s?}
 *                           -> 201 the key with its token, shown this once
 *   GET    /api-keys        ?project_id&limit&cursor               -> a page (never secrets)
 *   DELETE /api-keys/{id}   -> 204 (revoking a revoked key too)
 *   GET    /members         ?limit&cursor                          -> a page of memberships
 *   POST   /members         {email, role}                          -> 201 the membership
 *   DELETE /members/{id}    -> 204; 409 for the organization's last admin
 *   GET    /audit-logs      ?action&from&to&limit&cursor           -> a page, newest first
 *
 * Every route is for people with the admin role, and acts on their organization only: each
 * statement runs as it (gw_op_query sets app.org_id, so row-level security confines it) and also
 * names it in its WHERE clauses; RLS is the second lock, not the only one. Another
 * organization's project, key or member is "not found".
 *
 * Every change is one statement whose data-modifying CTEs make the change and write its
 * audit_logs row (actor, action, target, request id, details without secrets), so both commit
 * together or neither does. Write statements take $1 = organization, $2 = actor, $3 = request id
 * (admin_write); their own parameters follow.
 *
 * Lists use keyset pagination: rows come back as (document, sort key in epoch microseconds, id)
 * and the cursor wraps the last row's sort key and id.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "svc_log.h"
#include "svc_util.h"

#define PAGE_DEFAULT 100
#define PAGE_MAX     1000

/* ---- the statements ---------------------------------------------------------------------------
 * Kept together and laid out by hand: clang-format cannot lay out SQL built with macros. */
/* clang-format off */

/* SQL fragments: a timestamptz as RFC 3339 UTC with microseconds (NULL stays NULL); as epoch
 * microseconds (exact: extract() is numeric); and back from a bigint parameter. */
#define TS(col)       "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
#define EPOCH_US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"
#define FROM_US(p)    "(timestamptz 'epoch' + " p "::bigint * interval '1 microsecond')"

#define AUDIT_INSERT                                                                               \
    "INSERT INTO audit_logs (org_id, actor, action, target_type, target_id, request_id, details) "

#define PROJECT_DOC(p)                                                                             \
    "json_build_object('id', " p ".id, 'slug', " p ".slug, 'name', " p ".name, "                  \
    "'created_at', " TS(p ".created_at") ")"

#define KEY_DOC(k)                                                                                 \
    "json_build_object('id', " k ".id, 'prefix', " k ".prefix, 'project_id', " k ".project_id, "   \
    "'name', " k ".name, 'scopes', " k ".scopes, 'created_at', " TS(k ".created_at") ", "          \
    "'expires_at', " TS(k ".expires_at") ", 'revoked_at', " TS(k ".revoked_at") ", "               \
    "'last_used_at', " TS(k ".last_used_at") ", 'rate_limit_per_s', " k ".rate_limit_per_s)"

#define KEY_COLUMNS                                                                                \
    "id, org_id, project_id, prefix, name, scopes, created_at, expires_at, revoked_at, "           \
    "last_used_at, rate_limit_per_s"

static const char sql_project_create[] =
    "WITH p AS (INSERT INTO projects (org_id, slug, name) VALUES ($1, $4, $5) "
    "RETURNING id, slug, name, created_at), "
    "a AS (" AUDIT_INSERT "SELECT $1, $2, 'project.create', 'project', p.id::text, $3, "
    "jsonb_build_object('slug', p.slug, 'name', p.name) FROM p) "
    "SELECT " PROJECT_DOC("p") " FROM p";

static const char sql_project_list[] =
    "SELECT " PROJECT_DOC("p") ", " EPOCH_US("p.created_at") ", p.id FROM projects p "
    "WHERE p.org_id = $1 "
    "AND ($2::bigint IS NULL OR (p.created_at, p.id) > (" FROM_US("$2") ", $3::uuid)) "
    "ORDER BY p.created_at, p.id LIMIT $4";

/* The project must be one of the organization's: otherwise nothing is inserted (404). The
 * audit row never holds the secret or its hash. */
static const char sql_key_create[] =
    "WITH k AS (INSERT INTO api_keys (org_id, project_id, prefix, secret_hash, name, scopes, "
    "expires_at, rate_limit_per_s) "
    "SELECT $1, p.id, $5, $6, $7, $8::text[], " FROM_US("$9") ", $10::integer "
    "FROM projects p WHERE p.id = $4::uuid AND p.org_id = $1 RETURNING " KEY_COLUMNS "), "
    "a AS (" AUDIT_INSERT "SELECT $1, $2, 'api_key.create', 'api_key', k.id::text, $3, "
    "jsonb_build_object('prefix', k.prefix, 'name', k.name, 'project_id', k.project_id, "
    "'scopes', k.scopes, 'expires_at', k.expires_at, 'rate_limit_per_s', k.rate_limit_per_s) "
    "FROM k) "
    "SELECT " KEY_DOC("k") " FROM k";

/* A project named by ?project_id must be the organization's (known false: 404). With no key,
 * one row of NULLs tells that answer. */
static const char sql_key_list[] =
    "SELECT l.doc, l.key, l.id, f.known FROM (SELECT $2::uuid IS NULL OR EXISTS ("
    "SELECT FROM projects WHERE id = $2 AND org_id = $1) AS known) f "
    "LEFT JOIN LATERAL (SELECT " KEY_DOC("k") " AS doc, " EPOCH_US("k.created_at") " AS key, "
    "k.id FROM api_keys k WHERE f.known AND k.org_id = $1 "
    "AND ($2::uuid IS NULL OR k.project_id = $2) "
    "AND ($3::bigint IS NULL OR (k.created_at, k.id) > (" FROM_US("$3") ", $4::uuid)) "
    "ORDER BY k.created_at, k.id LIMIT $5) l ON true ORDER BY l.key, l.id";

/* Idempotent: a revoked key stays revoked at its first revocation time, and only the revocation
 * that changed something is audited. The key's prefix comes back (both for the cache and the
 * answer): no row means no such key in this organization. */
static const char sql_key_revoke[] =
    "WITH k AS (SELECT id, prefix FROM api_keys WHERE id = $4::uuid AND org_id = $1), "
    "r AS (UPDATE api_keys SET revoked_at = now() "
    "WHERE id = $4::uuid AND org_id = $1 AND revoked_at IS NULL RETURNING id, prefix), "
    "a AS (" AUDIT_INSERT "SELECT $1, $2, 'api_key.revoke', 'api_key', r.id::text, $3, "
    "jsonb_build_object('prefix', r.prefix) FROM r) "
    "SELECT k.prefix, (SELECT count(*) FROM r) FROM k";

static const char sql_member_list[] =
    "SELECT json_build_object('user_id', m.user_id, 'email', u.email, 'name', u.name, "
    "'role', m.role, 'created_at', " TS("m.created_at") "), "
    EPOCH_US("m.created_at") ", m.user_id "
    "FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 "
    "AND ($2::bigint IS NULL OR (m.created_at, m.user_id) > (" FROM_US("$2") ", $3::uuid)) "
    "ORDER BY m.created_at, m.user_id LIMIT $4";

/* People join by email, before the organization can see them: sb_user_id_by_email() is the
 * SECURITY DEFINER lookup (sql/0009_rls.sql). Row: the user's id (NULL: nobody registered with
 * that email) and the membership (NULL when it was not made). */
static const char sql_member_add[] =
    "WITH u AS (SELECT sb_user_id_by_email($4) AS id), "
    "m AS (INSERT INTO memberships (user_id, org_id, role) SELECT u.id, $1, $5 FROM u "
    "WHERE u.id IS NOT NULL RETURNING user_id, role, created_at), "
    "a AS (" AUDIT_INSERT "SELECT $1, $2, 'member.add', 'user', m.user_id::text, $3, "
    "jsonb_build_object('email', $4::text, 'role', m.role) FROM m) "
    "SELECT (SELECT id FROM u), (SELECT json_build_object('user_id', m.user_id, 'email', "
    "$4::text, 'role', m.role, 'created_at', " TS("m.created_at") ") FROM m)";

/* An organization keeps at least one admin. The admins' rows are locked (FOR UPDATE) before the
 * count is taken, so that two concurrent removals of the last two admins serialize: the second
 * one counts again after the first committed, and finds one admin left. Row: the member's role
 * before (NULL: not a member) and how many rows were removed (0 for the last admin). */
static const char sql_member_remove[] =
    "WITH t AS (SELECT role FROM memberships WHERE org_id = $1 AND user_id = $4::uuid), "
    "admins AS (SELECT user_id FROM memberships WHERE org_id = $1 AND role = 'admin' "
    "FOR UPDATE), "
    "d AS (DELETE FROM memberships m WHERE m.org_id = $1 AND m.user_id = $4::uuid "
    "AND (m.role <> 'admin' OR (SELECT count(*) FROM admins) > 1) RETURNING m.user_id, m.role), "
    "a AS (" AUDIT_INSERT "SELECT $1, $2, 'member.remove', 'user', d.user_id::text, $3, "
    "jsonb_build_object('role', d.role) FROM d) "
    "SELECT (SELECT role FROM t), (SELECT count(*) FROM d)";

static const char sql_audit_list[] =
    "SELECT json_build_object('id', l.id, 'at', " TS("l.at") ", 'actor', l.actor, "
    "'action', l.action, 'target_type', l.target_type, 'target_id', l.target_id, "
    "'request_id', l.request_id, 'details', l.details), " EPOCH_US("l.at") ", l.id "
    "FROM audit_logs l WHERE l.org_id = $1 AND ($2::text IS NULL OR l.action = $2) "
    "AND ($3::bigint IS NULL OR l.at >= " FROM_US("$3") ") "
    "AND ($4::bigint IS NULL OR l.at < " FROM_US("$4") ") "
    "AND ($5::bigint IS NULL OR (l.at, l.id) < (" FROM_US("$5") ", $6::uuid)) "
    "ORDER BY l.at DESC, l.id DESC LIMIT $7";

/* clang-format on */

typedef struct admin_op {
    gw_op_t op;
    int64_t limit;
    char token[AUTH_KEY_TOKEN_LEN + 1]; /* a new key's token: answered once, then wiped */
    char prefix[AUTH_KEY_PREFIX_LEN + 1];
    char project_id[37];
    char slug[64];
} admin_op_t;

/* ---- common steps ---------------------------------------------------------------------------- */

static void admin_op_cleanup(gw_op_t *op)
{
    admin_op_t *a = (admin_op_t *)op;

    explicit_bzero(a->token, sizeof(a->token));
}

/* Authenticates an admin into @who. False after answering (401, 403, 429, 503). */
static bool admin_auth(gw_req_t *r, gw_principal_t *who)
{
    return gw_auth_require(r, 0, AUTH_ROLE_ADMIN, who) == 0;
}

/* Starts the operation once the request has been checked (nothing answered yet). NULL after
 * answering 500. */
static admin_op_t *admin_op_new(gw_req_t *r, const gw_principal_t *who)
{
    admin_op_t *a = gw_op_new(r, who, sizeof(*a));

    if (a)
        a->op.cleanup = admin_op_cleanup;
    return a;
}

/* Sends a change: $1 organization, $2 actor and $3 request id, then @n of @params. */
static int admin_write(admin_op_t *a, const char *sql, int n, const char *const *params,
                       db_pool_cb cb)
{
    const char *all[12] = {a->op.who.org_id, a->op.who.subject, a->op.r->request_id};

    for (int i = 0; i < n && i < 9; i++)
        all[3 + i] = params[i];
    return gw_op_query(&a->op, sql, 3 + n, all, cb);
}

/* The SQLSTATE of a failed statement, or "". */
static const char *sqlstate(int err, PGresult *res)
{
    const char *s = err == -EINVAL && res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    return s ? s : "";
}

/* Column @col of row @row as a JSON document (NULL: a JSON null). */
static json_t *doc_at(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return json_null();
    return json_loads(PQgetvalue(res, row, col), JSON_DECODE_ANY, NULL);
}

/* ---- pages ----------------------------------------------------------------------------------- */

typedef struct page_args {
    char key[24]; /* the cursor's sort key (epoch microseconds) and id, when has_cursor */
    char id[37];
    char limit[24]; /* limit + 1: one row more tells whether there is a next page */
    bool has_cursor;
} page_args_t;

/* A cursor's sort key: epoch microseconds within a few centuries of 1970 (what the database can
 * turn back into a timestamp). */
static bool cursor_key_sane(const char *s)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    return *s && !*end && errno == 0 && v > -(1LL << 53) && v < (1LL << 53);
}

/* Reads ?limit and ?cursor. 0, or -EINVAL after answering 400. */
static int page_parse(gw_req_t *r, page_args_t *p, int64_t *ret_limit)
{
    json_t *cursor = NULL, *k, *id;
    int rc;

    memset(p, 0, sizeof(*p));
    if ((rc = gw_query_int(r, "limit", PAGE_DEFAULT, 1, PAGE_MAX, ret_limit)) < 0 ||
        (rc = gw_query_cursor(r, 2, &cursor)) < 0)
        return rc;
    snprintf(p->limit, sizeof(p->limit), "%" PRId64, *ret_limit + 1);
    if (!cursor)
        return 0;
    k = json_array_get(cursor, 0);
    id = json_array_get(cursor, 1);
    if (!json_is_string(k) || !json_is_string(id) || !gw_is_uuid(json_string_value(id)) ||
        json_string_length(k) >= sizeof(p->key) || !cursor_key_sane(json_string_value(k))) {
        json_decref(cursor);
        gw_reply_problemf(r, 400, "invalid-cursor",
                          "cursor is not one this endpoint handed out; start again without it");
        return -EINVAL;
    }
    snprintf(p->key, sizeof(p->key), "%s", json_string_value(k));
    snprintf(p->id, sizeof(p->id), "%s", json_string_value(id));
    p->has_cursor = true;
    json_decref(cursor);
    return 0;
}

/* Answers 200 {"items": [...], "next_cursor": ...} from rows of (document, sort key, id): at most
 * @limit items; a further row means there is a next page, starting after the last item. A single
 * row with a NULL document stands for none. */
static void page_reply(admin_op_t *a, PGresult *res)
{
    int n = PQntuples(res) == 1 && PQgetisnull(res, 0, 0) ? 0 : PQntuples(res);
    int shown = n > a->limit ? (int)a->limit : n;
    json_t *items = json_array(), *next = json_null();

    for (int i = 0; i < shown; i++)
        json_array_append_new(items, doc_at(res, i, 0));
    if (n > shown) {
        json_t *key =
            json_pack("[s, s]", PQgetvalue(res, shown - 1, 1), PQgetvalue(res, shown - 1, 2));
        char *cursor = key ? gw_cursor_encode(key) : NULL;

        json_decref(key);
        if (cursor) {
            json_decref(next);
            next = json_string(cursor);
            free(cursor);
        }
    }
    gw_op_reply_json(&a->op, 200, json_pack("{s:o, s:o}", "items", items, "next_cursor", next));
}

static void page_done(int err, PGresult *res, void *opaque)
{
    admin_op_t *a = opaque;

    if (gw_op_gone(&a->op))
        ;
    else if (err < 0)
        gw_op_db_failed(&a->op, err, res);
    else
        page_reply(a, res);
    PQclear(res);
}

/* ---- projects -------------------------------------------------------------------------------- */

static void project_created(int err, PGresult *res, void *opaque)
{
    admin_op_t *a = opaque;

    if (gw_op_gone(&a->op))
        ;
    else if (strcmp(sqlstate(err, res), "23505") == 0)
        gw_op_fail(&a->op, 409, "conflict", "the organization has a project \"%s\" already",
                   a->slug);
    else if (err < 0)
        gw_op_db_failed(&a->op, err, res);
    else
        gw_op_reply_json(&a->op, 201, doc_at(res, 0, 0));
    PQclear(res);
}

void gw_projects_create(gw_req_t *r)
{
    json_t *body, *errors;
    const char *slug, *name, *why;
    gw_principal_t who;
    admin_op_t *a;

    if (!admin_auth(r, &who) || !(body = gw_body_object(r)))
        return;
    errors = json_array();
    slug = gw_field_str(body, "slug", true, errors);
    name = gw_field_str(body, "name", false, errors);
    if (slug && (why = gw_people_slug_check(slug)))
        gw_field_error(errors, "slug", why);
    if (name && (why = gw_people_name_check(name)))
        gw_field_error(errors, "name", why);
    if (!gw_fields_rejected(r, errors) && (a = admin_op_new(r, &who))) {
        const char *params[] = {slug, name ? name : slug};

        snprintf(a->slug, sizeof(a->slug), "%s", slug);
        admin_write(a, sql_project_create, 2, params, project_created);
    }
    json_decref(body);
}

void gw_projects_list(gw_req_t *r)
{
    gw_principal_t who;
    page_args_t p;
    int64_t limit;
    admin_op_t *a;

    if (!admin_auth(r, &who) || page_parse(r, &p, &limit) < 0 || !(a = admin_op_new(r, &who)))
        return;
    a->limit = limit;
    const char *params[] = {who.org_id, p.has_cursor ? p.key : NULL, p.has_cursor ? p.id : NULL,
                            p.limit};
    gw_op_query(&a->op, sql_project_list, 4, params, page_done);
}

/* ---- API keys -------------------------------------------------------------------------------- */

#define RATE_LIMIT_MAX 1000000

static void key_created(int err, PGresult *res, void *opaque)
{
    admin_op_t *a = opaque;
    json_t *doc;

    if (gw_op_gone(&a->op)) {
        ;
    } else if (err < 0) {
        gw_op_db_failed(&a->op, err, res);
    } else if (PQntuples(res) != 1) {
        gw_op_fail(&a->op, 404, "not-found", "your organization has no project %s", a->project_id);
    } else if (!(doc = doc_at(res, 0, 0)) ||
               json_object_set_new(doc, "token", json_string(a->token)) < 0) {
        json_decref(doc);
        gw_op_fail(&a->op, 500, "internal-error", "out of memory");
    } else {
        gw_req_enter(a->op.r);
        log_info("API key %s created for project_id=%s by %s", a->prefix, a->project_id,
                 a->op.who.subject);
        /* The token is in this answer only: no cache may keep it. */
        gw_req_header(a->op.r, "Cache-Control", "no-store");
        gw_op_reply_json(&a->op, 201, doc);
    }
    PQclear(res);
}

/* Checks "scopes" (a non-empty array of distinct known scopes) into a text[] literal. */
static void key_scopes(json_t *body, json_t *errors, char *out, size_t size)
{
    static const char *const known[] = {"ingest", "orders", "read"};
    json_t *scopes = json_object_get(body, "scopes"), *v;
    bool seen[3] = {false};
    size_t i, n = 0;

    out[0] = '\0';
    if (!scopes) {
        gw_field_error(errors, "scopes", "is required");
        return;
    }
    if (!json_is_array(scopes) || json_array_size(scopes) == 0) {
        gw_field_error(errors, "scopes", "must be a non-empty array of ingest, orders, read");
        return;
    }
    json_array_foreach(scopes, i, v)
    {
        size_t k = 0;

        while (k < 3 && !(json_is_string(v) && strcmp(json_string_value(v), known[k]) == 0))
            k++;
        if (k == 3) {
            gw_field_error(errors, "scopes", "each scope must be one of ingest, orders, read");
            return;
        }
        if (seen[k]) {
            gw_field_error(errors, "scopes", "lists a scope twice");
            return;
        }
        seen[k] = true;
    }
    n += (size_t)snprintf(out + n, size - n, "{");
    for (i = 0; i < 3; i++)
        if (seen[i])
            n += (size_t)snprintf(out + n, size - n, "%s%s", n > 1 ? "," : "", known[i]);
    snprintf(out + n, size - n, "}");
}

void gw_keys_create(gw_req_t *r)
{
    const gw_config_t *cfg = &r->loop->gw->cfg;
    char scopes[32], expires[24] = "", rate[24] = "", hash[AUTH_KEY_HASH_HEX + 1];
    const char *project_id, *name, *expires_at, *why;
    json_t *body, *errors, *v;
    int64_t expires_us = 0;
    gw_principal_t who;
    admin_op_t *a;

    if (!admin_auth(r, &who) || !(body = gw_body_object(r)))
        return;
    errors = json_array();
    project_id = gw_field_str(body, "project_id", true, errors);
    name = gw_field_str(body, "name", false, errors);
    expires_at = gw_field_str(body, "expires_at", false, errors);
    if (project_id && !gw_is_uuid(project_id))
        gw_field_error(errors, "project_id", "must be a lower-case UUID");
    if (name && *name && (why = gw_people_name_check(name)))
        gw_field_error(errors, "name", why);
    key_scopes(body, errors, scopes, sizeof(scopes));
    if (expires_at && contract_parse_rfc3339(expires_at, &expires_us) < 0)
        gw_field_error(errors, "expires_at",
                       "must be an RFC 3339 timestamp such as 2030-01-31T12:00:00Z");
    else if (expires_at && expires_us <= svc_wall_us())
        gw_field_error(errors, "expires_at", "must be in the future");
    else if (expires_at)
        snprintf(expires, sizeof(expires), "%" PRId64, expires_us);
    /* Bodies are decoded with integers as reals (CONTRACT_JSON_DECODE_FLAGS). */
    v = json_object_get(body, "rate_limit_per_s");
    if (v && !json_is_null(v)) {
        double n = json_is_number(v) ? json_number_value(v) : 0;

        if (n < 1 || n > RATE_LIMIT_MAX || n != (double)(int64_t)n)
            gw_field_error(errors, "rate_limit_per_s", "must be an integer from 1 to 1000000");
        else
            snprintf(rate, sizeof(rate), "%" PRId64, (int64_t)n);
    }
    if (gw_fields_rejected(r, errors) || !(a = admin_op_new(r, &who))) {
        json_decref(body);
        return;
    }
    snprintf(a->project_id, sizeof(a->project_id), "%s", project_id);
    if (auth_key_generate(a->token, a->prefix) < 0 ||
        auth_key_hash(cfg->key_pepper, strlen(cfg->key_pepper),
                      a->token + strlen(AUTH_KEY_SCHEME) + AUTH_KEY_PREFIX_LEN + 1, hash) < 0) {
        gw_op_fail(&a->op, 500, "internal-error", "the key could not be generated");
    } else {
        const char *params[] = {project_id,           a->prefix, hash,
                                name ? name : "",     scopes,    expires[0] ? expires : NULL,
                                rate[0] ? rate : NULL};

        admin_write(a, sql_key_create, 7, params, key_created);
    }
    json_decref(body);
}

static void keys_listed(int err, PGresult *res, void *opaque)
{
    admin_op_t *a = opaque;

    if (gw_op_gone(&a->op))
        ;
    else if (err < 0)
        gw_op_db_failed(&a->op, err, res);
    else if (PQntuples(res) > 0 && strcmp(PQgetvalue(res, 0, 3), "f") == 0)
        gw_op_fail(&a->op, 404, "not-found", "your organization has no project %s", a->project_id);
    else
        page_reply(a, res);
    PQclear(res);
}

void gw_keys_list(gw_req_t *r)
{
    const char *project_id;
    gw_principal_t who;
    page_args_t p;
    int64_t limit;
    admin_op_t *a;

    if (!admin_auth(r, &who) || gw_query_uuid(r, "project_id", &project_id) < 0 ||
        page_parse(r, &p, &limit) < 0 || !(a = admin_op_new(r, &who)))
        return;
    a->limit = limit;
    snprintf(a->project_id, sizeof(a->project_id), "%s", project_id ? project_id : "");
    const char *params[] = {who.org_id, project_id, p.has_cursor ? p.key : NULL,
                            p.has_cursor ? p.id : NULL, p.limit};
    gw_op_query(&a->op, sql_key_list, 5, params, keys_listed);
}

static void key_revoked(int err, PGresult *res, void *opaque)
{
    admin_op_t *a = opaque;
    gw_keycache_t *cache = a->op.loop->gw->keys;
    gw_key_t key;

    if (err < 0) {
        gw_op_db_failed(&a->op, err, res);
    } else if (PQntuples(res) != 1) {
        gw_op_fail(&a->op, 404, "not-found", "your organization has no API key %s",
                   a->op.r->params[0]);
    } else {
        /* Effective at once on this gateway; others notice within their cache's TTL. */
        if (gw_keycache_get(cache, PQgetvalue(res, 0, 0), svc_now_ms(), &key)) {
            key.revoked = true;
            gw_keycache_put(cache, PQgetvalue(res, 0, 0), &key, svc_now_ms());
        }
        if (strcmp(PQgetvalue(res, 0, 1), "0") != 0) {
            gw_req_enter(a->op.r);
            log_info("API key %s revoked by %s", PQgetvalue(res, 0, 0), a->op.who.subject);
        }
        gw_op_reply_empty(&a->op, 204);
    }
    PQclear(res);
}

void gw_keys_revoke(gw_req_t *r)
{
    gw_principal_t who;
    admin_op_t *a;

    if (!admin_auth(r, &who))
        return;
    if (!gw_is_uuid(r->params[0])) {
        gw_reply_problemf(r, 404, "not-found", "no API key %s (key ids are lower-case UUIDs)",
                          r->params[0]);
        return;
    }
    if ((a = admin_op_new(r, &who))) {
        const char *params[] = {r->params[0]};

        admin_write(a, sql_key_revoke, 1, params, key_revoked);
    }
}

/* ---- members --------------------------------------------------------------------------------- */

void gw_members_list(gw_req_t *r)
{
    gw_principal_t who;
    page_args_t p;
    int64_t limit;
    admin_op_t *a;

    if (!admin_auth(r, &who) || page_parse(r, &p, &limit) < 0 || !(a = admin_op_new(r, &who)))
        return;
    a->limit = limit;
    const char *params[] = {who.org_id, p.has_cursor ? p.key : NULL, p.has_cursor ? p.id : NULL,
                            p.limit};
    gw_op_query(&a->op, sql_member_list, 4, params, page_done);
}

static void member_added(int err, PGresult *res, void *opaque)
{
    admin_op_t *a = opaque;

    if (gw_op_gone(&a->op))
        ;
    else if (strcmp(sqlstate(err, res), "23505") == 0)
        gw_op_fail(&a->op, 409, "conflict",
                   "this person is a member already; remove them first to change their role");
    else if (err < 0)
        gw_op_db_failed(&a->op, err, res);
    else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        gw_op_fail(&a->op, 404, "not-found",
                   "nobody has registered with this email; they sign up first "
                   "(POST /auth/register), then an admin adds them");
    else
        gw_op_reply_json(&a->op, 201, doc_at(res, 0, 1));
    PQclear(res);
}

void gw_members_add(gw_req_t *r)
{
    const char *email, *role, *why;
    json_t *body, *errors;
    gw_principal_t who;
    admin_op_t *a;

    if (!admin_auth(r, &who) || !(body = gw_body_object(r)))
        return;
    errors = json_array();
    email = gw_field_str(body, "email", true, errors);
    role = gw_field_str(body, "role", true, errors);
    if (email && (why = gw_people_email_check(email)))
        gw_field_error(errors, "email", why);
    if (role && !gw_role_parse(role))
        gw_field_error(errors, "role", "must be admin, operator or viewer");
    if (!gw_fields_rejected(r, errors) && (a = admin_op_new(r, &who))) {
        const char *params[] = {email, role};

        admin_write(a, sql_member_add, 2, params, member_added);
    }
    json_decref(body);
}

static void member_removed(int err, PGresult *res, void *opaque)
{
    admin_op_t *a = opaque;

    if (err < 0)
        gw_op_db_failed(&a->op, err, res);
    else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        gw_op_fail(&a->op, 404, "not-found", "user %s is not a member of your organization",
                   a->op.r->params[0]);
    else if (strcmp(PQgetvalue(res, 0, 1), "0") == 0)
        gw_op_fail(&a->op, 409, "conflict",
                   "this is the organization's last admin: make someone else admin first");
    else
        gw_op_reply_empty(&a->op, 204);
    PQclear(res);
}

void gw_members_remove(gw_req_t *r)
{
    gw_principal_t who;
    admin_op_t *a;

    if (!admin_auth(r, &who))
        return;
    if (!gw_is_uuid(r->params[0])) {
        gw_reply_problemf(r, 404, "not-found", "no member %s (user ids are lower-case UUIDs)",
                          r->params[0]);
        return;
    }
    if ((a = admin_op_new(r, &who))) {
        const char *params[] = {r->params[0]};

        admin_write(a, sql_member_remove, 1, params, member_removed);
    }
}

/* ---- the audit log --------------------------------------------------------------------------- */

/* Reads ?@name as an RFC 3339 time into @out (epoch microseconds as text; "" when absent).
 * 0 or -EINVAL after answering. */
static int audit_time(gw_req_t *r, const char *name, char out[24])
{
    int64_t us;
    int rc = gw_query_time(r, name, INT64_MIN, &us);

    out[0] = '\0';
    if (rc == 0 && us != INT64_MIN)
        snprintf(out, 24, "%" PRId64, us);
    return rc;
}

/* An action as written by this file: "<type>.<verb>", lower case. */
static bool audit_action_sane(const char *s)
{
    size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyz_");

    return n > 0 && n <= 32 && s[n] == '.' && s[n + 1] &&
           strspn(s + n + 1, "abcdefghijklmnopqrstuvwxyz_") == strlen(s + n + 1) &&
           strlen(s + n + 1) <= 32;
}

void gw_audit_list(gw_req_t *r)
{
    char from[24], to[24];
    const char *action;
    gw_principal_t who;
    page_args_t p;
    int64_t limit;
    admin_op_t *a;

    if (!admin_auth(r, &who))
        return;
    action = gw_req_query(r, "action");
    if (action && !audit_action_sane(action)) {
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "action must look like api_key.create (a target type, a dot, a verb)");
        return;
    }
    if (audit_time(r, "from", from) < 0 || audit_time(r, "to", to) < 0 ||
        page_parse(r, &p, &limit) < 0 || !(a = admin_op_new(r, &who)))
        return;
    a->limit = limit;
    const char *params[] = {who.org_id,
                            action,
                            from[0] ? from : NULL,
                            to[0] ? to : NULL,
                            p.has_cursor ? p.key : NULL,
                            p.has_cursor ? p.id : NULL,
                            p.limit};
    gw_op_query(&a->op, sql_audit_list, 7, params, page_done);
}
