-- 0005_orders: orders and their history, written only by sb-order-processor, and the tables its
-- business rules read: the sku catalogue, each organization's customers and quantity limits.
-- docs/orders.md describes the state machine, the rules and the delivery semantics.

-- What can be ordered. Rows without an organization are the global catalogue; an organization
-- may add its own skus (org_id set), seen by its orders only.
CREATE TABLE skus (
    org_id       uuid REFERENCES organizations (id) ON DELETE CASCADE,
    sku          text NOT NULL CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    sensor_type  text CHECK (sensor_type IS NULL OR sensor_type ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX skus_global_idx ON skus (sku) WHERE org_id IS NULL;
CREATE UNIQUE INDEX skus_org_idx ON skus (org_id, sku) WHERE org_id IS NOT NULL;

INSERT INTO skus (sku, name, sensor_type) VALUES
    ('SB-TEMP-100', 'Temperature sensor', 'temperature'),
    ('SB-HUM-200', 'Humidity sensor', 'humidity'),
    ('SB-PRES-300', 'Pressure sensor', 'pressure'),
    ('SB-CO2-400', 'CO2 sensor', 'co2'),
    ('SB-GW-10', 'Sensor gateway (LTE)', NULL);

-- The customers an organization ships to (`sbctl customers create`). An order for a customer
-- not listed here is rejected. `route` is the customer's fulfilment route; NULL takes the
-- processor's default_route.
CREATE TABLE customers (
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id          text NOT NULL CHECK (length(id) BETWEEN 1 AND 64 AND id !~ '[[:cntrl:]]'),
    name        text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    route       text CHECK (route IS NULL OR route ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id)
);

-- Quantity limits (`sbctl order-rules set`): an order above its limit waits in
-- pending_approval. The sku's own row wins over the organization's '*' row; no row, no limit.
CREATE TABLE order_rules (
    org_id        uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    sku           text NOT NULL CHECK (sku = '*' OR sku ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    max_quantity  integer NOT NULL CHECK (max_quantity > 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, sku)
);

-- One row per order, created by its create command whether the rules accept it or not (a
-- rejected order keeps its reason, so GET /orders/{id} can tell why). created_at is the
-- command's requested_at; version counts the status changes (1 after creation).
CREATE TABLE orders (
    id             uuid PRIMARY KEY,
    org_id         uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id     uuid REFERENCES projects (id) ON DELETE SET NULL,
    customer_id    text NOT NULL,
    sku            text NOT NULL,
    quantity       bigint NOT NULL,
    shipping       jsonb NOT NULL CHECK (jsonb_typeof(shipping) = 'object'),
    notes          text,
    status         text NOT NULL CHECK (status IN ('pending', 'pending_approval', 'accepted',
                   'rejected', 'in_production', 'shipped', 'delivered', 'cancelled')),
    route          text,
    reject_reason  text,
    command_id     uuid NOT NULL,
    request_id     text,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    version        integer NOT NULL DEFAULT 1 CHECK (version >= 1)
);
-- GET /orders: newest first with keyset pagination on (created_at, id), optionally filtered by
-- status or project.
CREATE INDEX orders_org_created_idx ON orders (org_id, created_at DESC, id DESC);
CREATE INDEX orders_org_status_created_idx ON orders (org_id, status, created_at DESC, id DESC);
CREATE INDEX orders_org_project_created_idx
    ON orders (org_id, project_id, created_at DESC, id DESC);

-- Every change of an order, and every refused transition, in order (seq from 1 per order). The
-- processor publishes exactly these rows to orders.events.v1; event_id is the name-based UUID
-- of seq in the command_id namespace (proto/order_event.v1.json), so a re-publication after a
-- crash carries the same id.
CREATE TABLE order_events (
    org_id       uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    order_id     uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    seq          integer NOT NULL CHECK (seq >= 1),
    event_id     uuid NOT NULL UNIQUE,
    command_id   uuid NOT NULL,
    type         text NOT NULL CHECK (type IN ('created', 'status_changed', 'rejected',
                 'transition_refused')),
    from_status  text CHECK (from_status IN ('pending', 'pending_approval', 'accepted',
                 'rejected', 'in_production', 'shipped', 'delivered', 'cancelled')),
    to_status    text NOT NULL CHECK (to_status IN ('pending', 'pending_approval', 'accepted',
                 'rejected', 'in_production', 'shipped', 'delivered', 'cancelled')),
    reason       text,
    route        text,
    request_id   text,
    actor        jsonb,
    at           timestamptz NOT NULL,
    PRIMARY KEY (order_id, seq)
);
CREATE INDEX order_events_command_idx ON order_events (command_id);

-- The commands applied, by command id: the processor's guard against applying a redelivered
-- command twice (it re-publishes the command's recorded events instead). Written in the same
-- transaction as the change itself.
CREATE TABLE order_commands (
    command_id       uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    order_id         uuid NOT NULL,
    type             text NOT NULL CHECK (type IN ('create', 'transition')),
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    processed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_commands_order_idx ON order_commands (order_id);

-- One row per organization with orders: each batch that touches the organization locks its row
-- (in id order, so concurrent processors cannot deadlock) and bumps the generation. The Redis
-- counts sb:orders:<org_id> are written with the generation they were computed at, and an older
-- generation never overwrites a newer one.
CREATE TABLE order_org_generation (
    org_id      uuid PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    generation  bigint NOT NULL CHECK (generation >= 1)
);
