-- The argon2id hash (PHC string) of a User's write-only password; never returned.
ALTER TABLE resources ADD COLUMN password_hash TEXT NULL;
