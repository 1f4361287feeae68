//! The failure policy: what the requests waiting on a load get when id6 gave no verdict
//! (`OnUnavailable`). Decided here, for the resolver; never stored, so the next miss asks id6
//! again.

use std::sync::Arc;

use crate::config::OnUnavailable;
use crate::user::{Authentication, User};

/// What a load hands the requests that waited on it.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) verdict: Authentication,
    /// The failure policy's stand-in while id6 could not be asked (`anonymous`, `stale`), not
    /// id6's word: an anonymous answer of this kind says nothing about the cookie, so the
    /// layer must not clear it.
    pub(crate) by_policy: bool,
}

/// [`OnUnavailable`], applied.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FailurePolicy(OnUnavailable);

impl FailurePolicy {
    pub(crate) fn new(policy: OnUnavailable) -> Self {
        FailurePolicy(policy)
    }

    /// What the waiters get for `verdict`: a stand-in when id6 was unavailable and the policy
    /// has one (`stale` is the last user known for the token), else the verdict itself.
    pub(crate) fn answer(
        &self,
        verdict: Authentication,
        stale: impl FnOnce() -> Option<Arc<User>>,
    ) -> Answer {
        let stand_in = match (&verdict, self.0) {
            (Authentication::Unavailable(error), OnUnavailable::Anonymous) => {
                tracing::debug!(%error, "id6 unavailable; treating the caller as anonymous");
                Some(Authentication::Anonymous)
            }
            (Authentication::Unavailable(error), OnUnavailable::Stale(_)) => stale().map(|user| {
                tracing::debug!(user_id = user.id, %error, "id6 unavailable; serving the last answer");
                Authentication::Authenticated(user)
            }),
            _ => None,
        };
        Answer {
            by_policy: stand_in.is_some(),
            verdict: stand_in.unwrap_or(verdict),
        }
    }
}
