/* svc_config.c: defaults, then a `name = value` file, then SB_<SERVICE>_* variables. */
#include "svc_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern char **environ;

/* Longest setting or environment name handled; longer keys are reported as unknown. */
#define CONF_NAME_MAX 256
/* A secret read from an SB_*_FILE file is at most this long (keys and passwords, not data). */
#define CONF_SECRET_FILE_MAX 65536

/* The programs of sensorbus whose SB_<NAME>_ prefix extends another program's: "sensor-ingest"
 * owns SB_SENSOR_INGEST_*, so a program called "sensor" must not reject those variables as
 * unknown when both read one shared environment. */
static const char *const sibling_services[] = {
    "gateway", "sensor-ingest", "order-processor", "anomaly-detector", "s3-archiver", "sbctl",
};

typedef struct loader {
    const char *service;
    const svc_conf_section_t *sections;
    size_t nsections;
    svc_conf_t *conf;
    char prefix[CONF_NAME_MAX]; /* "SB_SENSOR_INGEST_" */
    char *errbuf;
    size_t errsize;
} loader_t;

static const char *const type_names[] = {"", "string", "int", "bool", "double"};

/* "sensor-ingest" -> "SENSOR_INGEST": upper case, every other character '_'. */
static void env_form(char *out, size_t size, const char *s)
{
    size_t i = 0;

    for (; s[i] && i + 1 < size; i++)
        out[i] = isalnum((unsigned char)s[i]) ? (char)toupper((unsigned char)s[i]) : '_';
    out[i] = '\0';
}

/* "SB_" + env form of @service + "_" + env form of @name (which may be ""), cut to @size. */
static void env_name(char *out, size_t size, const char *service, const char *name)
{
    size_t n = (size_t)snprintf(out, size, "SB_");

    if (n < size)
        env_form(out + n, size - n, service);
    n = strlen(out);
    if (n + 1 < size)
        out[n++] = '_', out[n] = '\0';
    if (n < size)
        env_form(out + n, size - n, name);
}

#define err(ld, ...) snprintf((ld)->errbuf, (ld)->errsize, __VA_ARGS__)

/* Parses @text into the field of @e in @target. @where names the source for the message. */
static int value_parse(loader_t *ld, const svc_conf_entry_t *e, void *target, const char *text,
                       const char *where)
{
    char *field = (char *)target + e->offset, *end;
    /* A secret's value is never echoed, not even when it is wrong. */
    const char *shown = (e->flags & SVC_CONF_SECRET) ? "(secret)" : text;

    switch (e->type) {
    case SVC_CONF_STR: {
        char *copy = NULL, **dst = (char **)(void *)field;

        if (text && !(copy = strdup(text)))
            return -ENOMEM;
        free(*dst);
        *dst = copy;
        return 0;
    }
    case SVC_CONF_INT: {
        long long v = 0;

        if (text) {
            errno = 0;
            v = strtoll(text, &end, 10);
            if (!*text || isspace((unsigned char)*text) || *end || (errno && errno != ERANGE)) {
                err(ld, "%s: '%.64s' is not an integer", where, shown);
                return -EINVAL;
            }
            if (errno == ERANGE) {
                err(ld, "%s: '%.64s' does not fit in 64 bits", where, shown);
                return -ERANGE;
            }
        }
        /* The range applies to values given; a missing default is 0 whatever the range. */
        if (text && e->min < e->max && (v < e->min || v > e->max)) {
            err(ld, "%s: %lld is out of range (%lld..%lld)", where, v, (long long)e->min,
                (long long)e->max);
            return -ERANGE;
        }
        *(int64_t *)(void *)field = v;
        return 0;
    }
    case SVC_CONF_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                    "off", "0"};

        for (size_t i = 0; text && i < 4; i++) {
            if (!strcasecmp(text, yes[i]) || !strcasecmp(text, no[i])) {
                *(bool *)(void *)field = !strcasecmp(text, yes[i]);
                return 0;
            }
        }
        if (!text) {
            *(bool *)(void *)field = false;
            return 0;
        }
        err(ld, "%s: '%.64s' is not a boolean (use true/false, yes/no, on/off or 1/0)", where,
            shown);
        return -EINVAL;
    }
    case SVC_CONF_DOUBLE: {
        double v = 0;

        if (text) {
            errno = 0;
            v = strtod(text, &end);
            if (!*text || isspace((unsigned char)*text) || *end || errno || v != v || v - v != 0) {
                err(ld, "%s: '%.64s' is not a finite number", where, shown);
                return -EINVAL;
            }
        }
        *(double *)(void *)field = v;
        return 0;
    }
    case SVC_CONF_END:
        break;
    }
    err(ld, "%s: the settings table has an entry of unknown type", where);
    return -EINVAL;
}

