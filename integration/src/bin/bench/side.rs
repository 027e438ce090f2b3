//! The two listeners of a run (`measure.rs` measures both, `profile.rs` records both).

/// The two listeners of a run: the variant's chain and the bare one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Bare,
    Variant,
}

impl Side {
    /// The connection manager's stat prefix (`http.<prefix>.downstream_rq_total`).
    pub fn stat_prefix(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Variant => "ingress",
        }
    }
}
