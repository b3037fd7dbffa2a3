/* sbctl orgs / projects / keys: tenants and their machine API keys. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth_key.h"
#include "sbctl.h"

static int orgs_usage(FILE *f)
{
    fprintf(f, "Usage: sbctl orgs create <slug> [--name NAME]\n"
               "\n"
               "Creates an organization and prints its id. The slug is 1-63 characters\n"
               "[a-z0-9-], not starting with '-'; NAME defaults to the slug. Idempotent: for an\n"
               "existing slug it prints the existing id.\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

static int projects_usage(FILE *f)
{
    fprintf(f, "Usage: sbctl projects create <org-slug> <slug> [--name NAME]\n"
               "\n"
               "Creates a project in an organization and prints its id. Slug rules as for\n"
               "orgs; NAME defaults to the slug. Idempotent: for an existing project it prints\n"
               "the existing id.\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

static int keys_usage(FILE *f)
{
    fprintf(f,
            "Usage: sbctl keys create --org SLUG --project SLUG [--name NAME]\n"
            "                         [--scopes ingest,read,orders] [--expires-in-days D]\n"
            "                         [--rate-limit N]\n"
            "       sbctl keys revoke <prefix>\n"
            "       sbctl keys list [--org SLUG]\n"
            "\n"
            "create  makes a key for one project. Prints only the token (lok_<prefix>.<secret>)\n"
            "        on stdout, so that scripts can capture it; it is shown this once and never\n"
            "        stored (the database keeps HMAC-SHA256(pepper, secret)). Scopes default to\n"
            "        ingest. --rate-limit gives the key its own limit of N requests per second\n"
            "        (burst 2N) instead of the gateway's key_rate_per_s. Needs SB_KEY_PEPPER or\n"
            "        SB_KEY_PEPPER_FILE, the gateway's pepper.\n"
            "revoke  revokes the key with that prefix (also accepts lok_<prefix>); revoking a\n"
            "        revoked key is not an error.\n"
            "list    prefix, project, scopes, name and dates of every key; never secrets.\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

/* A subcommand's options (sbctl_opts_parse(): argv[0] is the subcommand word). */
typedef struct sbctl_opts {
    const char *org, *project, *name, *scopes, *expires, *rate;
    const char *pos[3];
    int npos;
    bool help;
} sbctl_opts_t;

static int parse_opts(int argc, char **argv, sbctl_opts_t *o, const char *allowed)
{
    const sbctl_opt_t opts[] = {{'o', "org", &o->org},
                                {'p', "project", &o->project},
                                {'n', "name", &o->name},
                                {'s', "scopes", &o->scopes},
                                {'e', "expires-in-days", &o->expires},
                                {'r', "rate-limit", &o->rate}};

    return sbctl_opts_parse(argc, argv, opts, sizeof(opts) / sizeof(opts[0]), allowed, o->pos, 3,
                            &o->npos, &o->help);
}

static bool check_slug(const char *what, const char *s)
{
    if (sbctl_slug_valid(s))
        return true;
    sbctl_err("invalid %s slug '%s': use 1-63 characters a-z, 0-9 and '-', not starting with '-'",
              what, s);
    return false;
}

/* INSERT ... ON CONFLICT DO NOTHING RETURNING id, else the existing row's id: printed. */
static int create_or_get(db_t *db, const char *insert, const char *select, int nparams,
                         const char *const *params, const char *what)
{
    PGresult *res = NULL;
    if (db_exec(db, NULL, insert, nparams, params, &res) < 0)
        goto fail;
    bool created = PQntuples(res) == 1;
    if (!created) {
        PQclear(res);
        res = NULL;
        if (db_exec(db, NULL, select, nparams - 1, params, &res) < 0)
            goto fail;
        if (PQntuples(res) != 1) {
            sbctl_err("cannot create %s: it exists and does not at the same time (retry)", what);
            PQclear(res);
            return SBCTL_FAIL;
        }
    }
    printf("%s\n", PQgetvalue(res, 0, 0));
    fprintf(stderr, "%s %s\n", created ? "created" : "exists:", what);
    PQclear(res);
    return SBCTL_OK;

fail:
    sbctl_err("cannot create %s: %s", what, db_errmsg(db));
    return SBCTL_FAIL;
}