/* Whether @e is the setting called @key (written in env form when @env: "BATCH_MAX"). */
static bool entry_matches(const svc_conf_entry_t *e, const char *key, bool env, bool secrets_only)
{
    char name[CONF_NAME_MAX];

    if (secrets_only && !(e->flags & SVC_CONF_SECRET))
        return false;
    if (!env)
        return strcmp(e->name, key) == 0;
    env_form(name, sizeof(name), e->name);
    return strcmp(name, key) == 0;
}

static bool key_declared(const loader_t *ld, const char *key, bool env, bool secrets_only)
{
    for (size_t s = 0; s < ld->nsections; s++)
        for (const svc_conf_entry_t *e = ld->sections[s].table; e->type != SVC_CONF_END; e++)
            if (entry_matches(e, key, env, secrets_only))
                return true;
    return false;
}

/* Applies @text to every declared setting called @key. Returns the number of settings it
 * matched, or a negative errno. */
static int key_apply(loader_t *ld, const char *key, bool env, bool secrets_only, const char *text,
                     const char *where)
{
    int matched = 0, r;

    for (size_t s = 0; s < ld->nsections; s++) {
        for (const svc_conf_entry_t *e = ld->sections[s].table; e->type != SVC_CONF_END; e++) {
            if (!entry_matches(e, key, env, secrets_only))
                continue;
            r = value_parse(ld, e, ld->sections[s].target, text, where);
            if (r < 0)
                return r;
            matched++;
        }
    }
    return matched;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[CONF_NAME_MAX + 1];

    if (lb > CONF_NAME_MAX)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Writes " (did you mean X?)" for the declared name nearest to @key, when one is close. */
static void suggest(const loader_t *ld, const char *key, bool env, char *out, size_t size)
{
    char name[CONF_NAME_MAX];
    const char *best = NULL;
    size_t best_d = 3; /* two typos at most, or the hint is noise */

    out[0] = '\0';
    for (size_t s = 0; s < ld->nsections; s++) {
        for (const svc_conf_entry_t *e = ld->sections[s].table; e->type != SVC_CONF_END; e++) {
            size_t d;
            if (env)
                env_form(name, sizeof(name), e->name);
            d = edit_distance(key, env ? name : e->name);
            if (d < best_d) {
                best_d = d;
                best = e->name;
            }
        }
    }
    if (best && env) {
        env_name(name, sizeof(name), ld->service, best);
        snprintf(out, size, " (did you mean %s?)", name);
    } else if (best) {
        snprintf(out, size, " (did you mean '%s'?)", best);
    }
}

const char *svc_conf_kafka_get(const svc_conf_t *conf, const char *key)
{
    for (size_t i = 0; conf && i < conf->kafka_count; i++)
        if (strcmp(conf->kafka[i].key, key) == 0)
            return conf->kafka[i].value;
    return NULL;
}

int svc_conf_kafka_set(svc_conf_t *conf, const char *key, const char *value)
{
    svc_conf_kv_t *grown;
    char *k = NULL, *v = strdup(value);

    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < conf->kafka_count; i++) {
        if (strcmp(conf->kafka[i].key, key) == 0) {
            free(conf->kafka[i].value);
            conf->kafka[i].value = v;
            return 0;
        }
    }
    k = strdup(key);
    grown = realloc(conf->kafka, (conf->kafka_count + 1) * sizeof(*grown));
    if (!k || !grown) {
        if (grown)
            conf->kafka = grown;
        free(k);
        free(v);
        return -ENOMEM;
    }
    conf->kafka = grown;
    conf->kafka[conf->kafka_count++] = (svc_conf_kv_t){k, v};
    return 0;
}

void svc_conf_free(svc_conf_t *conf)
{
    if (!conf)
        return;
    for (size_t i = 0; i < conf->kafka_count; i++) {
        free(conf->kafka[i].key);
        free(conf->kafka[i].value);
    }
    free(conf->kafka);
    free(conf);
}

