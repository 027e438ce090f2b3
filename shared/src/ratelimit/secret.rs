//! The secret a limit's slot placement is keyed with, so clients cannot compute which keys
//! share a slot (a public hash let anyone pick a key of their own in a victim's slot, spend
//! that slot's tokens and lock the victim out without the victim sending anything).
//!
//! A route's policy may configure one (`slot_secret`: the same placement across restarts and
//! replicas); otherwise each Envoy draws its own, once: the first VM that finds no secret in
//! shared data draws 128 bits through the host's randomness and writes them, every other VM
//! (every worker, a reloaded VM) reads them. Envoy has no "create if absent": two VMs that
//! both find none both write, and the later write stands; each VM reads the secret again
//! every 16 ticks (a tick comes at least once a second), so they agree within 16 s, once per
//! Envoy start.
//! The secret is never logged, counted or sent; `Debug` does not show it.

use std::cell::Cell;
use std::fmt;
use std::hash::Hasher;
use std::rc::Rc;

use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};

use crate::host::Host;

/// The keys of SipHash-2-4.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SlotSecret {
    k0: u64,
    k1: u64,
}

impl fmt::Debug for SlotSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SlotSecret(..)")
    }
}

/// The shortest `slot_secret` accepted, in characters.
pub const MIN_CONFIGURED_LEN: usize = 16;

impl SlotSecret {
    /// A secret every placement can be computed with: what a client knows without one.
    pub const PUBLIC: Self = Self { k0: 0, k1: 0 };

    /// 128 bits through the host's randomness.
    pub fn draw(host: &mut impl Host) -> Self {
        Self {
            k0: host.random_u64(),
            k1: host.random_u64(),
        }
    }

    /// A configured secret's text, condensed to the keys (SipHash-2-4's 128-bit output).
    pub fn from_text(text: &str) -> Self {
        let mut hasher = SipHasher128::new_with_keys(0, 0);
        hasher.write(text.as_bytes());
        let hash = hasher.finish128();
        Self {
            k0: hash.h1,
            k1: hash.h2,
        }
    }

    fn from_record(record: &[u8]) -> Option<Self> {
        let [k0, k1] = crate::store::read_u64s::<2>(record)?;
        Some(Self { k0, k1 })
    }

    fn to_record(self) -> [u8; 16] {
        let mut record = [0u8; 16];
        let (k0, k1) = record.split_at_mut(8);
        k0.copy_from_slice(&self.k0.to_le_bytes());
        k1.copy_from_slice(&self.k1.to_le_bytes());
        record
    }

    /// The keyed hash of `parts`, each followed by its length (so `("ab", "c")` and
    /// `("a", "bc")` differ).
    pub fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut hasher = SipHasher24::new_with_keys(self.k0, self.k1);
        for part in parts {
            hasher.write(part);
            hasher.write_u64(part.len() as u64);
        }
        hasher.finish()
    }
}

/// A VM reads the per-Envoy secret again every this many ticks (a tick comes at least once
/// a second; no clock read for it).
const RECHECK_TICKS: u32 = 16;

/// One VM's copy of its Envoy's secret, shared with every route it binds.
#[derive(Debug)]
pub struct EnvoySecret {
    key: String,
    current: Rc<Cell<Option<SlotSecret>>>,
    ticks: Cell<u32>,
}

/// The secret a bound limit places its keys with.
#[derive(Debug, Clone)]
pub enum Placement {
    Configured(SlotSecret),
    /// The Envoy's, as this VM last read it.
    PerEnvoy(Rc<Cell<Option<SlotSecret>>>),
}

impl Placement {
    pub fn secret(&self) -> SlotSecret {
        match self {
            Self::Configured(secret) => *secret,
            // Never `None` once bound (`EnvoySecret::placement` loads it).
            Self::PerEnvoy(current) => current.get().unwrap_or(SlotSecret::PUBLIC),
        }
    }
}

impl EnvoySecret {
    /// The secret of the module whose shared-data keys start with `key_prefix`.
    pub fn new(key_prefix: &str) -> Self {
        Self {
            key: format!("{key_prefix}/ratelimit/secret"),
            current: Rc::default(),
            ticks: Cell::new(0),
        }
    }

    /// What a route binding now places its keys with: `configured`, else the Envoy's secret
    /// (read, or drawn and written, by the first route this VM binds).
    pub fn placement(&self, configured: Option<SlotSecret>, host: &mut impl Host) -> Placement {
        if let Some(secret) = configured {
            return Placement::Configured(secret);
        }
        if self.current.get().is_none() {
            self.load(host);
        }
        Placement::PerEnvoy(Rc::clone(&self.current))
    }

    /// On the tick: reads the secret again every [`RECHECK_TICKS`] ticks, once this VM uses
    /// it (another VM's write may have replaced this VM's in the creation race).
    pub fn recheck(&self, host: &mut impl Host) {
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        if self.current.get().is_none() || !ticks.is_multiple_of(RECHECK_TICKS) {
            return;
        }
        if let Some(stored) = self.read(host)
            && Some(stored) != self.current.get()
        {
            log::info!("ratelimit slot secret changed by another VM: placement follows it");
            self.current.set(Some(stored));
        }
    }

    fn read(&self, host: &impl Host) -> Option<SlotSecret> {
        host.shared_get(&self.key)
            .and_then(|shared| SlotSecret::from_record(&shared.value))
    }

