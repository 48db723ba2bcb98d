//! A plan's separate input and output allowances: how much of each side of a
//! request the plan pays in a cycle, credits (and the overage a plan allows) paying
//! what a side cannot (docs/behaviour.md, "Input and output allowances").
//!
//! The arithmetic lives here, free of the database, so that the reservation and the
//! settlement ask the same questions of the same numbers.

use super::plan::Allowance;

/// A side of a request: what is sent (the prompt, images, tool fees) or what comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Input,
    Output,
}

/// What a plan pays of each side per cycle, in weighted tokens; `None` caps nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SideAllowances {
    #[serde(rename = "input_allowance")]
    pub input: Option<Allowance>,
    #[serde(rename = "output_allowance")]
    pub output: Option<Allowance>,
}

impl SideAllowances {
    /// As the database keeps them; a negative value (edited by hand) caps at zero.
    pub fn stored(input: Option<i64>, output: Option<i64>) -> Self {
        let cap = |v: Option<i64>| v.and_then(|v| Allowance::new(v.max(0)));
        Self {
            input: cap(input),
            output: cap(output),
        }
    }

    /// Whether the plan caps either side: only then does a request pay the cost of
    /// reading what its user's requests in flight hold of each side.
    pub fn any(self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// Both sides added up, when the plan caps both: the monthly allowance such a
    /// plan needs no other figure for.
    pub fn total(self) -> Option<Allowance> {
        let (input, output) = (self.input?, self.output?);
        Allowance::new(input.get().saturating_add(output.get()))
    }

    pub fn of(self, side: Side) -> Option<Allowance> {
        match side {
            Side::Input => self.input,
            Side::Output => self.output,
        }
    }

    /// What the plan still pays of `side` after `used` this cycle (`None`: no cap).
    pub fn left(self, side: Side, used: i64) -> Option<i64> {
        self.of(side).map(|cap| (cap.get() - used).max(0))
    }

    /// Of a settled request's cost, what the plan's allowance pays: each side up to
    /// what its cap has left after `used`, and no more than `allowance_left`; the
    /// rest is for credits.
    pub fn plan_pays(self, used: SideUse, cost: SideUse, allowance_left: i64) -> i64 {
        let side = |side: Side, used: i64, cost: i64| {
            self.left(side, used).map_or(cost, |left| cost.min(left))
        };
        (side(Side::Input, used.input, cost.input) + side(Side::Output, used.output, cost.output))
            .min(allowance_left.max(0))
            .max(0)
    }
}

/// An amount on each side: a cycle's use, a request's cost, what holds keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideUse {
    pub input: i64,
    pub output: i64,
}

/// What a balance can still pay with when its plan caps the sides, after what the
/// user's requests in flight hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The allowance left, less what holds keep of it.
    pub plan: i64,
    /// Each capped side's room: its cap, less its use and what holds keep of it.
    pub input: Option<i64>,
    pub output: Option<i64>,
    /// What pays past the plan (credits, then the overage a plan allows), less
    /// what holds keep of it.
    pub beyond: i64,
}

/// How a reserved request is paid at most: what of it the plan pays, and what is
/// paid past the plan (credits, overage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub plan: i64,
    pub beyond: i64,
}

impl Room {
    /// The balance's room, from what it has and what its holds keep (`held` is every
    /// hold's amount, `held_sides` and `held_beyond` those of holds reserved with
    /// pools). `beyond` is the credits and the overage left.
    pub fn of(
        caps: SideAllowances,
        allowance_left: i64,
        beyond: i64,
        used: SideUse,
        held: i64,
        held_sides: SideUse,
        held_beyond: i64,
    ) -> Self {
        let side = |side: Side, used: i64, held: i64| {
            caps.left(side, used).map(|left| (left - held).max(0))
        };
        Self {
            plan: (allowance_left - (held - held_beyond)).max(0),
            input: side(Side::Input, used.input, held_sides.input),
            output: side(Side::Output, used.output, held_sides.output),
            beyond: (beyond - held_beyond).max(0),
        }
    }

    /// The plan's share of an input cost, as much as the input's room and the plan allow.
    fn plan_input(&self, input: i64) -> i64 {
        input
            .min(self.input.unwrap_or(i64::MAX))
            .min(self.plan)
            .max(0)
    }