void svc_conf_target_free(const svc_conf_entry_t *table, void *target)
{
    if (!table || !target)
        return;
    for (const svc_conf_entry_t *e = table; e->type != SVC_CONF_END; e++) {
        if (e->type == SVC_CONF_STR) {
            char **field = (char **)(void *)((char *)target + e->offset);
            free(*field);
            *field = NULL;
        }
    }
}

static char *trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static int file_load(loader_t *ld, const char *path)
{
    FILE *f = fopen(path, "re");
    char *line = NULL, where[CONF_NAME_MAX + 64], hint[CONF_NAME_MAX + 32];
    size_t cap = 0;
    unsigned lineno = 0;
    int r = 0;

    if (!f) {
        r = -errno;
        err(ld, "cannot read config file %s: %s", path, strerror(errno));
        return r;
    }
    while (getline(&line, &cap, f) >= 0) {
        char *key, *value, *eq;

        lineno++;
        key = trim(line);
        if (!*key || *key == '#')
            continue; /* only whole-line comments: a value may contain '#' (passwords do) */
        eq = strchr(key, '=');
        if (!eq) {
            err(ld, "%s:%u: expected 'name = value'", path, lineno);
            r = -EINVAL;
            goto out;
        }
        *eq = '\0';
        key = trim(key);
        value = trim(eq + 1);
        if (!*key) {
            err(ld, "%s:%u: a line starts with '=' and names no setting", path, lineno);
            r = -EINVAL;
            goto out;
        }
        if (strncmp(key, "kafka.", 6) == 0) {
            if (!key[6]) {
                err(ld, "%s:%u: 'kafka.' must be followed by a librdkafka property", path, lineno);
                r = -EINVAL;
                goto out;
            }
            r = svc_conf_kafka_set(ld->conf, key + 6, value);
            if (r < 0) {
                err(ld, "out of memory");
                goto out;
            }
            continue;
        }
        snprintf(where, sizeof(where), "%s:%u: %.*s", path, lineno, CONF_NAME_MAX, key);
        r = key_apply(ld, key, false, false, value, where);
        if (r < 0)
            goto out;
        if (r == 0) {
            suggest(ld, key, false, hint, sizeof(hint));
            err(ld, "%s:%u: unknown setting '%.*s'%s; see --help for the settings", path, lineno,
                CONF_NAME_MAX, key, hint);
            r = -EINVAL;
            goto out;
        }
        r = 0;
    }
    if (ferror(f)) {
        r = -EIO;
        err(ld, "cannot read config file %s: %s", path, strerror(EIO));
    }
out:
    free(line);
    fclose(f);
    return r;
}

/* Reads a secret from the file named by @var=@path, without its trailing newline. */
static int secret_file_read(loader_t *ld, const char *var, const char *path, char **ret_value)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t n;
    int r;

    if (!f) {
        r = -errno;
        err(ld, "%s: cannot read %s: %s", var, path, strerror(errno));
        return r;
    }
    r = -ENOMEM;
    buf = malloc(CONF_SECRET_FILE_MAX + 1);
    if (!buf) {
        err(ld, "out of memory");
        goto fail;
    }
    n = fread(buf, 1, CONF_SECRET_FILE_MAX + 1, f);
    r = -EIO;
    if (ferror(f)) {
        err(ld, "%s: cannot read %s: %s", var, path, strerror(EIO));
        goto fail;
    }
    r = -EFBIG;
    if (n > CONF_SECRET_FILE_MAX) {
        err(ld, "%s: %s is larger than %d bytes", var, path, CONF_SECRET_FILE_MAX);
        goto fail;
    }
    r = -EINVAL;
    if (memchr(buf, '\0', n)) {
        err(ld, "%s: %s contains a NUL byte", var, path);
        goto fail;
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    fclose(f);
    *ret_value = buf;
    return 0;
fail:
    free(buf);
    fclose(f);
    return r;
}

static bool sibling_owns(const loader_t *ld, const char *var)
{
    char prefix[CONF_NAME_MAX];

    for (size_t i = 0; i < sizeof(sibling_services) / sizeof(sibling_services[0]); i++) {
        env_name(prefix, sizeof(prefix), sibling_services[i], "");
        if (strlen(prefix) > strlen(ld->prefix) && strncmp(var, prefix, strlen(prefix)) == 0)
            return true;
    }
    return false;
}

