//! What a request gets: [`CanaryPolicy::decide`] reads the request and answers a
//! [`Decision`]; the response phase applies [`CanaryPolicy::response`].

use std::borrow::Cow;

use crate::hash::{stable_hash, unit_interval};
use crate::hex;
use crate::host::RequestHost;
use crate::request::client_ip;

use super::config::*;
use super::percent::Percent;
use super::{cookie, query};

/// Why a request got its release; a stats label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request came tagged and the policy trusts incoming tags.
    Trusted,
    /// The rule at this index matched.
    Rule(usize),
    /// The split, by the request's sticky key.
    Sticky,
    /// The split, by a random draw (the request had no key).
    Random,
}

impl Reason {
    /// The reasons that are not rules.
    pub const SPLITS: [Reason; 3] = [Self::Trusted, Self::Sticky, Self::Random];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Rule(_) => "rule",
            Self::Sticky => "sticky",
            Self::Random => "random",
        }
    }
}

/// What to do with the tag header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagEdit {
    /// Leave the request's headers as they are.
    Keep,
    /// Set the tag header to the policy's value (replacing any the client sent).
    Set,
    /// Remove the tag header the client sent.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub release: Release,
    pub reason: Reason,
    pub tag: TagEdit,
    /// The request came with the tag header and the policy does not trust it: decided over.
    pub untrusted_tag: bool,
    /// A new sticky key to store in the sticky cookie: the request had none.
    pub new_sticky_key: Option<String>,
}

impl CanaryPolicy {
    /// Decides the request's release. `salt` is the configured salt or the route name.
    /// Reads the request through `host` and changes nothing.
    pub fn decide(&self, salt: &[u8], host: &mut impl RequestHost) -> Decision {
        let incoming = host.request_header(self.header.as_str());
        if self.trust_incoming
            && let Some(value) = incoming
        {
            let release = if value == self.value.as_bytes() {
                Release::Canary
            } else {
                Release::Stable
            };
            return Decision {
                release,
                reason: Reason::Trusted,
                tag: TagEdit::Keep,
                untrusted_tag: false,
                new_sticky_key: None,
            };
        }
        let tagged = incoming.is_some();
        // A write is a host call and a route chosen again: none when the request already
        // says canary (one value, the canary's) and canary is decided.
        let already_canary = incoming == Some(self.value.as_bytes())
            && host.request_header_count(self.header.as_str()) == 1;
        let mut request = Request::new(&*host);
        let ruled = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(&mut request));
        let (release, reason, new_sticky_key) = match ruled {
            Some((i, rule)) => (rule.release, Reason::Rule(i), None),
            None => match self.sticky_key(&mut request) {
                Some(key) => (self.release_at(point(salt, &key)), Reason::Sticky, None),
                None => self.draw(salt, host),
            },
        };
        let tag = match (release, tagged) {
            (Release::Canary, _) if already_canary => TagEdit::Keep,
            (Release::Canary, _) => TagEdit::Set,
            (Release::Stable, true) => TagEdit::Remove,
            (Release::Stable, false) => TagEdit::Keep,
        };
        Decision {
            release,
            reason,
            tag,
            untrusted_tag: tagged,
            new_sticky_key,
        }
    }

    /// The first present, non-empty sticky key: header, cookie, client address, then the
    /// sticky cookie.
    fn sticky_key<'h, H: RequestHost>(
        &self,
        request: &mut Request<'h, H>,
    ) -> Option<Cow<'h, [u8]>> {
        let sticky = &self.sticky;
        let host = request.host;
        sticky
            .header
            .as_ref()
            .and_then(|name| non_empty(host.request_header(name.as_str())?))
            .map(Cow::Borrowed)
            .or_else(|| request.cookie_key(sticky.cookie.as_deref()))
            .or_else(|| {
                // A host call only when the policy keys on the address.
                let address = sticky
                    .client_address
                    .then(|| host.property(&SOURCE_ADDRESS))??;
                Some(Cow::Owned(non_empty(client_ip(&address))?.to_vec()))
            })
            .or_else(|| request.cookie_key(self.sticky_cookie.as_ref().map(|c| c.name.as_str())))
    }

    /// No key: a random draw; with a sticky cookie, a new random key the cookie keeps.
    fn draw(&self, salt: &[u8], host: &mut impl RequestHost) -> (Release, Reason, Option<String>) {
        if self.sticky_cookie.is_none() {
            let release = self.release_at(unit_interval(host.random_u64()));
            return (release, Reason::Random, None);
        }
        let mut key = [0u8; 16];
        let (high, low) = key.split_at_mut(8);
        high.copy_from_slice(&host.random_u64().to_be_bytes());
        low.copy_from_slice(&host.random_u64().to_be_bytes());
        let key = hex::encode(&key);
        let release = self.release_at(point(salt, key.as_bytes()));
        (release, Reason::Random, Some(key))
    }

    /// The release of a point in `[0, 1)`: below `percent / 100` is the canary, so raising
    /// the percent only moves points from stable to canary.
    pub fn release_at(&self, point: f64) -> Release {
        if self.percent >= Percent::HUNDRED || point < self.percent.fraction() {
            Release::Canary
        } else {
            Release::Stable
        }
    }

    /// The debugging response header's value: `canary; rule=force`, `stable; sticky`.
    pub fn describe(&self, decision: &Decision) -> String {
        let mut text = String::from(decision.release.as_str());
        text.push_str("; ");
        match decision.reason {
            Reason::Rule(_) => {
                text.push_str("rule=");
                text.push_str(self.rule_name(decision.reason).unwrap_or_default());
            }
            reason => text.push_str(reason.as_str()),
        }
        text
    }

    /// The name of the rule `reason` names; `None` for a reason that is not a rule.
    pub fn rule_name(&self, reason: Reason) -> Option<&str> {
        match reason {
            Reason::Rule(i) => self.rules.get(i).map(|rule| rule.name.as_str()),
            Reason::Trusted | Reason::Sticky | Reason::Random => None,
        }
    }

    /// Every release and reason a decision is counted by: each release for each reason that
    /// is not a rule, then each rule with its release.
    pub fn counted(&self) -> impl Iterator<Item = (Release, Reason)> + '_ {
        let splits = Release::ALL
            .into_iter()
            .flat_map(|release| Reason::SPLITS.map(|reason| (release, reason)));
        let rules =
            (self.rules.iter().enumerate()).map(|(i, rule)| (rule.release, Reason::Rule(i)));
        splits.chain(rules)
    }

    /// The salt of the cohorts on route `route_name`: the configured salt, else the route
    /// name (each route has its own cohorts).
    pub fn cohort_salt<'a>(&'a self, route_name: &'a str) -> &'a [u8] {
        self.salt.as_deref().unwrap_or(route_name).as_bytes()
    }

    /// What the response to a request decided `decision` gets.
    pub fn response(&self, decision: &Decision) -> Response {
        Response {
            decision: self
                .response_header
                .is_some()
                .then(|| self.describe(decision)),
            set_cookie: self
                .sticky_cookie
                .as_ref()
                .zip(decision.new_sticky_key.as_deref())
                .map(|(cookie, key)| cookie.set_cookie(key)),
        }
    }

    /// The debugging header `response` gets, name and value: the policy's `response_header`
    /// with the decision it describes; `None`: none.
    pub fn decision_header<'a>(&'a self, response: &'a Response) -> Option<(&'a str, &'a [u8])> {
        let name = self.response_header.as_ref()?;
        Some((name.as_str(), response.decision.as_deref()?.as_bytes()))
    }
}