    /// The most a request whose input costs `input` may cost in all: its input, then
    /// as much output as the output's room (within the plan) and the credits the
    /// input left pay for. Below `input` when the input itself cannot be paid.
    pub fn budget(&self, input: i64) -> i64 {
        let plan_input = self.plan_input(input);
        let credit_input = input - plan_input;
        if credit_input > self.beyond {
            return plan_input + self.beyond;
        }
        let plan_output = self
            .output
            .unwrap_or(i64::MAX)
            .min(self.plan - plan_input)
            .max(0);
        input
            .saturating_add(plan_output)
            .saturating_add(self.beyond - credit_input)
    }

    /// How a request whose worst costs are `cost` is paid: the plan as far as it
    /// goes on each side, credits the rest.
    pub fn split(&self, cost: SideUse) -> Split {
        let plan_input = self.plan_input(cost.input);
        let plan_output = cost
            .output
            .min(self.output.unwrap_or(i64::MAX))
            .min(self.plan - plan_input)
            .max(0);
        let plan = plan_input + plan_output;
        Split {
            plan,
            beyond: (cost.input + cost.output - plan).max(0),
        }
    }

    /// What `side` can still pay: its room (within the plan's), and what pays past
    /// the plan.
    pub fn can_pay(&self, side: Side) -> i64 {
        let room = match side {
            Side::Input => self.input,
            Side::Output => self.output,
        };
        room.unwrap_or(self.plan)
            .min(self.plan)
            .saturating_add(self.beyond)
    }

