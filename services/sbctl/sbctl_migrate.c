/* sbctl migrate: applies sql/NNNN_*.sql in order, each once, each in its own transaction. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "sb-config.h"
#include "sbctl.h"

/* Any constant works, as long as every sbctl uses the same one: concurrent runs (two operators,
 * or a stack start racing a manual run) queue on it instead of applying a file twice. */
#define SBCTL_MIGRATE_LOCK "7262637472316d67" /* "sbctlmig" */

typedef struct sbctl_migration {
    char version[5]; /* "0001" */
    char *file;      /* "0001_foundation.sql" */
    char *sql;
    char sha256[65];
} sbctl_migration_t;

static int migrate_usage(FILE *f)
{
    fprintf(f, "Usage: sbctl migrate\n"
               "\n"
               "Applies every SB_SQL_DIR/NNNN_*.sql not yet recorded in schema_migrations, in\n"
               "order, each in its own transaction (so a file must not contain BEGIN/COMMIT or\n"
               "statements that cannot run in a transaction). Records each file's SHA-256 and\n"
               "refuses to run when an applied file has changed since: add a new file instead.\n"
               "Concurrent runs wait for each other (advisory lock). Prints what it applied.\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

static int migration_filter(const struct dirent *de)
{
    const char *n = de->d_name;
    size_t len = strlen(n);
    for (int i = 0; i < 4; i++)
        if (n[i] < '0' || n[i] > '9')
            return 0;
    return n[4] == '_' && len > 9 && !strcmp(n + len - 4, ".sql");
}

static int migration_load(const char *dir, const char *file, sbctl_migration_t *m)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        sbctl_err("cannot read %s: %s", path, strerror(e));
        return -e;
    }
    int r = 0;
    size_t cap = 0, len = 0;
    char *buf = NULL;
    for (;;) {
        if (cap - len < 4096) {
            char *nb = realloc(buf, cap = cap ? 2 * cap : 65536);
            if (!nb) {
                r = -ENOMEM;
                goto fail;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        sbctl_err("cannot read %s", path);
        r = -EIO;
        goto fail;
    }
    buf[len] = '\0';

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!EVP_Digest(buf, len, md, &mdlen, EVP_sha256(), NULL)) {
        r = -EIO;
        goto fail;
    }
    for (unsigned i = 0; i < mdlen && i < 32; i++)
        snprintf(m->sha256 + 2 * i, 3, "%02x", md[i]);
    memcpy(m->version, file, 4);
    m->version[4] = '\0';
    m->file = strdup(file);
    m->sql = buf;
    fclose(f);
    return m->file ? 0 : -ENOMEM;

fail:
    free(buf);
    fclose(f);
    return r;
}

static void migrations_free(sbctl_migration_t *ms, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(ms[i].file);
        free(ms[i].sql);
    }
    free(ms);
}

/* Loads the directory's migrations in version order; two files of one version are an error. */
static int migrations_scan(const char *dir, sbctl_migration_t **ret, size_t *ret_n)
{
    struct dirent **des = NULL;
    int n = scandir(dir, &des, migration_filter, alphasort);
    if (n < 0) {
        int e = errno;
        sbctl_err("cannot list migrations in %s: %s (set SB_SQL_DIR)", dir, strerror(e));
        return -e;
    }
    int r = 0;
    sbctl_migration_t *ms = calloc((size_t)n + 1, sizeof(*ms));
    if (!ms)
        r = -ENOMEM;
    for (int i = 0; r == 0 && i < n; i++) {
        r = migration_load(dir, des[i]->d_name, &ms[i]);
        if (r == 0 && i > 0 && !strcmp(ms[i].version, ms[i - 1].version)) {
            sbctl_err("%s and %s have the same version", ms[i - 1].file, ms[i].file);
            r = -EINVAL;
        }
    }
    for (int i = 0; i < n; i++)
        free(des[i]);
    free(des);
    if (r < 0) {
        migrations_free(ms, (size_t)n);
        return r;
    }
    *ret = ms;
    *ret_n = (size_t)n;
    return 0;
}

static int migration_apply(db_t *db, const sbctl_migration_t *m)
{
    const char *params[] = {m->version, m->sha256};
    if (db_exec_simple(db, "BEGIN") < 0 || db_exec_simple(db, m->sql) < 0 ||
        db_exec(db, NULL, "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", 2,
                params, NULL) < 0 ||
        db_exec_simple(db, "COMMIT") < 0) {
        sbctl_err("%s failed, nothing of it was applied: %s", m->file, db_errmsg(db));
        if (db_connected(db))
            (void)db_exec_simple(db, "ROLLBACK");
        return -EINVAL;
    }
    return 0;
}

int sbctl_migrate_run(int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {0}};
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1)
        return migrate_usage(c == 'h' ? stdout : stderr);
    if (optind < argc)
        return migrate_usage(stderr);

    const char *dir = sbctl_setting("SB_SQL_DIR");
    sbctl_migration_t *ms = NULL;
    size_t nms = 0, applied = 0;
    PGresult *res = NULL;
    int status = SBCTL_FAIL;
    if (!dir)
        dir = SB_SQL_DIR;
    if (migrations_scan(dir, &ms, &nms) < 0)
        return SBCTL_FAIL;

    db_t *db = sbctl_db_open();
    if (!db)
        goto out;
    /* The lock comes first: two runs creating schema_migrations at once could collide. */
    if (db_exec_simple(db, "SELECT pg_advisory_lock(x'" SBCTL_MIGRATE_LOCK "'::bigint)") < 0 ||
        db_exec_simple(db, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                           "version text PRIMARY KEY, checksum text NOT NULL, "
                           "applied_at timestamptz NOT NULL DEFAULT now())") < 0 ||
        db_exec(db, NULL, "SELECT version, checksum FROM schema_migrations ORDER BY version", 0,
                NULL, &res) < 0) {
        sbctl_err("cannot read schema_migrations: %s", db_errmsg(db));
        goto out;
    }

    /* Every recorded file must be unchanged before anything new is applied. */
    int nrows = PQntuples(res);
    for (int i = 0; i < nrows; i++) {
        const char *version = PQgetvalue(res, i, 0), *sum = PQgetvalue(res, i, 1);
        const sbctl_migration_t *m = NULL;
        for (size_t j = 0; j < nms && !m; j++)
            if (!strcmp(ms[j].version, version))
                m = &ms[j];
        if (!m) {
            sbctl_err("warning: migration %s is recorded as applied but not in %s", version, dir);
            continue;
        }
        if (strcmp(m->sha256, sum) != 0) {
            sbctl_err("%s/%s changed after it was applied (sha256 %s, recorded %s); applied "
                      "migrations must not be edited: restore it and add a new migration",
                      dir, m->file, m->sha256, sum);
            goto out;
        }
    }

    for (size_t j = 0; j < nms; j++) {
        bool done = false;
        for (int i = 0; i < nrows && !done; i++)
            done = !strcmp(PQgetvalue(res, i, 0), ms[j].version);
        if (done)
            continue;
        if (migration_apply(db, &ms[j]) < 0)
            goto out;
        printf("applied %s (%s)\n", ms[j].version, ms[j].file);
        fflush(stdout);
        applied++;
    }
    if (applied == 0)
        printf("up to date: %zu migration(s) applied, none pending\n", nms);
    status = SBCTL_OK;

out:
    PQclear(res);
    db_free(db); /* closing the session releases the advisory lock */
    migrations_free(ms, nms);
    return status;
}
