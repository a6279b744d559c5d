-- Every trigger on Herald's tables (head revision), in the order PostgreSQL fires
-- those of one event: by name. tests/test_sql_files.py holds this file equal to the
-- migrated schema.

CREATE TRIGGER assign_seq BEFORE INSERT ON herald.notifications FOR EACH ROW EXECUTE FUNCTION herald.assign_seq();
CREATE TRIGGER guard_identity BEFORE UPDATE ON herald.notifications FOR EACH ROW EXECUTE FUNCTION herald.guard_identity();
CREATE TRIGGER notify_changed AFTER UPDATE ON herald.notifications REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_changed();
CREATE CONSTRAINT TRIGGER notify_frame AFTER INSERT ON herald.notifications DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (((new.expires_at IS NULL) AND herald.inline_candidate(new.id))) EXECUTE FUNCTION herald.notify_frame();
CREATE TRIGGER notify_inserted AFTER INSERT ON herald.notifications REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_inserted();
CREATE TRIGGER stamp_change BEFORE UPDATE ON herald.notifications FOR EACH ROW WHEN ((((old.read_at IS NULL) <> (new.read_at IS NULL)) OR ((old.archived_at IS NULL) <> (new.archived_at IS NULL)))) EXECUTE FUNCTION herald.stamp_change();
CREATE TRIGGER muted_deleted AFTER DELETE ON herald.muted_categories REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION herald.muted_changed();
CREATE TRIGGER muted_inserted AFTER INSERT ON herald.muted_categories REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION herald.muted_changed();