/* Applies one SB_<SERVICE>_<rest>=value variable. */
static int env_apply(loader_t *ld, const char *var, const char *rest, const char *value)
{
    char key[CONF_NAME_MAX], hint[CONF_NAME_MAX + 32], *secret = NULL;
    size_t len = strlen(rest);
    int r;

    if (strcmp(rest, "CONFIG") == 0)
        return 0; /* read before the file */
    r = key_apply(ld, rest, true, false, value, var);
    if (r != 0)
        return r < 0 ? r : 0;
    if (strncmp(rest, "KAFKA_", 6) == 0) {
        if (!rest[6]) {
            err(ld, "%s: name a librdkafka property after KAFKA_", var);
            return -EINVAL;
        }
        for (size_t i = 0; rest[6 + i]; i++)
            key[i] = rest[6 + i] == '_' ? '.' : (char)tolower((unsigned char)rest[6 + i]);
        key[len - 6] = '\0';
        if (svc_conf_kafka_set(ld->conf, key, value) < 0) {
            err(ld, "out of memory");
            return -ENOMEM;
        }
        return 0;
    }
    if (len > 5 && strcmp(rest + len - 5, "_FILE") == 0) {
        memcpy(key, rest, len - 5);
        key[len - 5] = '\0';
        if (key_declared(ld, key, true, true)) {
            char plain[CONF_NAME_MAX];

            snprintf(plain, sizeof(plain), "%.*s", (int)(strlen(var) - 5), var);
            if (getenv(plain)) {
                err(ld, "set %s or %s, not both", plain, var);
                return -EINVAL;
            }
            r = secret_file_read(ld, var, value, &secret);
            if (r < 0)
                return r;
            r = key_apply(ld, key, true, true, secret, var);
            free(secret);
            return r < 0 ? r : 0;
        }
    }
    if (sibling_owns(ld, var))
        return 0;
    suggest(ld, rest, true, hint, sizeof(hint));
    err(ld, "unknown environment variable %s%s; see --help for the settings", var, hint);
    return -EINVAL;
}

static int env_load(loader_t *ld)
{
    size_t plen = strlen(ld->prefix);

    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        char var[CONF_NAME_MAX];
        int r;

        if (!eq || strncmp(*e, ld->prefix, plen) != 0)
            continue;
        if ((size_t)(eq - *e) >= sizeof(var)) {
            err(ld, "environment variable %.64s... has too long a name", *e);
            return -EINVAL;
        }
        memcpy(var, *e, (size_t)(eq - *e));
        var[eq - *e] = '\0';
        r = env_apply(ld, var, var + plen, eq + 1);
        if (r < 0)
            return r;
    }
    return 0;
}

int svc_conf_load(const char *service, const char *summary, const svc_conf_section_t *sections,
                  size_t nsections, int argc, char **argv, svc_conf_t **ret_conf, char *errbuf,
                  size_t errsize)
{
    loader_t ld = {
        .sections = sections, .nsections = nsections, .errbuf = errbuf, .errsize = errsize};
    const char *file = NULL;
    char where[CONF_NAME_MAX + 32];
    int r;

    if (errsize)
        errbuf[0] = '\0';
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            svc_conf_print_help(service, summary, sections, nsections, stdout);
            return 1;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                err(&ld, "--config needs a file name");
                return -EINVAL;
            }
            file = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            file = argv[i] + 9;
        } else {
            err(&ld, "unknown argument '%.128s'; see --help", argv[i]);
            return -EINVAL;
        }
    }

    ld.service = service;
    env_name(ld.prefix, sizeof(ld.prefix), service, "");
    ld.conf = calloc(1, sizeof(*ld.conf));
    if (!ld.conf) {
        err(&ld, "out of memory");
        return -ENOMEM;
    }

    for (size_t s = 0; s < nsections; s++) {
        for (const svc_conf_entry_t *e = sections[s].table; e->type != SVC_CONF_END; e++) {
            char *field = (char *)sections[s].target + e->offset;

            /* The target's fields are not ours to free yet: start every string from NULL. */
            if (e->type == SVC_CONF_STR)
                *(char **)(void *)field = NULL;
            snprintf(where, sizeof(where), "default of %s", e->name);
            r = value_parse(&ld, e, sections[s].target, e->def, where);
            if (r < 0)
                goto fail;
        }
    }

    if (!file) {
        char var[CONF_NAME_MAX + 8];

        snprintf(var, sizeof(var), "%sCONFIG", ld.prefix);
        file = getenv(var);
        if (file && !*file)
            file = NULL;
    }
    if (file && (r = file_load(&ld, file)) < 0)
        goto fail;
    r = env_load(&ld);
    if (r < 0)
        goto fail;

    if (ret_conf)
        *ret_conf = ld.conf;
    else
        svc_conf_free(ld.conf);
    return 0;
