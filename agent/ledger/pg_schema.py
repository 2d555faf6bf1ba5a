"""The cluster ledger's tables in PostgreSQL: every node's sealed records and signed tree
heads, as the nodes' own SQLite ledgers hold them, and the totals kept up to date as
records arrive.

A node is known by its key (``node_key``: the SHA-256 of its Ed25519 public key, in
hex), not by its name: a node whose disk was replaced starts a new key and a new
ledger. Records are keyed by (node, sequence number), so shipping a record twice changes
nothing, and a record that differs from the one already held at its place is a fork the
witness flags. FLOP and energy are NUMERIC: a cluster's total exceeds 64 bits.

Every statement here is idempotent (``IF NOT EXISTS``). A writer that finds one of
:data:`RELATIONS` missing runs :data:`SCHEMA` (which needs the right to create tables);
one that finds them all runs no DDL, so the least-privileged roles of
``configs/postgresql/roles.sql`` can write.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS fl_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO fl_meta (key, value) VALUES ('schema_version', '1') ON CONFLICT DO NOTHING;

-- One row per node key. records: how many of its records (seq 0..records-1, no hole)
-- the store holds; frontier: the Merkle frontier over their leaf hashes (JSON list of
-- [height, hex]); head_*: the latest signed tree head accepted; flagged: why the
-- witness stopped accepting this node (NULL while it is sound).
CREATE TABLE IF NOT EXISTS fl_nodes (
    node_key TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    origin TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    records BIGINT NOT NULL DEFAULT 0,
    frontier TEXT NOT NULL DEFAULT '[]',
    head_size BIGINT NOT NULL DEFAULT 0,
    head_root BYTEA,
    head_timestamp_ns BIGINT,
    head_signature BYTEA,
    flagged TEXT,
    first_seen_ns BIGINT NOT NULL,
    last_seen_ns BIGINT NOT NULL
);

-- A witness flag, once set, stays (the nodes' role may update their rows, to count
-- records and keep the latest head, but never clear a flag).
CREATE OR REPLACE FUNCTION fl_flag_stays() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.flagged IS NOT NULL AND NEW.flagged IS DISTINCT FROM OLD.flagged THEN
        RAISE EXCEPTION 'node key % is flagged by the witness (%); the flag stays',
            OLD.node_key, OLD.flagged USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER fl_nodes_flag_stays BEFORE UPDATE ON fl_nodes
    FOR EACH ROW EXECUTE FUNCTION fl_flag_stays();

-- The records, byte for byte as the node signed them, with the columns queries need.
CREATE TABLE IF NOT EXISTS fl_records (
    node_key TEXT NOT NULL REFERENCES fl_nodes (node_key),
    seq BIGINT NOT NULL,
    body BYTEA NOT NULL,
    leaf_hash BYTEA NOT NULL,
    kind TEXT NOT NULL,
    run TEXT NOT NULL,
    model TEXT NOT NULL,
    category TEXT NOT NULL,
    gpu_uuid TEXT NOT NULL,
    start_ns BIGINT NOT NULL,
    end_ns BIGINT NOT NULL,
    flop_low NUMERIC NOT NULL,
    flop_central NUMERIC NOT NULL,
    flop_high NUMERIC NOT NULL,
    energy_mj NUMERIC NOT NULL,
    PRIMARY KEY (node_key, seq)
);
CREATE INDEX IF NOT EXISTS fl_records_run ON fl_records (run);
CREATE INDEX IF NOT EXISTS fl_records_model ON fl_records (model);
-- The cluster service's evaluation reads the records of the last rate window.
CREATE INDEX IF NOT EXISTS fl_records_end ON fl_records (end_ns);

-- Every signed tree head each node published (the chain a verifier checks).
CREATE TABLE IF NOT EXISTS fl_heads (
    node_key TEXT NOT NULL REFERENCES fl_nodes (node_key),
    size BIGINT NOT NULL,
    root BYTEA NOT NULL,
    timestamp_ns BIGINT NOT NULL,
    signature BYTEA NOT NULL,
    PRIMARY KEY (node_key, size)
);

-- The runs table of each node (declared metadata: model, category, lineage, plan).
CREATE TABLE IF NOT EXISTS fl_runs (
    node_key TEXT NOT NULL REFERENCES fl_nodes (node_key),
    run TEXT NOT NULL,
    model TEXT NOT NULL,
    category TEXT NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (node_key, run)
);

-- Compute totals per (run, node), added to in the transaction that inserts the records:
-- a run's cluster total is a sum over a few rows, whatever the number of records.
CREATE TABLE IF NOT EXISTS fl_run_totals (
    run TEXT NOT NULL,
    node_key TEXT NOT NULL REFERENCES fl_nodes (node_key),
    model TEXT NOT NULL,
    category TEXT NOT NULL,
    flop_low NUMERIC NOT NULL,
    flop_central NUMERIC NOT NULL,
    flop_high NUMERIC NOT NULL,
    energy_mj NUMERIC NOT NULL,
    samples NUMERIC NOT NULL,
    covered_ns NUMERIC NOT NULL,
    gap_ns NUMERIC NOT NULL,
    records BIGINT NOT NULL,
    first_ns BIGINT NOT NULL,
    last_ns BIGINT NOT NULL,
    PRIMARY KEY (run, node_key)
);

-- What the witness refused, and why: a head that went backwards, a fork, a key that
-- changed. Never deleted.
CREATE TABLE IF NOT EXISTS fl_witness_events (
    id BIGSERIAL PRIMARY KEY,
    node_key TEXT NOT NULL,
    node TEXT NOT NULL,
    at_ns BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);

-- The cluster service's threshold milestones (as agent.compliance.milestones keeps them
-- in a node's SQLite file): when a threshold was met or first known to be met. Written
-- once per key (INSERT ... ON CONFLICT DO NOTHING), never changed: a new leader counts
-- every deadline from the same day.
CREATE TABLE IF NOT EXISTS fl_milestones (
    key TEXT PRIMARY KEY,
    at_ns BIGINT NOT NULL
);

-- The cluster service's notification outbox (as agent.notify.outbox keeps it in a
-- node's SQLite file): one row per idempotency key, enqueued once whichever replica
-- leads; payload is the notification's canonical JSON, the bytes every channel sends.
CREATE TABLE IF NOT EXISTS fl_notifications (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    enqueued_ns BIGINT NOT NULL,
    resolved_ns BIGINT
);

-- Each notification's delivery state per channel: pending (due at next_attempt_ns),
-- active (delivered; re-sent at next_attempt_ns until resolved), done or dead.
CREATE TABLE IF NOT EXISTS fl_deliveries (
    key TEXT NOT NULL REFERENCES fl_notifications (key),
    channel TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    streak BIGINT NOT NULL DEFAULT 0,
    next_attempt_ns BIGINT NOT NULL,
    first_delivered_ns BIGINT,
    last_delivered_ns BIGINT,
    last_attempt_ns BIGINT,
    last_error TEXT,
    active_until_ns BIGINT,
    PRIMARY KEY (key, channel)
);
CREATE INDEX IF NOT EXISTS fl_deliveries_due ON fl_deliveries (channel, state, next_attempt_ns);
"""

# Every table and index SCHEMA creates, in its order.
RELATIONS = tuple(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA))
# Its triggers (a store made before one was added lacks it).
TRIGGERS = tuple(re.findall(r"CREATE OR REPLACE TRIGGER (\w+)", SCHEMA))

# The tables, for tests and for `verify` to say which one is missing.
TABLES = ("fl_meta", "fl_nodes", "fl_records", "fl_heads", "fl_runs", "fl_run_totals",
          "fl_witness_events")

# The cluster service's own tables (milestones and notifications), not the ledger's.
SERVICE_TABLES = ("fl_milestones", "fl_notifications", "fl_deliveries")