    /// The side whose cap refuses a request whose worst costs are `cost`: the input
    /// when its own room and the credits cannot pay it, else the output when its room
    /// is short. `None` when the request fits, or when the balance as a whole is short.
    pub fn short_side(&self, cost: SideUse) -> Option<Side> {
        if self.split(cost).beyond <= self.beyond {
            return None;
        }
        let input_short = self.input.is_some_and(|room| room < cost.input);
        let output_short = self.output.is_some_and(|room| room < cost.output);
        let input_unpaid = cost.input - self.plan_input(cost.input) > self.beyond;
        match (input_short, output_short) {
            (true, _) if input_unpaid => Some(Side::Input),
            (_, true) => Some(Side::Output),
            (true, false) => Some(Side::Input),
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(input: Option<i64>, output: Option<i64>) -> SideAllowances {
        SideAllowances::stored(input, output)
    }

    fn room(caps: SideAllowances, allowance_left: i64, credits: i64, used: (i64, i64)) -> Room {
        Room::of(
            caps,
            allowance_left,
            credits,
            SideUse {
                input: used.0,
                output: used.1,
            },
            0,
            SideUse::default(),
            0,
        )
    }

    #[test]
    fn without_caps_the_budget_is_the_whole_balance() {
        let r = room(caps(None, None), 1_000, 500, (0, 0));
        // Allowance, then credits, on either side; an input past both is short.
        for input in [0, 10, 1_000, 1_400, 1_500, 2_000] {
            assert_eq!(r.budget(input), 1_500, "{input}");
        }
        assert_eq!(
            r.short_side(SideUse {
                input: 2_000,
                output: 0
            }),
            None
        );
    }

    #[test]
    fn each_side_binds_on_its_own() {
        // Básico: 1M in all, 600K of input, 400K of output. Output used up: only the
        // input may be spent, and a request with any output is over.
        let basico = caps(Some(600_000), Some(400_000));
        let r = room(basico, 400_000, 0, (200_000, 400_000));
        assert_eq!(r.budget(1_000), 1_000);
        assert_eq!(
            r.short_side(SideUse {
                input: 1_000,
                output: 1
            }),
            Some(Side::Output)
        );
        // Input used up: even the prompt cannot be paid.
        let r = room(basico, 100_000, 0, (600_000, 300_000));
        assert!(r.budget(1_000) < 1_000);
        assert_eq!(
            r.short_side(SideUse {
                input: 1_000,
                output: 0
            }),
            Some(Side::Input)
        );
        // Both sides with room: the output's room is the limit on top of the input.
        let r = room(basico, 500_000, 0, (300_000, 200_000));
        assert_eq!(r.budget(1_000), 1_000 + 200_000);
        assert_eq!(
            r.short_side(SideUse {
                input: 1_000,
                output: 200_000
            }),
            None
        );
    }

    #[test]
    fn credits_pay_what_a_side_cannot() {
        let basico = caps(Some(600_000), Some(400_000));
        let r = room(basico, 400_000, 5_000, (200_000, 400_000));
        assert_eq!(r.budget(1_000), 6_000);
        assert_eq!(
            r.split(SideUse {
                input: 1_000,
                output: 5_000
            }),
            Split {
                plan: 1_000,
                beyond: 5_000
            }
        );
        assert_eq!(
            r.short_side(SideUse {
                input: 1_000,
                output: 5_001
            }),
            Some(Side::Output)
        );
        // The input over its cap: credits pay it, and what remains of them the output.
        let r = room(basico, 100_000, 5_000, (600_000, 300_000));
        assert_eq!(r.budget(1_000), 1_000 + 100_000 + 4_000);
        assert_eq!(
            r.split(SideUse {
                input: 1_000,
                output: 100_000
            }),
            Split {
                plan: 100_000,
                beyond: 1_000
            }
        );
    }

    #[test]
    fn holds_keep_their_share_of_each_side_and_of_the_credits() {
        let basico = caps(Some(600_000), Some(400_000));
        let r = Room::of(
            basico,
            1_000,
            100,
            SideUse {
                input: 599_500,
                output: 399_500,
            },
            700,
            SideUse {
                input: 400,
                output: 200,
            },
            100,
        );
        assert_eq!(r.input, Some(100));
        assert_eq!(r.output, Some(300));
        assert_eq!(r.plan, 400);
        assert_eq!(r.beyond, 0);
        assert_eq!(r.budget(100), 100 + 300);
    }

    #[test]
    fn settlement_pays_each_side_from_the_plan_up_to_its_cap() {
        let basico = caps(Some(600_000), Some(400_000));
        let used = SideUse {
            input: 599_000,
            output: 100_000,
        };
        let cost = SideUse {
            input: 3_000,
            output: 2_000,
        };
        // 1,000 of the input and all of the output from the plan; 2,000 for credits.
        assert_eq!(basico.plan_pays(used, cost, 1_000_000), 3_000);
        // And never past the allowance left.
        assert_eq!(basico.plan_pays(used, cost, 2_500), 2_500);
        assert_eq!(caps(None, None).plan_pays(used, cost, 4_000), 4_000);
        assert_eq!(caps(None, None).plan_pays(used, cost, -5), 0);
    }

    #[test]
    fn the_budget_never_pays_more_than_the_room() {
        // Whatever the numbers, a request within the budget splits into a plan part
        // within every room and a credit part within the credits.
        let sides = [None, Some(0), Some(50), Some(500)];
        for input_cap in sides {
            for output_cap in sides {
                for plan in [0, 40, 400] {
                    for credits in [0, 30, 300] {
                        let r = Room {
                            plan,
                            input: input_cap,
                            output: output_cap,
                            beyond: credits,
                        };
                        for input in [0, 20, 60, 600] {
                            let budget = r.budget(input);
                            if budget < input {
                                let side_short = input_cap.is_some_and(|cap| cap < input);
                                assert_eq!(
                                    r.short_side(SideUse { input, output: 0 }).is_some(),
                                    side_short,
                                    "{r:?} {input}"
                                );
                                continue;
                            }
                            let cost = SideUse {
                                input,
                                output: budget - input,
                            };
                            let s = r.split(cost);
                            // And it is the most: one token more does not fit.
                            let over = SideUse {
                                input,
                                output: budget - input + 1,
                            };
                            assert!(r.split(over).beyond > r.beyond, "{r:?} {input}");
                            assert_eq!(s.plan + s.beyond, budget, "{r:?} {input}");
                            assert!(s.beyond <= credits, "{r:?} {input}");
                            assert!(s.plan <= plan, "{r:?} {input}");
                            assert_eq!(r.short_side(cost), None, "{r:?} {input}");
                        }
                    }
                }
            }
        }
    }
}
