//! The published tenant policy, and the per-tenant overview behind `runner tenants`.

use jobrunner_client::Result;
use serde::Serialize;

use super::Driver;
use crate::tenants::{TenantPolicy, Tenants};

/// One tenant as `runner tenants` shows it: its jobs by state and its policy.
#[derive(Debug, Clone, Serialize)]
pub struct TenantOverview {
    /// The tenant.
    pub tenant: String,
    /// Jobs waiting, ripe or scheduled.
    pub available: i64,
    /// Jobs running now, on any runner.
    pub running: i64,
    /// Retained completed jobs.
    pub completed: i64,
    /// Jobs that failed for good.
    pub failed: i64,
    /// Cancelled jobs.
    pub cancelled: i64,
    /// The policy that applies to it (its own, or the defaults).
    pub policy: TenantPolicy,
}

const POLICY_COLUMNS: &str = "tenant, max_running, rate, burst, weight, job_types, memory, \
                              cpu_budget_ms, timeout_ms, http, config";

impl Driver {
    /// Replaces the published tenant policy with `tenants`, as runner `by`. Returns the
    /// policy it replaced.
    pub async fn publish_tenants(&self, tenants: &Tenants, by: &str) -> Result<Tenants> {
        let mut tx = self.queue.db().begin().await?;
        // One publisher at a time, so two runners starting together leave one whole policy.
        sqlx::query("LOCK TABLE jobrunner.tenant_policies IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let old: Vec<TenantPolicy> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM jobrunner.tenant_policies"
        )))
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM jobrunner.tenant_policies")
            .execute(&mut *tx)
            .await?;
        let now = self.queue.now();
        for p in tenants.rows() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO jobrunner.tenant_policies ({POLICY_COLUMNS}, published_by, \
                 published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            )))
            .bind(&p.tenant)
            .bind(p.max_running)
            .bind(p.rate)
            .bind(p.burst)
            .bind(p.weight)
            .bind(&p.job_types)
            .bind(p.memory)
            .bind(p.cpu_budget_ms)
            .bind(p.timeout_ms)
            .bind(&p.http)
            .bind(&p.config)
            .bind(by)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Tenants::from_rows(old))
    }

    /// The published tenant policy (no limits if none is published).
    pub async fn tenants(&self) -> Result<Tenants> {
        let rows: Vec<TenantPolicy> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {POLICY_COLUMNS} FROM jobrunner.tenant_policies"
        )))
        .fetch_all(self.queue.db())
        .await?;
        Ok(Tenants::from_rows(rows))
    }

    /// Every tenant that has jobs or a policy of its own, by name.
    pub async fn tenant_overview(&self) -> Result<Vec<TenantOverview>> {
        let tenants = self.tenants().await?;
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT tenant,
                    count(*) FILTER (WHERE state = 'available'),
                    count(*) FILTER (WHERE state = 'running'),
                    count(*) FILTER (WHERE state = 'completed'),
                    count(*) FILTER (WHERE state = 'failed'),
                    count(*) FILTER (WHERE state = 'cancelled')
               FROM (SELECT tenant, state FROM jobrunner.jobs
                     UNION ALL
                     SELECT tenant, NULL FROM jobrunner.tenant_policies WHERE tenant <> '*')
                    AS t
              GROUP BY tenant
              ORDER BY tenant",
        )
        .fetch_all(self.queue.db())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(tenant, available, running, completed, failed, cancelled)| TenantOverview {
                    policy: tenants.policy(&tenant).clone(),
                    tenant,
                    available,
                    running,
                    completed,
                    failed,
                    cancelled,
                },
            )
            .collect())
    }
}
