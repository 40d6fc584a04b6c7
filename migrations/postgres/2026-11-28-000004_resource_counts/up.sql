-- How many resources each tenant holds per type, kept by a trigger in the same transaction as
-- the insert or delete, so that an unfiltered list answers totalResults without counting rows.
-- Each type's count is spread over 16 slots (by a hash of the id), so that concurrent creates
-- from several server instances do not all wait on one row.
CREATE TABLE resource_counts (
    tenant_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    slot INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, slot)
);

INSERT INTO resource_counts (tenant_id, resource_type, slot, n)
SELECT tenant_id, resource_type, 0, COUNT(*) FROM resources GROUP BY tenant_id, resource_type;

CREATE FUNCTION resources_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO resource_counts AS c (tenant_id, resource_type, slot, n)
        VALUES (NEW.tenant_id, NEW.resource_type, hashtext(NEW.id) & 15, 1)
        ON CONFLICT (tenant_id, resource_type, slot) DO UPDATE SET n = c.n + 1;
    ELSE
        INSERT INTO resource_counts AS c (tenant_id, resource_type, slot, n)
        VALUES (OLD.tenant_id, OLD.resource_type, hashtext(OLD.id) & 15, -1)
        ON CONFLICT (tenant_id, resource_type, slot) DO UPDATE SET n = c.n - 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER resources_counted AFTER INSERT OR DELETE ON resources
    FOR EACH ROW EXECUTE FUNCTION resources_count();
