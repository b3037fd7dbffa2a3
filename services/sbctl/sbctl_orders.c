/* sbctl customers / order-rules: what sb-order-processor's business rules read (sql/0005). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbctl.h"

#define ORDERS_QUANTITY_MAX 1000000 /* the processor's own ceiling for one order */

static int customers_usage(FILE *f)
{
    fprintf(f,
            "Usage: sbctl customers create --org SLUG <customer-id> [--name NAME] [--route R]\n"
            "       sbctl customers list --org SLUG\n"
            "\n"
            "create  registers a customer of the organization (orders for customers not\n"
            "        registered are rejected) and prints its id. The id is 1-64 characters\n"
            "        without control characters, as orders name it in customer_id. ROUTE is\n"
            "        the customer's fulfilment route (1-64 of [A-Za-z0-9._:-]); without one, its\n"
            "        orders take the order processor's default route. Running it again for an\n"
            "        existing customer updates the name and route given (--route '' clears it).\n"
            "list    id, name, route and creation time of the organization's customers.\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

static int rules_usage(FILE *f)
{
    fprintf(f, "Usage: sbctl order-rules set --org SLUG --sku SKU|'*' --max-quantity N\n"
               "       sbctl order-rules list --org SLUG\n"
               "\n"
               "set   sets the organization's quantity limit for a sku, or for every sku with\n"
               "      '*' (a sku's own limit wins over '*'). An order above its limit waits in\n"
               "      pending_approval until an operator accepts or rejects it. N is 1-1000000.\n"
               "list  the organization's limits.\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

typedef struct orders_opts {
    const char *org, *name, *route, *sku, *max_quantity;
    const char *pos[2];
    int npos;
    bool help;
} orders_opts_t;

/* The options of every orders subcommand; @allowed picks the ones a subcommand takes. */
static int parse_opts(int argc, char **argv, orders_opts_t *o, const char *allowed)
{
    const sbctl_opt_t opts[] = {{'o', "org", &o->org},
                                {'n', "name", &o->name},
                                {'r', "route", &o->route},
                                {'s', "sku", &o->sku},
                                {'m', "max-quantity", &o->max_quantity}};

    return sbctl_opts_parse(argc, argv, opts, sizeof(opts) / sizeof(opts[0]), allowed, o->pos, 2,
                            &o->npos, &o->help);
}

/* 1..@max characters (UTF-8 code points), none of them a control character. */
static bool text_valid(const char *s, size_t max)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return false;
        n += (*p & 0xc0) != 0x80;
    }
    return n >= 1 && n <= max;
}

/* ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$: skus and route names. */
static bool name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || !strchr("._:-", c)))
            return false;
    }
    return true;
}