fail:
    if (r == -ENOMEM && errsize && !errbuf[0])
        err(&ld, "out of memory");
    for (size_t s = 0; s < nsections; s++)
        svc_conf_target_free(sections[s].table, sections[s].target);
    svc_conf_free(ld.conf);
    return r;
}

/* The text shown as an entry's default in --help. */
static const char *default_shown(const svc_conf_entry_t *e)
{
    if (e->flags & SVC_CONF_SECRET)
        return "(secret)";
    if (!e->def)
        return e->type == SVC_CONF_STR ? "-" : "0";
    return *e->def ? e->def : "\"\"";
}

void svc_conf_print_help(const char *service, const char *summary,
                         const svc_conf_section_t *sections, size_t nsections, void *f)
{
    FILE *out = f;
    char up[CONF_NAME_MAX], env[CONF_NAME_MAX * 2 + 16];
    int wname = 4, wdef = 7, wenv = 11;
    bool any_secret = false;

    env_form(up, sizeof(up), service);
    for (size_t s = 0; s < nsections; s++) {
        for (const svc_conf_entry_t *e = sections[s].table; e->type != SVC_CONF_END; e++) {
            char name[CONF_NAME_MAX];
            int n;

            env_form(name, sizeof(name), e->name);
            n = snprintf(env, sizeof(env), "SB_%s_%s%s", up, name,
                         (e->flags & SVC_CONF_SECRET) ? "[_FILE]" : "");
            wenv = n > wenv ? n : wenv;
            n = (int)strlen(e->name);
            wname = n > wname ? n : wname;
            n = (int)strlen(default_shown(e));
            wdef = n > wdef ? n : wdef;
            any_secret = any_secret || (e->flags & SVC_CONF_SECRET);
        }
    }

    fprintf(out, "%s: %s\n\n", service, summary ? summary : "");
    fprintf(out,
            "Options:\n"
            "  --config FILE  read settings from FILE (also SB_%s_CONFIG)\n"
            "  -h, --help     print this help and exit\n\n",
            up);
    fprintf(out, "Settings (environment variables override the file, which overrides defaults):\n");
    fprintf(out, "  %-*s  %-6s  %-*s  %-*s  %s\n", wname, "NAME", "TYPE", wdef, "DEFAULT", wenv,
            "ENVIRONMENT", "DESCRIPTION");
    for (size_t s = 0; s < nsections; s++) {
        for (const svc_conf_entry_t *e = sections[s].table; e->type != SVC_CONF_END; e++) {
            char name[CONF_NAME_MAX];

            env_form(name, sizeof(name), e->name);
            snprintf(env, sizeof(env), "SB_%s_%s%s", up, name,
                     (e->flags & SVC_CONF_SECRET) ? "[_FILE]" : "");
            fprintf(out, "  %-*s  %-6s  %-*s  %-*s  %s", wname, e->name, type_names[e->type], wdef,
                    default_shown(e), wenv, env, e->desc ? e->desc : "");
            if (e->type == SVC_CONF_INT && e->min < e->max)
                fprintf(out, " (%lld..%lld)", (long long)e->min, (long long)e->max);
            fputc('\n', out);
        }
    }
    fprintf(out, "\nThe file holds `name = value` lines; lines starting with '#' are comments.\n");
    if (any_secret)
        fprintf(out, "A (secret) setting can instead be read from the file named by its "
                     "variable plus _FILE.\n");
    fprintf(out,
            "librdkafka properties pass through as `kafka.<property> = value` in the file or as "
            "SB_%s_KAFKA_<PROPERTY> with '.' written as '_' (SB_%s_KAFKA_BOOTSTRAP_SERVERS).\n",
            up, up);
}
