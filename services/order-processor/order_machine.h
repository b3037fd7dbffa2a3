/* order_machine.h: the order state machine and the business rules of a new order, as pure
 * functions (no I/O), so that every transition and every rule is tested on its own
 * (tests/services/order-processor) and the daemon only looks facts up and stores verdicts.
 *
 *   pending          -> accepted | pending_approval | rejected | cancelled
 *   pending_approval -> accepted | rejected | cancelled
 *   accepted         -> in_production | cancelled
 *   in_production    -> shipped
 *   shipped          -> delivered
 *   rejected, delivered, cancelled: final
 *
 * docs/orders.md explains the states and rules for users.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum order_status {
    ORDER_PENDING = 0,
    ORDER_PENDING_APPROVAL,
    ORDER_ACCEPTED,
    ORDER_REJECTED,
    ORDER_IN_PRODUCTION,
    ORDER_SHIPPED,
    ORDER_DELIVERED,
    ORDER_CANCELLED,
    ORDER_NSTATUS,
} order_status_t;

/* Limits of an order the processor accepts; beyond them the order is rejected. */
#define ORDER_QUANTITY_MAX 1000000
/* Bytes of a verdict's reason, with the NUL: room for a sku and a customer id of 64 characters
 * of up to 4 UTF-8 bytes each, so that a name is never cut inside a character. */
#define ORDER_REASON_MAX 512

/** The status as stored and published ("pending_approval"); NULL for a value out of range. */
const char *order_status_name(order_status_t status);

/** Parses a status name (exact, lower case). 0 or -EINVAL. */
int order_status_parse(const char *name, order_status_t *ret_status);

/** True for rejected, delivered and cancelled: no transition leaves them. */
bool order_status_final(order_status_t status);

/** True when the machine allows @from -> @to (a status never moves to itself). */
bool order_transition_allowed(order_status_t from, order_status_t to);

/** What the processor looked up about a new order. Strings are borrowed. */
typedef struct order_facts {
    int64_t quantity;
    bool sku_known;            /* in the global catalogue or the organization's own */
    bool customer_known;       /* a customer of the order's organization */
    const char *sku;           /* for the reasons; at most 64 characters */
    const char *customer_id;   /* for the reasons; at most 64 characters */
    const char *route;         /* the customer's fulfilment route, or NULL */
    int64_t max_quantity;      /* the organization's limit for the sku (else '*'), or 0: none */
    const char *default_route; /* used when the customer has no route */
} order_facts_t;

/** The verdict on a new order (it leaves `pending` at once). */
typedef struct order_verdict {
    order_status_t status;         /* accepted, pending_approval or rejected */
    char reason[ORDER_REASON_MAX]; /* why rejected or held for approval; "" when accepted */
    const char *route;             /* borrowed from the facts; NULL when rejected */
} order_verdict_t;

/**
 * Applies the rules in order: quantity 1..ORDER_QUANTITY_MAX, known sku, customer of the
 * organization (the first one broken rejects the order), then the quantity limit (above it the
 * order waits for approval), and routing (the customer's route, else the default).
 */
void order_decide(const order_facts_t *facts, order_verdict_t *ret_verdict);
