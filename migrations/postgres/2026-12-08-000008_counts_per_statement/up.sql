-- The resource counts are kept once per statement instead of once per row: a create of
-- several resources in one statement (concurrent creates are written together) adds each
-- type's count once, from the statement's transition table, where the row trigger ran a
-- PL/pgSQL call and an upsert for every resource and, with the slot chosen by a hash of each
-- id, locked most of the 16 slots, so that a second batch waited on them for the first one's
-- commit. The slot is now chosen by the transaction (its id modulo 64): transactions that
-- run at the same time have neighbouring ids, so they rarely share a slot. The count is
-- still the sum of the slots, in the transaction of the insert or delete.
DROP TRIGGER resources_counted ON resources;
DROP FUNCTION resources_count();

CREATE FUNCTION resources_count_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- In key order, so that statements counting several types lock their slots in one order.
    INSERT INTO resource_counts AS c (tenant_id, resource_type, slot, n)
    SELECT tenant_id, resource_type, (txid_current() % 64)::integer, COUNT(*)
    FROM added GROUP BY tenant_id, resource_type ORDER BY tenant_id, resource_type
    ON CONFLICT (tenant_id, resource_type, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION resources_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO resource_counts AS c (tenant_id, resource_type, slot, n)
    SELECT tenant_id, resource_type, (txid_current() % 64)::integer, -COUNT(*)
    FROM removed GROUP BY tenant_id, resource_type ORDER BY tenant_id, resource_type
    ON CONFLICT (tenant_id, resource_type, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER resources_counted_added AFTER INSERT ON resources
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION resources_count_added();

CREATE TRIGGER resources_counted_removed AFTER DELETE ON resources
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION resources_count_removed();
