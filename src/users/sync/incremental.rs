//! The incremental sync: a keyset walk over `q=updated_at:[W TO *]` sorted `updated_at:1`.
//! After each page the lower bound moves to the newest `updated_at` seen (inclusive,
//! de-duplicated by id), so the 1000-result cap of search never applies to more than one
//! timestamp, and users sharing a timestamp across a page boundary are neither lost nor counted
//! twice. The watermark is saved as pages arrive; the next run starts a little before it because
//! search is eventually consistent (auth0.com/docs/manage-users/user-search/user-search-best-practices).

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{SyncError, Syncer, parse_page};
use crate::users::{
    auth0_api::UsersQuery,
    auth0_user::{Auth0User, Unusable},
    sync_runs::Progress,
};

impl Syncer {
    /// Returns `false` when more users share one `updated_at` than search can return: only a full
    /// sync can get past that.
    pub(super) async fn incremental(
        &self,
        run_id: i64,
        watermark: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<bool, SyncError> {
        let overlap = chrono::Duration::from_std(self.options.search_overlap).unwrap_or_default();
        let mut from = watermark - overlap;
        let mut page_no = 0u32;
        let mut seen: HashSet<String> = HashSet::new();
        let per_page = self.options.per_page;
        loop {
            let page = self
                .api
                .list_users(&UsersQuery {
                    page: page_no,
                    per_page,
                    sort: Some("updated_at:1".to_owned()),
                    q: Some(format!(
                        "updated_at:[{} TO *]",
                        from.to_rfc3339_opts(SecondsFormat::Millis, true)
                    )),
                })
                .await?;
            if progress.pages == 0 {
                progress.total = Some(page.total);
            }
            let received = page.users.len();
            let (users, unusable) = parse_page(page.users);
            let users: Vec<Auth0User> = users
                .into_iter()
                .filter(|u| seen.insert(u.user_id.clone()))
                .collect();
            let unusable: Vec<Unusable> = unusable
                .into_iter()
                .filter(|u| u.user_id.as_ref().is_none_or(|id| seen.insert(id.clone())))
                .collect();
            let newest = users.iter().filter_map(|u| u.updated_at).max();
            self.write(run_id, &users, unusable, progress).await?;
            progress.pages += 1;
            tracing::debug!(
                run = run_id,
                page = page_no,
                from = %from,
                received,
                new = users.len(),
                "incremental sync page written"
            );
            self.record(run_id, progress).await?;
            if let Some(newest) = newest {
                self.advance_watermark(newest).await?;
            }
            if received < per_page as usize {
                return Ok(true);
            }
            match newest {
                // Keyset step: restart the search at the newest timestamp seen (inclusive).
                Some(newest) if newest > from => {
                    from = newest;
                    page_no = 0;
                }
                // The whole page shared `from` (or was already seen): page deeper at this bound.
                _ => {
                    page_no += 1;
                    if u64::from(page_no + 1) * u64::from(per_page) > self.options.paging_limit {
                        tracing::warn!(at = %from, "more users share one updated_at than search returns; running a full sync");
                        return Ok(false);
                    }
                }
            }
        }
    }
}
