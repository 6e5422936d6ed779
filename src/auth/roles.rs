//! Who is an admin: the roles claim (set by an Auth0 post-login Action) or the email allowlist.

use super::current_user::SessionUser;
use crate::config::AdminSettings;

pub fn is_admin(user: &SessionUser, admin: &AdminSettings) -> bool {
    user.roles.iter().any(|r| r == "admin")
        // An unverified address proves nothing about who holds it.
        || user.email_verified == Some(true) && user
            .email
            .as_deref()
            .is_some_and(|email| admin.emails.iter().any(|a| a.eq_ignore_ascii_case(email)))
}