int sbctl_orgs_run(int argc, char **argv)
{
    sbctl_opts_t o = {0};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return orgs_usage(argc < 2 ? stderr : stdout);
    if (strcmp(argv[1], "create") != 0) {
        sbctl_err("unknown orgs command '%s'", argv[1]);
        return orgs_usage(stderr);
    }
    if (parse_opts(argc - 1, argv + 1, &o, "n") < 0)
        return orgs_usage(stderr);
    if (o.help)
        return orgs_usage(stdout);
    if (o.npos != 1)
        return orgs_usage(stderr);
    if (!check_slug("organization", o.pos[0]))
        return SBCTL_USAGE;

    db_t *db = sbctl_db_open();
    if (!db)
        return SBCTL_FAIL;
    char what[128];
    snprintf(what, sizeof(what), "organization %s", o.pos[0]);
    const char *params[] = {o.pos[0], o.name ? o.name : o.pos[0]};
    int status = create_or_get(
        db,
        "INSERT INTO organizations (slug, name) VALUES ($1, $2) ON CONFLICT (slug) DO NOTHING "
        "RETURNING id",
        "SELECT id FROM organizations WHERE slug = $1", 2, params, what);
    db_free(db);
    return status;
}

int sbctl_projects_run(int argc, char **argv)
{
    sbctl_opts_t o = {0};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return projects_usage(argc < 2 ? stderr : stdout);
    if (strcmp(argv[1], "create") != 0) {
        sbctl_err("unknown projects command '%s'", argv[1]);
        return projects_usage(stderr);
    }
    if (parse_opts(argc - 1, argv + 1, &o, "n") < 0)
        return projects_usage(stderr);
    if (o.help)
        return projects_usage(stdout);
    if (o.npos != 2)
        return projects_usage(stderr);
    if (!check_slug("organization", o.pos[0]) || !check_slug("project", o.pos[1]))
        return SBCTL_USAGE;

    db_t *db = sbctl_db_open();
    if (!db)
        return SBCTL_FAIL;
    PGresult *res = NULL;
    int status = SBCTL_FAIL;
    const char *org_params[] = {o.pos[0]};
    if (db_exec(db, NULL, "SELECT id FROM organizations WHERE slug = $1", 1, org_params, &res) <
        0) {
        sbctl_err("cannot look up organization %s: %s", o.pos[0], db_errmsg(db));
        goto out;
    }
    if (PQntuples(res) != 1) {
        sbctl_err("no organization '%s' (create it with: sbctl orgs create %s)", o.pos[0],
                  o.pos[0]);
        goto out;
    }
    char what[192];
    snprintf(what, sizeof(what), "project %s/%s", o.pos[0], o.pos[1]);
    const char *params[] = {PQgetvalue(res, 0, 0), o.pos[1], o.name ? o.name : o.pos[1]};
    status =
        create_or_get(db,
                      "INSERT INTO projects (org_id, slug, name) VALUES ($1, $2, $3) "
                      "ON CONFLICT (org_id, slug) DO NOTHING RETURNING id",
                      "SELECT id FROM projects WHERE org_id = $1 AND slug = $2", 3, params, what);
out:
    PQclear(res);
    db_free(db);
    return status;
}

/* The pepper as the gateway reads it: SB_KEY_PEPPER's bytes, or SB_KEY_PEPPER_FILE's content
 * without its trailing newline. Returns a malloc'd buffer or NULL after printing why. */
static char *load_pepper(size_t *ret_len)
{
    char *buf = sbctl_secret("SB_KEY_PEPPER", true, ret_len);

    if (buf && *ret_len == 0) {
        sbctl_err("the API key pepper is empty");
        free(buf);
        return NULL;
    }
    return buf;
}

/* "ingest,read" -> "{ingest,read}" (a text[] literal), checking each scope. */
static int parse_scopes(const char *list, char *out, size_t size)
{
    static const char *const known[] = {"ingest", "read", "orders"};
    bool want[3] = {false};
    char *copy = strdup(list), *save = NULL;
    if (!copy)
        return -ENOMEM;
    for (char *s = strtok_r(copy, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < 3 && strcmp(s, known[i]) != 0)
            i++;
        if (i == 3) {
            sbctl_err("unknown scope '%s' (scopes: ingest, read, orders)", s);
            free(copy);
            return -EINVAL;
        }
        want[i] = true;
    }
    free(copy);
    size_t n = 0;
    n += (size_t)snprintf(out + n, size - n, "{");
    for (size_t i = 0; i < 3; i++)
        if (want[i])
            n += (size_t)snprintf(out + n, size - n, "%s%s", n > 1 ? "," : "", known[i]);
    snprintf(out + n, size - n, "}");
    if (n == 1) {
        sbctl_err("--scopes needs at least one scope");
        return -EINVAL;
    }
    return 0;
}

