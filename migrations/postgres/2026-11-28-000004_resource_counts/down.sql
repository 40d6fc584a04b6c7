DROP TRIGGER resources_counted ON resources;
DROP FUNCTION resources_count();
DROP TABLE resource_counts;
