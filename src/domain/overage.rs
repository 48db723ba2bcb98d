//! Overage: past its allowances and the user's credits, a plan may go on up to a
//! cap of tokens a cycle, each 1,000 billed at a price (docs/behaviour.md,
//! "Overage"). How a settled charge is shared between the allowance, the credits and
//! the overage is decided here, free of the database.

use super::money::PricePer1k;
use super::plan::Allowance;

/// A plan's overage: up to `cap` tokens a cycle past everything else, at `price`.
/// A plan without one blocks there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Overage {
    pub cap: Allowance,
    #[serde(rename = "price_per_1k_micro")]
    pub price: PricePer1k,
}

impl Overage {
    /// As the database keeps it: both columns, or no overage (a cap of zero is none).
    pub fn stored(cap: Option<i64>, price: Option<i64>) -> Option<Self> {
        let cap = Allowance::new(cap?).filter(|c| c.get() > 0)?;
        Some(Self {
            cap,
            price: PricePer1k::from_micro(price?)?,
        })
    }

    /// What is left of the cap after `used` this cycle.
    pub fn left(self, used: i64) -> i64 {
        (self.cap.get() - used.max(0)).max(0)
    }
}

/// How a settled charge is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    pub allowance: i64,
    pub credits: i64,
    pub overage: i64,
}

impl Payment {
    /// Of `charge`, the plan's allowance pays `plan` (what its allowances let it),
    /// the credits what they have, the overage up to `overage_left`; what remains
    /// (a prompt above its estimate) is taken from the credits as a debt, never
    /// past the overage's cap.
    pub fn of(charge: i64, plan: i64, credits: i64, overage_left: i64) -> Self {
        let charge = charge.max(0);
        let allowance = plan.clamp(0, charge);
        let rest = charge - allowance;
        let from_credits = rest.min(credits.max(0));
        let overage = (rest - from_credits).min(overage_left.max(0));
        Self {
            allowance,
            credits: rest - overage,
            overage,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_then_the_credits_then_the_overage_pay() {
        assert_eq!(
            Payment::of(1_000, 600, 300, 5_000),
            Payment {
                allowance: 600,
                credits: 300,
                overage: 100
            }
        );
        assert_eq!(
            Payment::of(1_000, 1_000, 300, 5_000),
            Payment {
                allowance: 1_000,
                credits: 0,
                overage: 0
            }
        );
        // Never past the cap: the rest is a debt on the credits.
        assert_eq!(
            Payment::of(1_000, 0, 0, 400),
            Payment {
                allowance: 0,
                credits: 600,
                overage: 400
            }
        );
        // Credits already in debt pay nothing more before the overage does.
        assert_eq!(
            Payment::of(1_000, 0, -50, 5_000),
            Payment {
                allowance: 0,
                credits: 0,
                overage: 1_000
            }
        );
        assert_eq!(
            Payment::of(-3, 10, 10, 10),
            Payment {
                allowance: 0,
                credits: 0,
                overage: 0
            }
        );
    }

    #[test]
    fn an_overage_needs_a_cap_and_a_price() {
        assert!(Overage::stored(Some(1_000), Some(100_000)).is_some());
        assert!(Overage::stored(Some(1_000), None).is_none());
        assert!(Overage::stored(None, Some(100_000)).is_none());
        assert!(Overage::stored(Some(0), Some(100_000)).is_none());
        assert!(Overage::stored(Some(1_000), Some(-1)).is_none());
        let o = Overage::stored(Some(1_000), Some(100_000)).unwrap();
        assert_eq!(o.left(250), 750);
        assert_eq!(o.left(5_000), 0);
    }
}
