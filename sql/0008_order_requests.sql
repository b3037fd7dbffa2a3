-- 0008_order_requests: the gateway's record of every POST /orders, written before the create
-- command is produced to orders.v1. docs/orders-api.md explains the protocol.
--
-- It serves two purposes:
--  * Idempotency-Key: one row per (organization, key) holds the SHA-256 of the canonical request
--    body, the order id chosen for it and, once Kafka acknowledged the command, the response that
--    was sent. A repeated key with the same body answers that response again; with another body,
--    409. A key lives 24 hours: an older row no longer counts and is replaced (or deleted lazily
--    by later requests of the organization).
--  * "received": GET /orders/{id} answers from here while sb-order-processor has not written the
--    order yet (state 'produced').
--
-- The row is reserved (state 'pending') before producing, so two concurrent requests with one key
-- produce at most once: the second finds the row claimed. A gateway that dies between reserving
-- and producing leaves a pending row whose claim runs out (claimed_until); a retry with the same
-- key then claims it and produces the stored command again, with the same order and command ids,
-- which the processor applies once.
CREATE TABLE order_requests (
    org_id           uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    order_id         uuid PRIMARY KEY,
    project_id       uuid REFERENCES projects (id) ON DELETE SET NULL,
    idempotency_key  text CHECK (idempotency_key ~ '^[\x21-\x7e]{1,255}$'),
    body_sha256      text NOT NULL CHECK (body_sha256 ~ '^[0-9a-f]{64}$'),
    -- The orders.v1 create command exactly as produced (and re-produced by a retry).
    command          text NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'produced')),
    -- A pending row belongs to the request that reserved or claimed it until then.
    claimed_until    timestamptz NOT NULL,
    -- The 202 body sent once Kafka acknowledged the command (replayed for a repeated key).
    response         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    produced_at      timestamptz,
    UNIQUE (org_id, idempotency_key)
);
-- Lazy expiry: each POST /orders deletes a few of its organization's rows older than 24 hours.
CREATE INDEX order_requests_org_created_idx ON order_requests (org_id, created_at);
