-- Definitions that no longer exist. Each is dropped here, applied last in the transaction that
-- replaces its callers, so that nothing running against the database ever finds it missing.
-- (A fresh database never had them: IF EXISTS.)

-- The tenant policy check of jobrunner.enqueue_many (until 2026-12), now inside it.
DROP FUNCTION IF EXISTS jobrunner.enqueue_many_permitted(text[], jsonb[], timestamptz[], text[],
                                                         integer[], integer[], text[],
                                                         boolean[], timestamptz);
