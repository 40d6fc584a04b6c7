DROP TABLE resource_values;
