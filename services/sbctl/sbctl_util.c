/* sbctl_util.c: settings (environment, then the local stack's stack.env) and small helpers. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbctl.h"

typedef struct sbctl_kv {
    char *key, *value;
} sbctl_kv_t;

static sbctl_kv_t *stack_kvs;
static size_t stack_nkvs;
static bool stack_loaded;
static char stack_path[4096];

int sbctl_env_parse_line(const char *line, char **ret_key, char **ret_value)
{
    const char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '\n' || *p == '\r' || *p == '#')
        return 1;
    if (!strncmp(p, "export", 6) && (p[6] == ' ' || p[6] == '\t')) {
        p += 6;
        while (*p == ' ' || *p == '\t')
            p++;
    }

    const char *k = p;
    if (!isalpha((unsigned char)*p) && *p != '_')
        return -EINVAL;
    while (isalnum((unsigned char)*p) || *p == '_')
        p++;
    if (*p != '=')
        return -EINVAL;
    size_t klen = (size_t)(p - k);
    p++;

    /* The value can only shrink when quotes and escapes are removed. */
    char *v = malloc(strlen(p) + 1);
    if (!v)
        return -ENOMEM;
    size_t n = 0;
    for (;;) {
        char c = *p;
        if (c == '\0' || c == '\n' || c == '\r' || c == ' ' || c == '\t')
            break;
        if (c == '\'') {
            const char *end = strchr(p + 1, '\'');
            if (!end)
                goto bad;
            memcpy(v + n, p + 1, (size_t)(end - p - 1));
            n += (size_t)(end - p - 1);
            p = end + 1;
        } else if (c == '"') {
            for (p++; *p != '"'; p++) {
                if (*p == '\0')
                    goto bad;
                if (*p == '\\' && p[1] && strchr("\"\\$`", p[1]))
                    p++;
                v[n++] = *p;
            }
            p++;
        } else if (c == '\\' && p[1] && p[1] != '\n') {
            v[n++] = p[1];
            p += 2;
        } else {
            v[n++] = c;
            p++;
        }
    }
    v[n] = '\0';
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    if (*p != '\0' && *p != '#')
        goto bad;

    *ret_key = strndup(k, klen);
    if (!*ret_key) {
        free(v);
        return -ENOMEM;
    }
    *ret_value = v;
    return 0;

bad:
    free(v);
    return -EINVAL;
}

const char *sbctl_stack_file(void)
{
    if (!stack_path[0]) {
        const char *dir = getenv("SB_RUN_DIR");
        snprintf(stack_path, sizeof(stack_path), "%s/stack.env", dir && *dir ? dir : ".run");
    }
    return stack_path;
}

static void sbctl_stack_load(void)
{
    stack_loaded = true;
    FILE *f = fopen(sbctl_stack_file(), "re");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    while (getline(&line, &cap, f) > 0) {
        char *k, *v;
        lineno++;
        int r = sbctl_env_parse_line(line, &k, &v);
        if (r == 1)
            continue;
        if (r < 0) {
            sbctl_err("%s:%u: ignoring a line that is not KEY=VALUE", sbctl_stack_file(), lineno);
            continue;
        }
        sbctl_kv_t *kvs = realloc(stack_kvs, (stack_nkvs + 1) * sizeof(*kvs));
        if (!kvs) {
            free(k);
            free(v);
            break;
        }
        stack_kvs = kvs;
        stack_kvs[stack_nkvs++] = (sbctl_kv_t){k, v};
    }
    free(line);
    fclose(f);
}

const char *sbctl_setting(const char *name)
{
    const char *v = getenv(name);
    if (v && *v)
        return v;
    if (!stack_loaded)
        sbctl_stack_load();
    /* The last assignment wins, as when the shell sources the file. */
    for (size_t i = stack_nkvs; i-- > 0;)
        if (!strcmp(stack_kvs[i].key, name))
            return stack_kvs[i].value[0] ? stack_kvs[i].value : NULL;
    return NULL;
}

void sbctl_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("sbctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

bool sbctl_slug_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-'))
            return false;
    return true;
}

int sbctl_parse_int(const char *s, long min, long max, long *ret)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < min || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

char *sbctl_secret(const char *name, bool required, size_t *ret_len)
{
    char file_name[128];
    const char *v = sbctl_setting(name);
    const char *path;
    char *buf;
    size_t len;

    snprintf(file_name, sizeof(file_name), "%s_FILE", name);
    path = sbctl_setting(file_name);
    if (v && path) {
        sbctl_err("set %s or %s, not both", name, file_name);
        return NULL;
    }
    if (v) {
        buf = strdup(v);
        len = buf ? strlen(buf) : 0;
    } else if (path) {
        FILE *f = fopen(path, "re");
        if (!f) {
            sbctl_err("cannot read %s %s: %s", file_name, path, strerror(errno));
            return NULL;
        }
        buf = malloc(65537);
        len = buf ? fread(buf, 1, 65536, f) : 0;
        fclose(f);
        if (buf) {
            if (len > 0 && buf[len - 1] == '\n')
                len--;
            buf[len] = '\0';
        }
    } else {
        if (required)
            sbctl_err("%s or %s must be set (nor found in %s)", name, file_name,
                      sbctl_stack_file());
        return NULL;
    }
    if (!buf) {
        sbctl_err("out of memory");
        return NULL;
    }
    if (ret_len)
        *ret_len = len;
    return buf;
}

int sbctl_opts_parse(int argc, char **argv, const sbctl_opt_t *opts, size_t nopts,
                     const char *allowed, const char **pos, int maxpos, int *ret_npos,
                     bool *ret_help)
{
    struct option longopts[16 + 2] = {{0}};
    int c;

    if (nopts > 16)
        return -EINVAL;
    for (size_t i = 0; i < nopts; i++)
        longopts[i] = (struct option){opts[i].name, required_argument, NULL, opts[i].code};
    longopts[nopts] = (struct option){"help", no_argument, NULL, 'h'};
    *ret_npos = 0;
    optind = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        size_t i;

        if (c == 'h') {
            *ret_help = true;
            return 0;
        }
        for (i = 0; i < nopts && opts[i].code != c; i++)
            ;
        if (c == '?' || i == nopts || !strchr(allowed, c)) {
            if (c != '?')
                sbctl_err("option not accepted here: --%s", opts[i].name);
            return -EINVAL;
        }
        *opts[i].value = optarg;
    }
    for (int i = optind; i < argc; i++) {
        if (*ret_npos == maxpos)
            return -EINVAL;
        pos[(*ret_npos)++] = argv[i];
    }
    return 0;
}
