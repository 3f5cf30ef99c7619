//! [`Wide`]: a `u128` sum stored as two `u64` halves.
//!
//! Sums of price x size need 128 bits, but a `u128` field makes its struct 16-byte aligned
//! and pads it; per-symbol state is read on every trade, and every padding byte is cache
//! wasted across ten thousand symbols. `Wide` has the same arithmetic with 8-byte alignment.

use core::ops::{AddAssign, SubAssign};

use bytemuck::{Pod, Zeroable};

/// A `u128` in two `u64` halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Wide {
    lo: u64,
    hi: u64,
}

impl Wide {
    pub(crate) const ZERO: Wide = Wide { lo: 0, hi: 0 };

    pub(crate) const fn new(value: u128) -> Wide {
        Wide { lo: value as u64, hi: (value >> 64) as u64 }
    }

    pub(crate) const fn get(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }

    /// The value as the nearest `f64`, as `self.get() as f64` gives, without its software
    /// 128-bit conversion when the high half is zero (it always is for one window's sums).
    pub(crate) fn to_f64(self) -> f64 {
        if self.hi == 0 {
            self.lo as f64
        } else {
            wide_to_f64(self.get())
        }
    }
}

/// The 128-bit conversion, out of line: inlined, the compiler proves both branches of
/// [`Wide::to_f64`] equal and keeps only this slow one (seen in the profile).
#[cold]
#[inline(never)]
fn wide_to_f64(value: u128) -> f64 {
    value as f64
}

impl AddAssign<u128> for Wide {
    fn add_assign(&mut self, rhs: u128) {
        *self = Wide::new(self.get() + rhs);
    }
}

impl SubAssign<u128> for Wide {
    fn sub_assign(&mut self, rhs: u128) {
        *self = Wide::new(self.get() - rhs);
    }
}
