-- Tenants own everything; a fresh server creates one.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    created TEXT NOT NULL
);

-- Bearer tokens, stored only as SHA-256 hashes.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    revoked TEXT NULL
);

-- SCIM resources. `data` is the resource document (JSON text, canonical attribute names);
-- the other columns are derived from it in the same transaction, for lookups and constraints.
-- Timestamps are fixed-width RFC 3339 UTC text, so text order is time order.
CREATE TABLE resources (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    resource_type TEXT NOT NULL,
    version BIGINT NOT NULL,
    created TEXT NOT NULL,
    last_modified TEXT NOT NULL,
    external_id TEXT NULL,
    user_name_ci TEXT NULL,
    display_name_ci TEXT NULL,
    display TEXT NULL,
    data TEXT NOT NULL
);

-- userName is unique per tenant, case-insensitively (folded in Rust before writing).
-- NULLs (groups) never collide.
CREATE UNIQUE INDEX resources_user_name ON resources (tenant_id, resource_type, user_name_ci);
CREATE INDEX resources_external_id ON resources (tenant_id, resource_type, external_id, created, id);
CREATE INDEX resources_display_name ON resources (tenant_id, resource_type, display_name_ci, created, id);
-- Lookups carry (created, id) so that one index answers both the filter and the stable order.
-- Stable listing order.
CREATE INDEX resources_order ON resources (tenant_id, resource_type, created, id);

-- Group membership: one row per (group, direct member); never stored inside the group's JSON.
CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    member_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, member_id)
);
CREATE INDEX group_members_member ON group_members (member_id, group_id);