/* The organization's id into @ret_id (37 bytes), or SBCTL_FAIL after saying why. */
static int org_lookup(db_t *db, const char *slug, char ret_id[37])
{
    const char *params[] = {slug};
    PGresult *res = NULL;
    if (db_exec(db, NULL, "SELECT id FROM organizations WHERE slug = $1", 1, params, &res) < 0) {
        sbctl_err("cannot look up organization %s: %s", slug, db_errmsg(db));
        return SBCTL_FAIL;
    }
    if (PQntuples(res) != 1) {
        sbctl_err("no organization '%s' (create it with: sbctl orgs create %s)", slug, slug);
        PQclear(res);
        return SBCTL_FAIL;
    }
    snprintf(ret_id, 37, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return SBCTL_OK;
}

/* Checks --org, opens the database and finds the organization. NULL after saying why. */
static db_t *open_org(const orders_opts_t *o, char org_id[37], int *ret_status)
{
    *ret_status = SBCTL_USAGE;
    if (!o->org) {
        sbctl_err("--org is required");
        return NULL;
    }
    if (!sbctl_slug_valid(o->org)) {
        sbctl_err("invalid organization slug '%s'", o->org);
        return NULL;
    }
    *ret_status = SBCTL_FAIL;
    db_t *db = sbctl_db_open();
    if (db && org_lookup(db, o->org, org_id) != SBCTL_OK) {
        db_free(db);
        return NULL;
    }
    return db;
}

static int customers_create(const orders_opts_t *o)
{
    char org_id[37];
    int status;

    if (o->npos != 1)
        return customers_usage(stderr);
    if (!text_valid(o->pos[0], 64)) {
        sbctl_err("invalid customer id: use 1-64 characters without control characters");
        return SBCTL_USAGE;
    }
    if (o->name && *o->name && !text_valid(o->name, 200)) {
        sbctl_err("--name must be at most 200 characters without control characters");
        return SBCTL_USAGE;
    }
    if (o->route && *o->route && !name_valid(o->route)) {
        sbctl_err("invalid route '%s': use 1-64 characters [A-Za-z0-9._:-], starting with a "
                  "letter or digit",
                  o->route);
        return SBCTL_USAGE;
    }
    db_t *db = open_org(o, org_id, &status);
    if (!db)
        return status;

    PGresult *res = NULL;
    const char *params[] = {org_id, o->pos[0], o->name, o->route && *o->route ? o->route : NULL,
                            o->route ? "t" : "f"};
    if (db_exec(db, NULL,
                "INSERT INTO customers (org_id, id, name, route) VALUES ($1, $2, "
                "coalesce($3, ''), $4) ON CONFLICT (org_id, id) DO UPDATE SET "
                "name = coalesce($3, customers.name), route = CASE WHEN $5::boolean THEN $4 "
                "ELSE customers.route END, updated_at = now() "
                "RETURNING xmax = 0, coalesce(route, '(default)')",
                5, params, &res) < 0) {
        sbctl_err("cannot store customer %s: %s", o->pos[0], db_errmsg(db));
        status = SBCTL_FAIL;
    } else {
        printf("%s\n", o->pos[0]);
        fprintf(stderr, "%s customer %s of %s, route %s\n",
                !strcmp(PQgetvalue(res, 0, 0), "t") ? "created" : "updated", o->pos[0], o->org,
                PQgetvalue(res, 0, 1));
        status = SBCTL_OK;
    }
    PQclear(res);
    db_free(db);
    return status;
}

static int customers_list(const orders_opts_t *o)
{
    char org_id[37];
    int status;

    if (o->npos != 0)
        return customers_usage(stderr);
    db_t *db = open_org(o, org_id, &status);
    if (!db)
        return status;
    PGresult *res = NULL;
    const char *params[] = {org_id};
    if (db_exec(db, NULL,
                "SELECT id, name, coalesce(route, '-'), to_char(created_at AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM customers WHERE org_id = $1 ORDER BY id",
                1, params, &res) < 0) {
        sbctl_err("cannot list customers: %s", db_errmsg(db));
        status = SBCTL_FAIL;
    } else {
        printf("%-24s  %-24s  %-20s  %s\n", "ID", "NAME", "ROUTE", "CREATED");
        for (int i = 0; i < PQntuples(res); i++)
            printf("%-24s  %-24s  %-20s  %s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                   PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
        if (PQntuples(res) == 0)
            fprintf(stderr, "no customers in organization %s\n", o->org);
        status = SBCTL_OK;
    }
    PQclear(res);
    db_free(db);
    return status;
}

int sbctl_customers_run(int argc, char **argv)
{
    orders_opts_t o = {0};
    const char *sub = argc > 1 ? argv[1] : NULL;
    const char *allowed;

    if (!sub || !strcmp(sub, "--help") || !strcmp(sub, "-h"))
        return customers_usage(sub ? stdout : stderr);
    if (!strcmp(sub, "create"))
        allowed = "onr";
    else if (!strcmp(sub, "list"))
        allowed = "o";
    else {
        sbctl_err("unknown customers command '%s'", sub);
        return customers_usage(stderr);
    }
    if (parse_opts(argc - 1, argv + 1, &o, allowed) < 0)
        return customers_usage(stderr);
    if (o.help)
        return customers_usage(stdout);
    return !strcmp(sub, "create") ? customers_create(&o) : customers_list(&o);
}

static int rules_set(const orders_opts_t *o)
{
    char org_id[37];
    long max = 0;
    int status;

    if (o->npos != 0 || !o->sku || !o->max_quantity) {
        sbctl_err("order-rules set needs --org, --sku and --max-quantity");
        return rules_usage(stderr);
    }
    if (strcmp(o->sku, "*") != 0 && !name_valid(o->sku)) {
        sbctl_err("invalid sku '%s': use '*' or 1-64 characters [A-Za-z0-9._:-]", o->sku);
        return SBCTL_USAGE;
    }
    if (sbctl_parse_int(o->max_quantity, 1, ORDERS_QUANTITY_MAX, &max) < 0) {
        sbctl_err("--max-quantity must be a number, 1-%d", ORDERS_QUANTITY_MAX);
        return SBCTL_USAGE;
    }
    db_t *db = open_org(o, org_id, &status);
    if (!db)
        return status;
    char max_text[24];
    snprintf(max_text, sizeof(max_text), "%ld", max);
    const char *params[] = {org_id, o->sku, max_text};
    if (db_exec(db, NULL,
                "INSERT INTO order_rules (org_id, sku, max_quantity) VALUES ($1, $2, $3) "
                "ON CONFLICT (org_id, sku) DO UPDATE SET max_quantity = EXCLUDED.max_quantity, "
                "updated_at = now()",
                3, params, NULL) < 0) {
        sbctl_err("cannot store the rule: %s", db_errmsg(db));
        status = SBCTL_FAIL;
    } else {
        printf("%s %s max_quantity %ld\n", o->org, o->sku, max);
        status = SBCTL_OK;
    }
    db_free(db);
    return status;
}

static int rules_list(const orders_opts_t *o)
{
    char org_id[37];
    int status;

    if (o->npos != 0)
        return rules_usage(stderr);
    db_t *db = open_org(o, org_id, &status);
    if (!db)
        return status;
    PGresult *res = NULL;
    const char *params[] = {org_id};
    if (db_exec(db, NULL,
                "SELECT sku, max_quantity, to_char(updated_at AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM order_rules WHERE org_id = $1 "
                "ORDER BY sku = '*', sku",
                1, params, &res) < 0) {
        sbctl_err("cannot list the rules: %s", db_errmsg(db));
        status = SBCTL_FAIL;
    } else {
        printf("%-24s  %-12s  %s\n", "SKU", "MAX_QUANTITY", "UPDATED");
        for (int i = 0; i < PQntuples(res); i++)
            printf("%-24s  %-12s  %s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                   PQgetvalue(res, i, 2));
        if (PQntuples(res) == 0)
            fprintf(stderr, "no order rules in organization %s (no quantity limit)\n", o->org);
        status = SBCTL_OK;
    }
    PQclear(res);
    db_free(db);
    return status;
}

int sbctl_order_rules_run(int argc, char **argv)
{
    orders_opts_t o = {0};
    const char *sub = argc > 1 ? argv[1] : NULL;
    const char *allowed;

    if (!sub || !strcmp(sub, "--help") || !strcmp(sub, "-h"))
        return rules_usage(sub ? stdout : stderr);
    if (!strcmp(sub, "set"))
        allowed = "osm";
    else if (!strcmp(sub, "list"))
        allowed = "o";
    else {
        sbctl_err("unknown order-rules command '%s'", sub);
        return rules_usage(stderr);
    }
    if (parse_opts(argc - 1, argv + 1, &o, allowed) < 0)
        return rules_usage(stderr);
    if (o.help)
        return rules_usage(stdout);
    return !strcmp(sub, "set") ? rules_set(&o) : rules_list(&o);
}
