//! The full sync of a small tenant: `GET /api/v2/users` page by page, sorted by `created_at`
//! (a stable order while we page), then the users it did not list confirmed one by one.
//! Paging reaches only the first 1000 users
//! (auth0.com/docs/manage-users/user-search/view-search-results-by-page): a larger tenant, or one
//! that grows past it while we page, is exported instead.

use chrono::{DateTime, Utc};

use super::{SyncError, Syncer, parse_page};
use crate::users::{auth0_api::UsersQuery, auth0_user::Auth0User, store, sync_runs::Progress};

impl Syncer {
    pub(super) async fn full(
        &self,
        run_id: i64,
        started_at: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        let per_page = self.options.per_page;
        let listing = |page| UsersQuery {
            page,
            per_page,
            // A stable order: creation time does not change while we page.
            sort: Some("created_at:1".to_owned()),
            q: None,
        };
        let mut page = self.api.list_users(&listing(0)).await?;
        progress.total = Some(page.total);
        if page.total > self.options.paging_limit {
            return self.full_by_export(run_id, started_at, progress).await;
        }
        // A run that stopped during a bulk load left the search's indexes aside.
        self.ensure_search_indexes(Some(run_id)).await;
        let mut page_no = 0u32;
        loop {
            // The page's length, not what could be stored of it, says whether more follow.
            let received = page.users.len();
            let (users, unusable) = parse_page(std::mem::take(&mut page.users));
            self.write(run_id, &users, unusable, progress).await?;
            progress.pages += 1;
            progress.total = Some(page.total);
            tracing::debug!(
                run = run_id,
                page = page_no,
                users = received,
                total = page.total,
                "full sync page written"
            );
            self.record(run_id, progress).await?;
            if received < per_page as usize {
                break;
            }
            page_no += 1;
            if u64::from(page_no) * u64::from(per_page) >= self.options.paging_limit {
                if page.total <= self.options.paging_limit {
                    break;
                }
                // The tenant grew past what paging reaches while we paged: only an export is whole.
                *progress = Progress::default();
                return self.full_by_export(run_id, started_at, progress).await;
            }
            page = self.api.list_users(&listing(page_no)).await?;
        }
        let listing_consistent = progress.fetched == page.total;
        self.paged_deletions(run_id, started_at, listing_consistent, progress)
            .await?;
        self.after_full(started_at).await
    }

    /// Paging over a tenant that changes underneath can skip a user (a deletion shifts the
    /// offsets), so users missing from a paged listing are confirmed with Auth0 one by one.
    async fn paged_deletions(
        &self,
        run_id: i64,
        started_at: DateTime<Utc>,
        listing_consistent: bool,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        let limit = self.options.confirm_deletions_up_to;
        let candidates = store::deletion_candidates(
            &self.db,
            started_at,
            i64::try_from(limit + 1).unwrap_or(i64::MAX),
        )
        .await?;
        self.count_sql(1);
        if candidates.len() > limit {
            if listing_consistent {
                progress.deleted += store::mark_unseen_deleted(&self.db, started_at).await?;
                self.count_sql(1);
            } else {
                tracing::warn!(
                    "many users missing from a listing that changed while paging; deletions left for the next full sync"
                );
            }
            return Ok(());
        }
        let mut gone = Vec::new();
        for user_id in candidates {
            match self.api.get_user(&user_id).await? {
                None => gone.push(user_id),
                Some(profile) => match Auth0User::parse(profile.get()) {
                    Ok(user) => self.write(run_id, &[user], Vec::new(), progress).await?,
                    Err(unusable) => self.write(run_id, &[], vec![unusable], progress).await?,
                },
            }
        }
        progress.deleted += store::mark_deleted(&self.db, &gone).await?;
        self.count_sql(1);
        Ok(())
    }
}
