-- Back to the database's default collation.
ALTER TABLE tenants
    ALTER COLUMN id TYPE TEXT COLLATE "default",
    ALTER COLUMN name TYPE TEXT COLLATE "default",
    ALTER COLUMN created TYPE TEXT COLLATE "default";
ALTER TABLE tokens
    ALTER COLUMN id TYPE TEXT COLLATE "default",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "default",
    ALTER COLUMN name TYPE TEXT COLLATE "default",
    ALTER COLUMN token_hash TYPE TEXT COLLATE "default",
    ALTER COLUMN created TYPE TEXT COLLATE "default",
    ALTER COLUMN revoked TYPE TEXT COLLATE "default";
ALTER TABLE resources
    ALTER COLUMN id TYPE TEXT COLLATE "default",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "default",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "default",
    ALTER COLUMN created TYPE TEXT COLLATE "default",
    ALTER COLUMN last_modified TYPE TEXT COLLATE "default",
    ALTER COLUMN external_id TYPE TEXT COLLATE "default",
    ALTER COLUMN user_name_ci TYPE TEXT COLLATE "default",
    ALTER COLUMN display_name_ci TYPE TEXT COLLATE "default",
    ALTER COLUMN display TYPE TEXT COLLATE "default",
    ALTER COLUMN data TYPE TEXT COLLATE "default",
    ALTER COLUMN password_hash TYPE TEXT COLLATE "default";
ALTER TABLE group_members
    ALTER COLUMN group_id TYPE TEXT COLLATE "default",
    ALTER COLUMN member_id TYPE TEXT COLLATE "default";
ALTER TABLE resource_values
    ALTER COLUMN resource_id TYPE TEXT COLLATE "default",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "default",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "default",
    ALTER COLUMN path TYPE TEXT COLLATE "default";
ALTER TABLE resource_counts
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "default",
    ALTER COLUMN resource_type TYPE TEXT COLLATE "default";
