CREATE TABLE resource_values_old (
    resource_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    path TEXT NOT NULL,
    ordinal BIGINT NOT NULL,
    str_value TEXT NULL,
    num_value DOUBLE PRECISION NULL,
    bool_value BOOLEAN NULL,
    PRIMARY KEY (resource_id, path, ordinal)
) WITHOUT ROWID;
INSERT INTO resource_values_old SELECT v.resource_id, v.tenant_id, v.resource_type, v.path, v.ordinal, v.str_value, v.num_value, v.bool_value
    FROM resource_values v WHERE EXISTS (SELECT 1 FROM resources r WHERE r.id = v.resource_id);
DROP TABLE resource_values;
ALTER TABLE resource_values_old RENAME TO resource_values;
CREATE INDEX resource_values_str ON resource_values (tenant_id, resource_type, path, str_value) WHERE str_value IS NOT NULL;
CREATE INDEX resource_values_num ON resource_values (tenant_id, resource_type, path, num_value) WHERE num_value IS NOT NULL;
CREATE INDEX resource_values_bool ON resource_values (tenant_id, resource_type, path, bool_value) WHERE bool_value IS NOT NULL;
