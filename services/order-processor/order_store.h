/* order_store.h: the PostgreSQL side of sb-order-processor (tables in sql/0005_orders.sql).
 *
 * Every function runs statements on the caller's connection and inside the caller's
 * transaction: the processor opens one per batch, so that a batch's changes, its events and its
 * command ids become durable together or not at all.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "order_codec.h"

/** Registers the statements on @db (re-prepared on every reconnect). 0, or the -errno of
 *  db_prepare() (-EINVAL when the schema is missing: `sbctl migrate` has not run). */
int order_store_prepare(db_t *db);

/**
 * Locks the rows of the organizations in @orgs (a uuid[] literal, "{id,id}") in id order and
 * bumps their generation. Organizations that do not exist are not locked; @ret_known (the
 * caller's to PQclear()) lists, in column 0, those that do. 0 or a db errno.
 */
int order_store_lock_orgs(db_t *db, const char *orgs, PGresult **ret_known);

/** What applying one command did. */
typedef enum order_outcome {
    ORDER_OUT_APPLIED,  /* a new order, or a status change */
    ORDER_OUT_REFUSED,  /* a transition the machine refused, recorded */
    ORDER_OUT_REPLAYED, /* applied before: its recorded events were queued again */
    ORDER_OUT_IGNORED,  /* a create for an order id that exists: recorded, nothing changed */
    ORDER_OUT_DLQ,      /* cannot be applied; @dlq says why, nothing was written */
} order_outcome_t;

/** The command and where it came from. */
typedef struct order_store_cmd {
    const order_command_t *cmd;
    int32_t partition;
    int64_t offset;
    const char *default_route; /* for customers without a route */
} order_store_cmd_t;

/**
 * Applies one command: if its command_id was applied before, queues its recorded events on
 * @events; otherwise judges it (order_decide() for a create, the state machine for a
 * transition), writes the order row, its events and the command id, and queues the new events.
 * On success returns 0 with @ret_outcome (for ORDER_OUT_APPLIED on a create, @ret_status is the
 * verdict; for ORDER_OUT_REFUSED, @reason holds why; for ORDER_OUT_DLQ, @reason holds the
 * dead-letter reason). Returns a db errno (-EINVAL: PostgreSQL refused a statement) or -ENOMEM;
 * the caller then rolls back and drops the events queued since the call.
 */
int order_store_apply(db_t *db, const order_store_cmd_t *sc, order_events_t *events,
                      order_outcome_t *ret_outcome, order_status_t *ret_status, char *reason,
                      size_t reason_size);

/**
 * Counts the orders of every organization in @orgs (a uuid[] literal; NULL: every organization
 * that has had orders) by status, with the generation those counts belong to, in one statement
 * (one snapshot). Rows: org_id, generation, status (NULL for an organization without orders),
 * count, ordered by org_id. 0 with @ret_res to PQclear(), or a db errno.
 */
int order_store_counts(db_t *db, const char *orgs, PGresult **ret_res);
