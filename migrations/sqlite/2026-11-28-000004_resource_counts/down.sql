DROP TRIGGER resources_counted_out;
DROP TRIGGER resources_counted_in;
DROP TABLE resource_counts;
