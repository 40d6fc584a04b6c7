DROP TRIGGER resources_counted_added ON resources;
DROP TRIGGER resources_counted_removed ON resources;
DROP FUNCTION resources_count_added();
DROP FUNCTION resources_count_removed();

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
