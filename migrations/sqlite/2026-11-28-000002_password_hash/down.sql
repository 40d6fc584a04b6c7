ALTER TABLE resources DROP COLUMN password_hash;
