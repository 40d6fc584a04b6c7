-- Facts about the stored data as a whole, by name. `index_fingerprint`: the
-- `scim_core::index::fingerprint` of the schemas the attribute-value index was built with;
-- a server whose schemas give another one rebuilds the index before it serves.
CREATE TABLE store_state (
    name TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    value TEXT COLLATE "C" NOT NULL
);
