-- Outgoing HTTP: a tenant's policy may narrow its plugins' allowed hosts and lower their
-- request limits (the `[http]` table of `[tenants.<name>]`, as JSON; `{}`: no narrowing).
ALTER TABLE jobrunner.tenant_policies ADD COLUMN http jsonb NOT NULL DEFAULT '{}';
