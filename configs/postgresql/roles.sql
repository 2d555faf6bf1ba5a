-- Least-privilege roles for the flopledger cluster store.
--
-- Run once, as the owner of the database, after the schema exists
-- (`flopledger cluster --config cluster.toml --create-schema`, connecting as that owner):
--
--     psql "postgresql://owner@db.example:5432/flopledger" -f roles.sql
--
-- It creates three group roles (NOLOGIN) and grants each what its programs do, no more;
-- give each login role one of them:
--
--     CREATE ROLE node_0017 LOGIN PASSWORD '...' IN ROLE flopledger_node;
--     CREATE ROLE cluster_service LOGIN PASSWORD '...' IN ROLE flopledger_service;
--     CREATE ROLE auditor LOGIN PASSWORD '...' IN ROLE flopledger_reader;
--
-- flopledger_node     agents shipping their ledgers ([cluster] url in the agent config):
--                     add records, heads, witness events; keep the nodes' rows, the runs'
--                     metadata and the per-(run, node) totals. Never deletes, never
--                     changes a record or a head once stored.
-- flopledger_service  `flopledger cluster`: reads everything; writes milestones (never
--                     changed once written), notifications and their deliveries.
-- flopledger_reader   auditors and the commands that read (`runs`, `show`, `models`,
--                     `status`, `report`, `export`, `verify`, `gate` with
--                     --ledger postgresql://...): reads only.
--
-- None of them may create, alter or drop a table: a schema that a newer flopledger
-- extends is created by the owner (--create-schema again); until then the others stop
-- with a line that says so.
-- Running this file again changes nothing.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'flopledger_node') THEN
        CREATE ROLE flopledger_node NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'flopledger_service') THEN
        CREATE ROLE flopledger_service NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'flopledger_reader') THEN
        CREATE ROLE flopledger_reader NOLOGIN;
    END IF;
    -- The replicator stages each batch in a temporary table of its session.
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO flopledger_node',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO flopledger_service, flopledger_reader',
                   current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO flopledger_node, flopledger_service, flopledger_reader;

GRANT SELECT ON fl_meta, fl_nodes, fl_records, fl_heads, fl_runs, fl_run_totals,
    fl_witness_events, fl_milestones, fl_notifications, fl_deliveries
    TO flopledger_node, flopledger_service, flopledger_reader;

GRANT INSERT ON fl_records, fl_heads, fl_witness_events TO flopledger_node;
GRANT INSERT, UPDATE ON fl_nodes, fl_runs, fl_run_totals TO flopledger_node;
GRANT USAGE ON SEQUENCE fl_witness_events_id_seq TO flopledger_node;

GRANT INSERT ON fl_milestones TO flopledger_service;
GRANT INSERT, UPDATE ON fl_notifications, fl_deliveries TO flopledger_service;
