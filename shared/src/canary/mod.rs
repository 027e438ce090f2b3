//! The canary policy: which release a request belongs to, written as a request header that
//! the routes match on (an Istio VirtualService header match sends it to subset v2).
//!
//! Order of decision, per request:
//! 1. The tag header as the client sent it: kept and obeyed with `trust_incoming`, else
//!    ignored (and removed), so clients cannot put themselves into the canary.
//! 2. The rules, in order: the first that matches decides.
//! 3. The weighted split: `percent` of the keys go to the canary. The key is the first of
//!    the `sticky` sources the request has (header, cookie, client address, then the sticky
//!    cookie); its point in `[0, 1)` is `stable_hash(salt, key)`, so a key always gets the
//!    same answer on a route, two routes' cohorts differ, and raising the percent only adds
//!    keys. Without a key: a random draw, or, with a sticky cookie, a new random key that the
//!    response stores in the cookie.
//!
//! [`CanaryPolicy::decide`] only reads the request; the caller applies [`Decision::tag`].

pub mod config;
pub mod cookie;
pub mod decide;
pub mod percent;
pub mod query;

pub use config::*;
pub use decide::*;
pub use percent::Percent;

#[cfg(test)]
mod tests;
