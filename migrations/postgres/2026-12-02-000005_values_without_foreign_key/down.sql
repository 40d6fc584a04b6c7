DELETE FROM resource_values v WHERE NOT EXISTS (SELECT 1 FROM resources r WHERE r.id = v.resource_id);
ALTER TABLE resource_values ADD CONSTRAINT resource_values_resource_id_fkey
    FOREIGN KEY (resource_id) REFERENCES resources (id) ON DELETE CASCADE;
