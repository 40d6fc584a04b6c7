-- One row per attribute value of every resource, maintained in the same transaction as the
-- document, so that any filter on any attribute the schema publishes runs in the database.
--   path:      lower-case attribute path ("name.familyname", "emails.value",
--              "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:department");
--              each complex element also has a marker row at the attribute's own path,
--              with str_value '' (real string values are compared with "> ''" for pr)
--   ordinal:   element index in a multi-valued attribute, so that a value filter
--              (emails[type eq "work" and value co "x"]) stays on one element
--   str_value: strings, references and binary (case-folded in Rust where caseExact is
--              false) and dateTimes as fixed-width UTC text; compared bytewise on both
--              databases
-- The primary key doubles as the per-resource index (SQLite stores the table in it). The
-- value indexes are partial: a row is in exactly one of them, which keeps writes cheap.
CREATE TABLE resource_values (
    resource_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    path TEXT NOT NULL,
    ordinal BIGINT NOT NULL,
    str_value TEXT COLLATE "C" NULL,
    num_value DOUBLE PRECISION NULL,
    bool_value BOOLEAN NULL,
    PRIMARY KEY (resource_id, path, ordinal)
);
CREATE INDEX resource_values_str ON resource_values (tenant_id, resource_type, path, str_value) WHERE str_value IS NOT NULL;
CREATE INDEX resource_values_num ON resource_values (tenant_id, resource_type, path, num_value) WHERE num_value IS NOT NULL;
CREATE INDEX resource_values_bool ON resource_values (tenant_id, resource_type, path, bool_value) WHERE bool_value IS NOT NULL;