static int keys_create(const sbctl_opts_t *o)
{
    char scopes[64], token[AUTH_KEY_TOKEN_LEN + 1], prefix[AUTH_KEY_PREFIX_LEN + 1];
    char hash[AUTH_KEY_HASH_HEX + 1];
    long days = 0, rate = 0;
    size_t pepper_len = 0;
    char *pepper = NULL;
    PGresult *res = NULL;
    db_t *db = NULL;
    int status = SBCTL_FAIL;

    if (!o->org || !o->project || o->npos != 0) {
        sbctl_err("keys create needs --org and --project");
        return keys_usage(stderr);
    }
    if (parse_scopes(o->scopes ? o->scopes : "ingest", scopes, sizeof(scopes)) < 0)
        return SBCTL_USAGE;
    if (o->expires && sbctl_parse_int(o->expires, 1, 36500, &days) < 0) {
        sbctl_err("--expires-in-days must be a number of days, 1-36500");
        return SBCTL_USAGE;
    }
    if (o->rate && sbctl_parse_int(o->rate, 1, 1000000, &rate) < 0) {
        sbctl_err("--rate-limit must be a number of requests per second, 1-1000000");
        return SBCTL_USAGE;
    }
    if (!(pepper = load_pepper(&pepper_len)))
        return SBCTL_FAIL;
    if (!(db = sbctl_db_open()))
        goto out;

    const char *lookup[] = {o->org, o->project};
    if (db_exec(db, NULL,
                "SELECT p.id, o.id FROM projects p JOIN organizations o ON o.id = p.org_id "
                "WHERE o.slug = $1 AND p.slug = $2",
                2, lookup, &res) < 0) {
        sbctl_err("cannot look up the project: %s", db_errmsg(db));
        goto out;
    }
    if (PQntuples(res) != 1) {
        sbctl_err("no project %s/%s (sbctl projects create %s %s)", o->org, o->project, o->org,
                  o->project);
        goto out;
    }
    if (auth_key_generate(token, prefix) < 0 ||
        auth_key_hash(pepper, pepper_len, token + strlen(AUTH_KEY_SCHEME) + AUTH_KEY_PREFIX_LEN + 1,
                      hash) < 0) {
        sbctl_err("cannot generate a key (no randomness or crypto failure)");
        goto out;
    }

    char days_text[16], rate_text[16];
    snprintf(days_text, sizeof(days_text), "%ld", days);
    snprintf(rate_text, sizeof(rate_text), "%ld", rate);
    const char *params[] = {PQgetvalue(res, 0, 1),
                            PQgetvalue(res, 0, 0),
                            prefix,
                            hash,
                            o->name ? o->name : "",
                            scopes,
                            o->expires ? days_text : NULL,
                            o->rate ? rate_text : NULL};
    PGresult *ins = NULL;
    if (db_exec(
            db, NULL,
            "INSERT INTO api_keys (org_id, project_id, prefix, secret_hash, name, scopes, "
            "expires_at, rate_limit_per_s) VALUES ($1, $2, $3, $4, $5, $6::text[], "
            "now() + make_interval(days => $7::int), $8::int) "
            "RETURNING to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            8, params, &ins) < 0) {
        sbctl_err("cannot store the key: %s", db_errmsg(db));
        goto out;
    }
    printf("%s\n", token);
    fflush(stdout);
    fprintf(stderr, "created key %s for %s/%s, scopes %.*s, expires %s\n", prefix, o->org,
            o->project, (int)strlen(scopes) - 2, scopes + 1,
            PQgetisnull(ins, 0, 0) ? "never" : PQgetvalue(ins, 0, 0));
    PQclear(ins);
    status = SBCTL_OK;

out:
    explicit_bzero(token, sizeof(token));
    if (pepper) {
        explicit_bzero(pepper, pepper_len);
        free(pepper);
    }
    PQclear(res);
    db_free(db);
    return status;
}

static int keys_revoke(const sbctl_opts_t *o)
{
    if (o->npos != 1)
        return keys_usage(stderr);
    /* Accept lok_<prefix> and even a whole token, using only its prefix. */
    char prefix[64];
    const char *p = o->pos[0];
    if (!strncmp(p, AUTH_KEY_SCHEME, strlen(AUTH_KEY_SCHEME)))
        p += strlen(AUTH_KEY_SCHEME);
    snprintf(prefix, sizeof(prefix), "%.*s", (int)strcspn(p, "."), p);
    if (strlen(prefix) != AUTH_KEY_PREFIX_LEN) {
        sbctl_err("'%s' is not a key prefix (12 characters a-z, 2-7)", prefix);
        return SBCTL_USAGE;
    }

    db_t *db = sbctl_db_open();
    if (!db)
        return SBCTL_FAIL;
    int status = SBCTL_FAIL;
    PGresult *res = NULL;
    const char *params[] = {prefix};
    if (db_exec(db, NULL,
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE prefix = $1 "
                "RETURNING to_char(revoked_at AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                1, params, &res) < 0) {
        sbctl_err("cannot revoke %s: %s", prefix, db_errmsg(db));
    } else if (PQntuples(res) == 0) {
        sbctl_err("no key with prefix %s", prefix);
    } else {
        printf("revoked %s (since %s)\n", prefix, PQgetvalue(res, 0, 0));
        status = SBCTL_OK;
    }
    PQclear(res);
    db_free(db);
    return status;
}

static int keys_list(const sbctl_opts_t *o)
{
    if (o->npos != 0)
        return keys_usage(stderr);
    db_t *db = sbctl_db_open();
    if (!db)
        return SBCTL_FAIL;
#define TS(col) \
    "coalesce(to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '-')"
    const char *params[] = {o->org};
    PGresult *res = NULL;
    int status = SBCTL_FAIL;
    if (db_exec(db, NULL,
                "SELECT k.prefix, o.slug || '/' || p.slug, array_to_string(k.scopes, ','), "
                "" TS("k.created_at") ", " TS("k.expires_at") ", " TS(
                    "k.revoked_at") ", k.name "
                                    "FROM api_keys k JOIN projects p ON p.id = k.project_id "
                                    "JOIN organizations o ON o.id = k.org_id "
                                    "WHERE $1::text IS NULL OR o.slug = $1 ORDER BY o.slug, "
                                    "p.slug, k.created_at",
                1, params, &res) < 0) {
        sbctl_err("cannot list keys: %s", db_errmsg(db));
        goto out;
    }
#undef TS
    printf("%-12s  %-32s  %-18s  %-20s  %-20s  %-20s  %s\n", "PREFIX", "PROJECT", "SCOPES",
           "CREATED", "EXPIRES", "REVOKED", "NAME");
    for (int i = 0; i < PQntuples(res); i++)
        printf("%-12s  %-32s  %-18s  %-20s  %-20s  %-20s  %s\n", PQgetvalue(res, i, 0),
               PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), PQgetvalue(res, i, 3),
               PQgetvalue(res, i, 4), PQgetvalue(res, i, 5), PQgetvalue(res, i, 6));
    if (o->org && PQntuples(res) == 0)
        fprintf(stderr, "no keys for organization %s\n", o->org);
    status = SBCTL_OK;
out:
    PQclear(res);
    db_free(db);
    return status;
}

int sbctl_keys_run(int argc, char **argv)
{
    sbctl_opts_t o = {0};
    const char *sub = argc > 1 ? argv[1] : NULL;
    const char *allowed;
    if (!sub || !strcmp(sub, "--help") || !strcmp(sub, "-h"))
        return keys_usage(sub ? stdout : stderr);
    if (!strcmp(sub, "create"))
        allowed = "opnser";
    else if (!strcmp(sub, "revoke"))
        allowed = "";
    else if (!strcmp(sub, "list"))
        allowed = "o";
    else {
        sbctl_err("unknown keys command '%s'", sub);
        return keys_usage(stderr);
    }
    if (parse_opts(argc - 1, argv + 1, &o, allowed) < 0)
        return keys_usage(stderr);
    if (o.help)
        return keys_usage(stdout);
    if (!strcmp(sub, "create"))
        return keys_create(&o);
    if (!strcmp(sub, "revoke"))
        return keys_revoke(&o);
    return keys_list(&o);
}
