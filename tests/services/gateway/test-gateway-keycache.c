/* The API key cache: what a lookup returns, and for how long. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "gateway.h"

static gw_key_t key_for(const char *project)
{
    gw_key_t k = {.found = true, .scopes = GW_SCOPE_INGEST, .expires_us = INT64_MAX};

    snprintf(k.project_id, sizeof(k.project_id), "%s", project);
    memset(k.secret_hash, 'a', AUTH_KEY_HASH_HEX);
    return k;
}

Test(keycache, an_entry_is_served_until_its_ttl_and_not_after)
{
    gw_keycache_t *c;
    gw_key_t k = key_for("p1"), got;

    cr_assert_eq(gw_keycache_new(1000, 0, 16, &c), 0);
    cr_assert_not(gw_keycache_get(c, "abcdefghijkl", 0, &got));
    gw_keycache_put(c, "abcdefghijkl", &k, 5000);
    cr_assert(gw_keycache_get(c, "abcdefghijkl", 5000, &got));
    cr_assert_str_eq(got.project_id, "p1");
    cr_assert(gw_keycache_get(c, "abcdefghijkl", 5999, &got));
    cr_assert_not(gw_keycache_get(c, "abcdefghijkl", 6000, &got));
    cr_assert_not(gw_keycache_get(c, "abcdefghijkm", 5000, &got));
    gw_keycache_free(c);
}

Test(keycache, unknown_keys_are_cached_too_and_a_refresh_replaces)
{
    gw_keycache_t *c;
    gw_key_t none = {.found = false}, k = key_for("p2"), got;

    cr_assert_eq(gw_keycache_new(1000, 0, 16, &c), 0);
    gw_keycache_put(c, "unknownprefx", &none, 0);
    cr_assert(gw_keycache_get(c, "unknownprefx", 10, &got));
    cr_assert_not(got.found);
    /* After the TTL the caller looks the key up again and stores the new answer. */
    gw_keycache_put(c, "unknownprefx", &k, 2000);
    cr_assert(gw_keycache_get(c, "unknownprefx", 2500, &got));
    cr_assert(got.found);
    cr_assert_eq(gw_keycache_size(c), 1);
    gw_keycache_free(c);
}

Test(keycache, a_full_cache_drops_expired_entries_but_never_fresh_ones)
{
    gw_keycache_t *c;
    gw_key_t k = key_for("p"), got;
    char prefix[16];

    cr_assert_eq(gw_keycache_new(1000, 0, 4, &c), 0);
    for (int i = 0; i < 4; i++) {
        snprintf(prefix, sizeof(prefix), "prefix%06d", i);
        gw_keycache_put(c, prefix, &k, 0);
    }
    gw_keycache_put(c, "newcomer0000", &k, 500);
    cr_assert_not(gw_keycache_get(c, "newcomer0000", 500, &got), "evicted a fresh entry");
    cr_assert(gw_keycache_get(c, "prefix000003", 500, &got));
    gw_keycache_put(c, "newcomer0000", &k, 1500);
    cr_assert(gw_keycache_get(c, "newcomer0000", 1500, &got));
    cr_assert_eq(gw_keycache_size(c), 1);
    gw_keycache_free(c);
}

Test(keycache, scopes_are_read_from_the_postgresql_array)
{
    cr_assert_eq(gw_scopes_parse("{ingest}"), GW_SCOPE_INGEST);
    cr_assert_eq(gw_scopes_parse("{read,ingest}"), GW_SCOPE_READ | GW_SCOPE_INGEST);
    cr_assert_eq(gw_scopes_parse("{orders}"), GW_SCOPE_ORDERS);
    cr_assert_eq(gw_scopes_parse("{}"), 0);
    cr_assert_eq(gw_scopes_parse("{ingestx,read}"), GW_SCOPE_READ);
}

Test(keycache, stale_entries_serve_only_when_asked_for)
{
    gw_keycache_t *c;
    gw_key_t k = {.found = true, .scopes = GW_SCOPE_INGEST}, out;

    cr_assert_eq(gw_keycache_new(1000, 5000, 4, &c), 0);
    gw_keycache_put(c, "aaaaaaaaaaaa", &k, 0);
    cr_expect(!gw_keycache_get(c, "aaaaaaaaaaaa", 1000, &out), "past the TTL it is not fresh");
    cr_expect(gw_keycache_get_stale(c, "aaaaaaaaaaaa", 5999, 6000, &out));
    cr_expect_eq(out.scopes, GW_SCOPE_INGEST);
    cr_expect(!gw_keycache_get_stale(c, "aaaaaaaaaaaa", 6000, 6000, &out));
    cr_expect(!gw_keycache_get_stale(c, "bbbbbbbbbbbb", 1, 6000, &out));
    /* A full cache sweeps entries past TTL + stale time only. */
    gw_keycache_put(c, "bbbbbbbbbbbb", &k, 0);
    gw_keycache_put(c, "cccccccccccc", &k, 0);
    gw_keycache_put(c, "dddddddddddd", &k, 0);
    gw_keycache_put(c, "eeeeeeeeeeee", &k, 3000);
    cr_expect(!gw_keycache_get_stale(c, "eeeeeeeeeeee", 3000, 6000, &out),
              "entries within TTL + stale are kept, so the new one found no room");
    gw_keycache_put(c, "eeeeeeeeeeee", &k, 6001);
    cr_expect(gw_keycache_get(c, "eeeeeeeeeeee", 6001, &out), "past TTL + stale they are swept");
    gw_keycache_free(c);
}
