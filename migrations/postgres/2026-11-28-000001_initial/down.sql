DROP TABLE group_members;
DROP TABLE resources;
DROP TABLE tokens;
DROP TABLE tenants;
