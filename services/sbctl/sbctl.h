/* sbctl.h: what the sbctl subcommands share. A subcommand is `int run(int argc, char **argv)`
 * returning the process exit status: 0 ok, 1 failure (message on stderr), 2 usage error. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "db.h"

enum { SBCTL_OK = 0, SBCTL_FAIL = 1, SBCTL_USAGE = 2 };

/** Prints "sbctl: <message>" on stderr. */
void sbctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/**
 * A setting: the environment variable @name when set and not empty, else the same key from the
 * stack file ($SB_RUN_DIR/stack.env, else ./.run/stack.env) when there is one, else NULL.
 * The result is borrowed and lives until exit.
 */
const char *sbctl_setting(const char *name);

/** A secret setting: the value of @name, or the content of the file named by @name + "_FILE"
 *  without its trailing newline (as the daemons read their _FILE settings). Returns a malloc'd
 *  NUL-terminated copy (length in @ret_len, may be NULL), or NULL after printing why; with
 *  @required false, a setting that is simply absent returns NULL silently. */
char *sbctl_secret(const char *name, bool required, size_t *ret_len);

/** The path of the stack file consulted by sbctl_setting() (whether it exists or not). */
const char *sbctl_stack_file(void);

/**
 * Parses one line of a shell-style KEY=VALUE file: optional `export `, values unquoted,
 * 'single-quoted' (literal) or "double-quoted" (\" \\ \$ \` escapes), in any concatenation.
 * Returns 0 with malloc'd @ret_key and @ret_value, 1 for a blank or comment line, -EINVAL for a
 * line that is not an assignment, -ENOMEM.
 */
int sbctl_env_parse_line(const char *line, char **ret_key, char **ret_value);

/** Opens PostgreSQL from SB_PG_DSN; on failure prints why and returns NULL. */
db_t *sbctl_db_open(void);

/** True for a slug as the schema accepts it: ^[a-z0-9][a-z0-9-]{0,62}$. */
bool sbctl_slug_valid(const char *s);

/** One "--name VALUE" option of a subcommand: its short code (for @allowed below), its long
 *  name, and where its value goes. */
typedef struct sbctl_opt {
    char code;
    const char *name;
    const char **value;
} sbctl_opt_t;

/**
 * Parses a subcommand's arguments as getopt sees them (@argv[0] is the subcommand word): the
 * options of @opts (@nopts of them) whose code is in @allowed, --help (sets *@ret_help and
 * stops), and at most @maxpos positional arguments into @pos (their count in *@ret_npos).
 * 0, or -EINVAL for an unknown or misplaced option (named on stderr) or too many arguments.
 */
int sbctl_opts_parse(int argc, char **argv, const sbctl_opt_t *opts, size_t nopts,
                     const char *allowed, const char **pos, int maxpos, int *ret_npos,
                     bool *ret_help);

/** Parses a decimal integer in [@min, @max]. 0 or -EINVAL. */
int sbctl_parse_int(const char *s, long min, long max, long *ret);

int sbctl_migrate_run(int argc, char **argv);
int sbctl_topics_run(int argc, char **argv);
int sbctl_orgs_run(int argc, char **argv);
int sbctl_projects_run(int argc, char **argv);
int sbctl_keys_run(int argc, char **argv);
int sbctl_customers_run(int argc, char **argv);
int sbctl_order_rules_run(int argc, char **argv);
int sbctl_archive_run(int argc, char **argv);
int sbctl_aggregates_run(int argc, char **argv);
