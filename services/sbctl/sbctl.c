/* sbctl: the operator's tool (migrations, Kafka topics, tenants, API keys).
 *
 * Like git's builtins, each command is a thin function over the libraries; this file only
 * dispatches and holds what they share. Settings come from the environment (see usage()).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb-config.h"
#include "sbctl.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} sbctl_cmds[] = {
    {"migrate", sbctl_migrate_run},
    {"topics", sbctl_topics_run},
    {"orgs", sbctl_orgs_run},
    {"projects", sbctl_projects_run},
    {"keys", sbctl_keys_run},
    {"customers", sbctl_customers_run},
    {"order-rules", sbctl_order_rules_run},
    {"archive", sbctl_archive_run},
    {"aggregates", sbctl_aggregates_run},
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "Usage: sbctl <command> [options]      (sbctl <command> --help for details)\n"
        "\n"
        "The sensorbus operator's tool.\n"
        "\n"
        "Commands:\n"
        "  migrate                                  apply the SQL migrations not yet applied\n"
        "  topics create [--partitions N] [--replication R]\n"
        "                                           create the Kafka topics (idempotent)\n"
        "  topics list                              topics, partitions, high watermarks\n"
        "  orgs create <slug> [--name NAME]         create an organization, print its id\n"
        "  projects create <org-slug> <slug> [--name NAME]\n"
        "                                           create a project, print its id\n"
        "  keys create --org SLUG --project SLUG [--name NAME] [--scopes LIST]\n"
        "              [--expires-in-days D]        create an API key, print the token\n"
        "  keys revoke <prefix>                     revoke an API key\n"
        "  keys list [--org SLUG]                   list API keys (never their secrets)\n"
        "  customers create --org SLUG <customer-id> [--name NAME] [--route R]\n"
        "                                           register a customer orders may name\n"
        "  customers list --org SLUG                list an organization's customers\n"
        "  order-rules set --org SLUG --sku SKU|'*' --max-quantity N\n"
        "                                           limit above which orders need approval\n"
        "  order-rules list --org SLUG              list an organization's limits\n"
        "  archive verify [--topic T] [--json]      check the S3 archive for gaps and overlaps\n"
        "  aggregates rebuild [--org SLUG]          recompute the Redis dashboard aggregates\n"
        "\n"
        "Environment (a variable that is not set is looked up in $SB_RUN_DIR/stack.env,\n"
        "else ./.run/stack.env, the file the local stack writes):\n"
        "  SB_PG_DSN             PostgreSQL connection string (or SB_PG_DSN_FILE)\n"
        "  SB_KAFKA_BOOTSTRAP    Kafka bootstrap servers (default 127.0.0.1:9092)\n"
        "  SB_KEY_PEPPER         HMAC pepper of API keys, the gateway's (or SB_KEY_PEPPER_FILE)\n"
        "  SB_SQL_DIR            migrations directory (default %s)\n"
        "  SB_TOPIC_PARTITIONS   partitions of the data topics (default 6)\n"
        "  SB_TOPIC_REPLICATION  replication factor (default: the broker's default)\n"
        "  SB_REDIS_URL          Redis of the dashboard aggregates (or SB_REDIS_URL_FILE)\n"
        "  SB_S3_ENDPOINT, SB_S3_BUCKET, SB_S3_ACCESS_KEY, SB_S3_SECRET_KEY (or _FILE),\n"
        "  SB_S3_REGION, SB_S3_PREFIX   the archive's S3 bucket (sbctl archive)\n"
        "\n"
        "Exit status: 0 ok, 1 failure, 2 usage error.\n",
        SB_SQL_DIR);
}

db_t *sbctl_db_open(void)
{
    char *dsn = sbctl_secret("SB_PG_DSN", true, NULL);
    db_t *db = NULL;
    if (!dsn)
        return NULL;
    int r = db_new(dsn, &db);
    free(dsn);
    if (r == -EINVAL) {
        sbctl_err("SB_PG_DSN is not a valid PostgreSQL connection string");
        return NULL;
    }
    if (r < 0) {
        sbctl_err("out of memory");
        return NULL;
    }
    if (!db_connected(db)) {
        sbctl_err("cannot connect to PostgreSQL: %s", db_errmsg(db));
        db_free(db);
        return NULL;
    }
    return db;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return SBCTL_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return SBCTL_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("sbctl %s\n", SB_VERSION);
        return SBCTL_OK;
    }
    for (size_t i = 0; i < sizeof(sbctl_cmds) / sizeof(sbctl_cmds[0]); i++)
        if (!strcmp(argv[1], sbctl_cmds[i].name))
            return sbctl_cmds[i].run(argc - 1, argv + 1);
    sbctl_err("unknown command '%s' (see sbctl --help)", argv[1]);
    return SBCTL_USAGE;
}
