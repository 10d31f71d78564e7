-- What a holder presents to re-attach a segment after an agent restart, and
-- what identifies its memfd (device and inode of the file).
ALTER TABLE segments ADD COLUMN token BLOB;
ALTER TABLE segments ADD COLUMN dev INTEGER;
ALTER TABLE segments ADD COLUMN ino INTEGER;
