-- The attribute-value index is derived data, written and deleted by the store in the same
-- transaction as its resource; without the foreign key, an index row costs no lookup of its
-- resource on insert. SQLite cannot drop a constraint, so the table is rebuilt.
CREATE TABLE resource_values_new (
    resource_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    path TEXT NOT NULL,
    ordinal BIGINT NOT NULL,
    str_value TEXT NULL,
    num_value DOUBLE PRECISION NULL,
    bool_value BOOLEAN NULL,
    PRIMARY KEY (resource_id, path, ordinal)
) WITHOUT ROWID;
INSERT INTO resource_values_new SELECT resource_id, tenant_id, resource_type, path, ordinal, str_value, num_value, bool_value FROM resource_values;
DROP TABLE resource_values;
ALTER TABLE resource_values_new RENAME TO resource_values;
CREATE INDEX resource_values_str ON resource_values (tenant_id, resource_type, path, str_value) WHERE str_value IS NOT NULL;
CREATE INDEX resource_values_num ON resource_values (tenant_id, resource_type, path, num_value) WHERE num_value IS NOT NULL;
CREATE INDEX resource_values_bool ON resource_values (tenant_id, resource_type, path, bool_value) WHERE bool_value IS NOT NULL;