    fn load(&self, host: &mut impl Host) {
        let secret = match self.read(host) {
            Some(stored) => stored,
            None => {
                let drawn = SlotSecret::draw(host);
                // Where the write fails, this VM still places with its own secret: keys stay
                // unpredictable, at worst not agreed with other VMs until the write lands.
                if host
                    .shared_set(&self.key, &drawn.to_record(), None)
                    .is_err()
                {
                    log::warn!("ratelimit slot secret could not be stored: drawn for this VM");
                }
                // What another VM wrote in between wins.
                self.read(host).unwrap_or(drawn)
            }
        };
        self.current.set(Some(secret));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const PREFIX: &str = "mesh.ratelimit/mesh.ratelimit";

    /// A debug print (a policy's, in a log) names the secret and hides its keys.
    #[test]
    fn debug_shows_what_it_is_and_not_the_keys() {
        let secret = SlotSecret::from_text("a-configured-slot-secret");
        assert_eq!(format!("{secret:?}"), "SlotSecret(..)");
        assert_eq!(format!("{:?}", Some(secret)), "Some(SlotSecret(..))");
    }

    fn per_envoy(placement: &Placement) -> SlotSecret {
        assert!(matches!(placement, Placement::PerEnvoy(_)));
        placement.secret()
    }

    #[test]
    fn the_first_vm_draws_the_secret_and_every_other_vm_and_reload_reads_it() {
        let mut first = FakeHost::new();
        first.script_random(&[11, 12]);
        let secret = per_envoy(&EnvoySecret::new(PREFIX).placement(None, &mut first));
        assert_eq!(secret, SlotSecret { k0: 11, k1: 12 });
        // Another worker, and this worker's VM reloaded: same shared data, other randomness.
        for mut vm in [first.another_vm(), first.another_vm()] {
            vm.script_random(&[99, 98]);
            let placement = EnvoySecret::new(PREFIX).placement(None, &mut vm);
            assert_eq!(per_envoy(&placement), secret);
        }
        // Another plugin (another prefix) has its own.
        let mut other = first.another_vm();
        other.script_random(&[5, 6]);
        let placement = EnvoySecret::new("mesh.bundle/mesh.bundle").placement(None, &mut other);
        assert_eq!(per_envoy(&placement), SlotSecret { k0: 5, k1: 6 });
    }

    #[test]
    fn a_vm_reads_it_once_and_a_configured_secret_reads_nothing() {
        let mut host = FakeHost::new();
        let secret = EnvoySecret::new(PREFIX);
        let configured = SlotSecret::from_text("a secret of sixteen bytes or more");
        let placement = secret.placement(Some(configured), &mut host);
        assert_eq!(placement.secret(), configured);
        assert_eq!(host.calls().shared_gets + host.calls().shared_sets, 0);
        secret.placement(None, &mut host);
        let after_first = host.calls();
        // A read finds none, a write stores the drawn one, a read takes what stands.
        assert_eq!((after_first.shared_gets, after_first.shared_sets), (2, 1));
        for _ in 0..3 {
            secret.placement(None, &mut host);
        }
        assert_eq!(host.calls(), after_first);
    }

    #[test]
    fn vms_that_raced_to_draw_it_agree_within_sixteen_ticks() {
        let mut a = FakeHost::new();
        a.script_random(&[1, 1]);
        let mut b = a.another_vm();
        b.script_random(&[2, 2]);
        let (secret_a, secret_b) = (EnvoySecret::new(PREFIX), EnvoySecret::new(PREFIX));
        let placement_a = secret_a.placement(None, &mut a);
        // B found no secret before A wrote its own, and writes over it (the race).
        let key = format!("{PREFIX}/ratelimit/secret");
        let placement_b = secret_b.placement(None, &mut b);
        assert_eq!(per_envoy(&placement_b), SlotSecret { k0: 1, k1: 1 });
        b.shared_put(&key, &SlotSecret { k0: 2, k1: 2 }.to_record());
        assert_eq!(per_envoy(&placement_a), SlotSecret { k0: 1, k1: 1 });
        // Not every tick reads it; within 16 ticks A follows what stands.
        secret_a.recheck(&mut a);
        secret_b.recheck(&mut b);
        assert_eq!(per_envoy(&placement_a), SlotSecret { k0: 1, k1: 1 });
        let reads = a.calls().shared_gets;
        for _ in 1..RECHECK_TICKS {
            secret_a.recheck(&mut a);
            secret_b.recheck(&mut b);
        }
        assert_eq!(a.calls().shared_gets, reads + 1);
        assert_eq!(per_envoy(&placement_a), SlotSecret { k0: 2, k1: 2 });
        assert_eq!(per_envoy(&placement_b), SlotSecret { k0: 2, k1: 2 });
    }

    #[test]
    fn the_secret_does_not_show_in_debug_output() {
        let secret = SlotSecret {
            k0: 0x1234_5678_9abc_def0,
            k1: 42,
        };
        let shown = format!("{secret:?} {:?}", Placement::Configured(secret));
        assert!(!shown.contains("1234") && !shown.contains("42"), "{shown}");
        let configured = SlotSecret::from_text("correct horse battery staple");
        assert_ne!(
            configured,
            SlotSecret::from_text("correct horse battery stapler")
        );
    }
}
