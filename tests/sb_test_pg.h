/* sb_test_pg.h: the PostgreSQL server that C tests use (included by test programs only). */
#pragma once

#include <criterion/criterion.h>
#include <stdlib.h>

/* The server tests need a throwaway PostgreSQL; scripts/test provides the test stack's DSN. A
 * missing DSN fails loudly instead of passing without having tested anything. */
static inline const char *sb_test_pg_dsn(void)
{
    const char *dsn = getenv("SB_TEST_PG_DSN");
    if (!dsn || !*dsn)
        cr_assert_fail("SB_TEST_PG_DSN is not set: these tests need a PostgreSQL server "
                       "(run them through scripts/test, or export a DSN of a throwaway database)");
    return dsn;
}
