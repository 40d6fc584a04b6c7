-- Text compares bytewise everywhere, as on SQLite (BINARY), whatever collation the database
-- was created with. Ids, userNames, timestamps and paths are keys, not prose: under a
-- linguistic collation (en_US.UTF-8, or even C.UTF-8) every index comparison went through the
-- locale, and `userName gt "x"`, `sortBy=userName` and cursor order could differ from SQLite.
-- Only the collation changes, so no table is rewritten; the indexes on these columns are
-- rebuilt. `resource_values.str_value` is "C" since it was created.
ALTER TABLE tenants
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C",
    ALTER COLUMN created TYPE TEXT COLLATE "C";
ALTER TABLE tokens
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C",
    ALTER COLUMN token_hash TYPE TEXT COLLATE "C",
    ALTER COLUMN created TYPE TEXT COLLATE "C",
    ALTER COLUMN revoked TYPE TEXT COLLATE "C";
ALTER TABLE resources
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN created TYPE TEXT COLLATE "C",
    ALTER COLUMN last_modified TYPE TEXT COLLATE "C",
    ALTER COLUMN external_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_name_ci TYPE TEXT COLLATE "C",
    ALTER COLUMN display_name_ci TYPE TEXT COLLATE "C",
    ALTER COLUMN display TYPE TEXT COLLATE "C",
    ALTER COLUMN data TYPE TEXT COLLATE "C",
    ALTER COLUMN password_hash TYPE TEXT COLLATE "C";
ALTER TABLE group_members
    ALTER COLUMN group_id TYPE TEXT COLLATE "C",
    ALTER COLUMN member_id TYPE TEXT COLLATE "C";
ALTER TABLE resource_values
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
    ALTER COLUMN path TYPE TEXT COLLATE "C";
ALTER TABLE resource_counts
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "C";
