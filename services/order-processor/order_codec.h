/* order_codec.h: the wire formats of the order processor, without I/O.
 *
 * Commands come from orders.v1 (proto/order_command.v1.json), events go to orders.events.v1
 * (proto/order_event.v1.json); proto/README.md describes both records.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "order_machine.h"

#define ORDER_TEXT_MAX       64   /* customer_id and sku, in characters */
#define ORDER_NOTES_MAX      1000 /* notes and reasons, in characters */
#define ORDER_REQUEST_ID_MAX 128

/* Event types (orders.events.v1 "type"). */
#define ORDER_EV_CREATED            "created"
#define ORDER_EV_STATUS_CHANGED     "status_changed"
#define ORDER_EV_REJECTED           "rejected"
#define ORDER_EV_TRANSITION_REFUSED "transition_refused"

typedef enum order_command_type {
    ORDER_CMD_CREATE,
    ORDER_CMD_TRANSITION,
} order_command_type_t;

/** A decoded orders.v1 command. Strings and JSON values are borrowed from @doc. */
typedef struct order_command {
    order_command_type_t type;
    char command_id[37]; /* lower-case UUIDs */
    char order_id[37];
    char org_id[37];
    char project_id[37]; /* "" when null or absent */
    int64_t requested_us;
    char request_id[ORDER_REQUEST_ID_MAX + 1]; /* "" when absent or unusable */
    json_t *actor;                             /* an object, or NULL */
    /* create */
    const char *customer_id;
    const char *sku;
    int64_t quantity;  /* any integer: the rules, not the decoder, reject one out of range */
    json_t *shipping;  /* an object */
    const char *notes; /* or NULL */
    /* transition */
    order_status_t to;
    const char *reason; /* or NULL */
    json_t *doc;        /* owned */
} order_command_t;

/**
 * Decodes a command value (with CONTRACT_JSON_DECODE_FLAGS). Checks what the processor relies on:
 * the type, UUIDs, requested_at, and for a create the order's customer_id and sku (1-64
 * characters, no control character), an integral quantity, a shipping object with its required
 * fields, notes of at most 1000 characters; for a transition a known status in `to`. Whether the
 * order obeys the business rules is not checked here. Returns 0 (release with
 * order_command_clear()), -EINVAL with a one-line reason for the dead-letter header in @reason,
 * or -ENOMEM.
 */
int order_command_decode(const void *value, size_t len, order_command_t *ret, char *reason,
                         size_t reason_size);

/** Releases the decoded document. Accepts a zeroed or cleared command. */
void order_command_clear(order_command_t *cmd);

/** An orders.events.v1 event. */
typedef struct order_event {
    char event_id[37];
    char order_id[37];
    char org_id[37];
    char command_id[37];
    int64_t seq;
    const char *type;                          /* one of the ORDER_EV_* strings */
    const char *from;                          /* a status name (order_status_name()), or NULL */
    const char *to;                            /* a status name */
    char *reason;                              /* owned, or NULL */
    char *route;                               /* owned, or NULL */
    char at[40];                               /* RFC 3339, UTC, microseconds */
    char request_id[ORDER_REQUEST_ID_MAX + 1]; /* for the sb-request-id header; "" when none */
} order_event_t;

/**
 * The deterministic event id of the @seq-th event of an order, written by command @command_id:
 * the name-based UUID (version 5, RFC 4122) of the decimal @seq in the namespace @command_id.
 * Writes 36 characters and a NUL to @out. 0, or -EINVAL when @command_id is not a UUID.
 */
int order_event_id(const char *command_id, int64_t seq, char out[37]);

/** Maps an event type name to its ORDER_EV_* string. 0 or -EINVAL. */
int order_event_type_parse(const char *name, const char **ret_type);

/** The event as compact JSON (fields in the schema's order). malloc'd, or NULL on ENOMEM. */
char *order_event_dump(const order_event_t *ev);

/** Frees the event's strings. Accepts a zeroed event. */
void order_event_clear(order_event_t *ev);

/** A growable list of events (the batch's, to publish once committed). Zero-initialise. */
typedef struct order_events {
    order_event_t *v;
    size_t n, cap;
} order_events_t;

/**
 * Appends @ev, taking ownership of its strings (@ev is cleared either way). An event whose
 * event_id is already in the list is not added again: a command redelivered within one batch
 * publishes its events once. 0 or -ENOMEM.
 */
int order_events_push(order_events_t *list, order_event_t *ev);

/** Drops the events from index @n on. */
void order_events_truncate(order_events_t *list, size_t n);

/** Drops every event and frees the list's memory. */
void order_events_free(order_events_t *list);
