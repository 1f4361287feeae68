//! What the layer leaves in a request: one extension.

use crate::id6::Id6;
use crate::rejection::RejectionHook;
use crate::session::Lifeline;
use crate::user::Authentication;

/// What the layer leaves in a request's extensions, all in one value (each extension is a
/// box of its own and an entry in a map): the verdict, read through
/// [`Authentication::of`](crate::Authentication::of), and what the extractors, guards and
/// [`Session`](crate::Session) need to answer as configured.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) verdict: Authentication,
    /// For a signed-in request: what its `Session` needs.
    pub(crate) lifeline: Option<Lifeline>,
    /// Bearer tokens are accepted: 401s carry a `WWW-Authenticate: Bearer` challenge.
    pub(crate) bearer: bool,
    /// The app's own answer to every rejection, when it has one.
    pub(crate) hook: Option<RejectionHook>,
}

impl Served {
    /// `verdict`, as `id6` serves it; `lifeline` only beside a user.
    #[inline]
    pub(crate) fn new(id6: &Id6, verdict: Authentication, lifeline: Option<Lifeline>) -> Self {
        Served {
            lifeline: lifeline.filter(|_| verdict.user_arc().is_some()),
            verdict,
            bearer: id6.http_settings().bearer,
            hook: id6.rejection_hook().cloned(),
        }
    }

    /// [`new`](Self::new), as the handle `lifeline` holds serves it.
    pub(crate) fn beside(verdict: Authentication, lifeline: Lifeline) -> Self {
        let id6 = lifeline.id6();
        let (bearer, hook) = (id6.http_settings().bearer, id6.rejection_hook().cloned());
        Served {
            lifeline: verdict.user_arc().is_some().then_some(lifeline),
            verdict,
            bearer,
            hook,
        }
    }
}
