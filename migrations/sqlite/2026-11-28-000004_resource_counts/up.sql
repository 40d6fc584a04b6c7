-- How many resources each tenant holds per type, kept by triggers in the same transaction as
-- the insert or delete, so that an unfiltered list answers totalResults without counting rows.
CREATE TABLE resource_counts (
    tenant_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    slot INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, slot)
) WITHOUT ROWID;

INSERT INTO resource_counts (tenant_id, resource_type, slot, n)
SELECT tenant_id, resource_type, 0, COUNT(*) FROM resources GROUP BY tenant_id, resource_type;

CREATE TRIGGER resources_counted_in AFTER INSERT ON resources BEGIN
    INSERT INTO resource_counts (tenant_id, resource_type, slot, n)
    VALUES (NEW.tenant_id, NEW.resource_type, 0, 1)
    ON CONFLICT (tenant_id, resource_type, slot) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER resources_counted_out AFTER DELETE ON resources BEGIN
    UPDATE resource_counts SET n = n - 1
    WHERE tenant_id = OLD.tenant_id AND resource_type = OLD.resource_type AND slot = 0;
END;
