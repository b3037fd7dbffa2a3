/* test-sbctl-util.c: sbctl's stack.env parsing and argument checks, no server needed. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sbctl.h"

static void assert_parses(const char *line, const char *key, const char *value)
{
    char *k = NULL, *v = NULL;
    cr_assert_eq(sbctl_env_parse_line(line, &k, &v), 0, "line: %s", line);
    cr_assert_str_eq(k, key);
    cr_assert_str_eq(v, value, "line: %s", line);
    free(k);
    free(v);
}

Test(sbctl_env, shell_assignments)
{
    assert_parses("SB_PG_DSN=postgresql://sb@127.0.0.1:5432/sb\n", "SB_PG_DSN",
                  "postgresql://sb@127.0.0.1:5432/sb");
    assert_parses("export SB_A='x y'\n", "SB_A", "x y");
    assert_parses("SB_B='it'\\''s'", "SB_B", "it's");
    assert_parses("SB_C=\"a \\\"q\\\" \\$HOME\"", "SB_C", "a \"q\" $HOME");
    assert_parses("  SB_D=   # empty", "SB_D", "");
    assert_parses("SB_E='host=h password=p#1' # comment", "SB_E", "host=h password=p#1");
    assert_parses("SB_F=a\\ b\r\n", "SB_F", "a b");
}

Test(sbctl_env, blank_comment_and_bad_lines)
{
    char *k = NULL, *v = NULL;
    cr_assert_eq(sbctl_env_parse_line("\n", &k, &v), 1);
    cr_assert_eq(sbctl_env_parse_line("   # note", &k, &v), 1);
    cr_assert_eq(sbctl_env_parse_line("not an assignment", &k, &v), -EINVAL);
    cr_assert_eq(sbctl_env_parse_line("SB_X='unterminated", &k, &v), -EINVAL);
    cr_assert_eq(sbctl_env_parse_line("SB_Y=a b", &k, &v), -EINVAL, "a command after it");
    cr_assert_eq(sbctl_env_parse_line("1X=a", &k, &v), -EINVAL);
}

Test(sbctl_env, setting_prefers_environment_then_stack_file)
{
    char dir[] = "/tmp/sbctl-env-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/stack.env", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("SB_T_ONE='from file'\nSB_T_TWO=file\nSB_T_ONE=last\n", f);
    fclose(f);

    setenv("SB_RUN_DIR", dir, 1);
    setenv("SB_T_TWO", "from env", 1);
    unsetenv("SB_T_ONE");
    cr_assert_str_eq(sbctl_stack_file(), path);
    cr_assert_str_eq(sbctl_setting("SB_T_ONE"), "last", "the last assignment wins");
    cr_assert_str_eq(sbctl_setting("SB_T_TWO"), "from env");
    cr_assert_null(sbctl_setting("SB_T_THREE"));
    unlink(path);
    rmdir(dir);
}

Test(sbctl_util, slugs_match_the_schema)
{
    cr_assert(sbctl_slug_valid("acme"));
    cr_assert(sbctl_slug_valid("plant-1"));
    cr_assert(sbctl_slug_valid("0"));
    cr_assert_not(sbctl_slug_valid(""));
    cr_assert_not(sbctl_slug_valid("-acme"));
    cr_assert_not(sbctl_slug_valid("Acme"));
    cr_assert_not(sbctl_slug_valid("a_b"));
    char long_slug[65];
    memset(long_slug, 'a', 64);
    long_slug[64] = '\0';
    cr_assert_not(sbctl_slug_valid(long_slug));
    long_slug[63] = '\0';
    cr_assert(sbctl_slug_valid(long_slug));
}

Test(sbctl_util, integers_in_range)
{
    long v = 0;
    cr_assert_eq(sbctl_parse_int("30", 1, 36500, &v), 0);
    cr_assert_eq(v, 30);
    cr_assert_eq(sbctl_parse_int("0", 1, 36500, &v), -EINVAL);
    cr_assert_eq(sbctl_parse_int("12x", 1, 36500, &v), -EINVAL);
    cr_assert_eq(sbctl_parse_int("", 1, 36500, &v), -EINVAL);
}

Test(sbctl_opts, options_positionals_and_refusals)
{
    const char *org = NULL, *name = NULL, *pos[2];
    const sbctl_opt_t opts[] = {{'o', "org", &org}, {'n', "name", &name}};
    char *ok[] = {"create", "--org", "acme", "c-1", "--name", "Acme Ltd", NULL};
    char *refused[] = {"list", "--name", "x", NULL};
    char *too_many[] = {"create", "a", "b", "c", NULL};
    char *help[] = {"create", "--help", "--bogus", NULL};
    bool h = false;
    int npos;

    cr_assert_eq(sbctl_opts_parse(6, ok, opts, 2, "on", pos, 2, &npos, &h), 0);
    cr_expect_str_eq(org, "acme");
    cr_expect_str_eq(name, "Acme Ltd");
    cr_assert_eq(npos, 1);
    cr_expect_str_eq(pos[0], "c-1");
    cr_expect_not(h);
    cr_expect_eq(sbctl_opts_parse(3, refused, opts, 2, "o", pos, 2, &npos, &h), -EINVAL,
                 "--name is not among the allowed codes");
    cr_expect_eq(sbctl_opts_parse(4, too_many, opts, 2, "on", pos, 2, &npos, &h), -EINVAL);
    cr_expect_eq(sbctl_opts_parse(3, help, opts, 2, "on", pos, 2, &npos, &h), 0);
    cr_expect(h, "--help stops parsing and is reported");
}
