//! What the layer leaves in a request: one extension, and every reading of it. The readers
//! are inherent functions of the types they hand out ([`Authentication::of`], the
//! `Session`'s [`Lifeline`], the [`RejectionHook`]), defined here: the rooms below the layer
//! name only their own types and never this one.

use crate::id6::Id6;
use crate::rejection::RejectionHook;
use crate::session::Lifeline;
use crate::user::{Authentication, User};
use http::Extensions;
use std::sync::Arc;

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
}

impl Authentication {
    /// Who is calling, as the layer left it in a request's extensions; `None` without the
    /// layer. The layer leaves one value there (with what the extractors and `Session`
    /// need), so `extensions.get::<Authentication>()` finds nothing: ask here. An
    /// `Authentication` inserted by hand (a test's) is read too.
    pub fn of(extensions: &Extensions) -> Option<&Authentication> {
        match extensions.get::<Served>() {
            Some(served) => Some(&served.verdict),
            None => extensions.get::<Authentication>(),
        }
    }
}

impl Lifeline {
    /// A signed-in request's lifeline and its user, as the layer left them.
    #[inline]
    pub(crate) fn left_by_layer(extensions: &Extensions) -> Option<(&Lifeline, &Arc<User>)> {
        let served = extensions.get::<Served>()?;
        Some((served.lifeline.as_ref()?, served.verdict.user_arc()?))
    }
}

impl RejectionHook {
    /// How the layer said to refuse this request: with a `Bearer` challenge or not, and the
    /// app's own hook (neither without the layer).
    #[inline]
    pub(crate) fn left_by_layer(extensions: &Extensions) -> (bool, Option<RejectionHook>) {
        let served = extensions.get::<Served>();
        (
            served.is_some_and(|served| served.bearer),
            served.and_then(|served| served.hook.clone()),
        )
    }
}