/// What the response phase adds to a decided request's response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The debugging header's value ([`CanaryPolicy::describe`]), when the policy names a
    /// `response_header`.
    pub decision: Option<String>,
    /// A `set-cookie` value storing a new sticky key.
    pub set_cookie: Option<String>,
}

fn non_empty(key: &[u8]) -> Option<&[u8]> {
    (!key.is_empty()).then_some(key)
}

/// A sticky key's point in `[0, 1)` on a route.
pub fn point(salt: &[u8], key: &[u8]) -> f64 {
    unit_interval(stable_hash(&[salt, key]))
}

impl Rule {
    fn matches<H: RequestHost>(&self, request: &mut Request<'_, H>) -> bool {
        match &self.target {
            Target::Header(name, test) => test.matches(request.host.request_header(name.as_str())),
            Target::Cookie(name, test) => test.matches(request.cookie(name)),
            Target::Query(name, test) => {
                let value = request
                    .path()
                    .and_then(|path| query::param(query::query_of(path), name.as_bytes()));
                test.matches(value.as_deref())
            }
            Target::PathPrefix(prefix) => request
                .path()
                .is_some_and(|path| query::path_only(path).starts_with(prefix.as_bytes())),
        }
    }
}

/// The request as rules and keys see it: `:path` and `cookie` are read once, when first
/// needed.
struct Request<'h, H> {
    host: &'h H,
    path: Option<Option<&'h [u8]>>,
    cookie: Option<Option<&'h [u8]>>,
}

impl<'h, H: RequestHost> Request<'h, H> {
    fn new(host: &'h H) -> Self {
        Self {
            host,
            path: None,
            cookie: None,
        }
    }

    fn path(&mut self) -> Option<&'h [u8]> {
        let host = self.host;
        *self
            .path
            .get_or_insert_with(|| host.request_header(":path"))
    }

    /// A cookie's value as a sticky key: absent when empty.
    fn cookie_key(&mut self, name: Option<&str>) -> Option<Cow<'h, [u8]>> {
        non_empty(self.cookie(name?)?).map(Cow::Borrowed)
    }

    fn cookie(&mut self, name: &str) -> Option<&'h [u8]> {
        let host = self.host;
        let header = (*self
            .cookie
            .get_or_insert_with(|| host.request_header("cookie")))?;
        cookie::find(header, name.as_bytes())
    }
}
