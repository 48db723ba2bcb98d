//! `tokengate plans`: list, show, create and edit plans from the command line, with
//! the dashboard's rules (`domain::plan`) and its audit.

use super::{CmdResult, open, parse_tokens};
use crate::config::Config;
use crate::domain::identity::Role;
use crate::domain::money::format_centavos;
use crate::domain::plan::{Allowance, parse_roles};
use crate::domain::{
    Brl, Overage, PlanChange, PlanModels, PlanName, PlanSpec, PricePer1k, RequestLimit,
    RequestLimits, SideAllowances, TokenAmount,
};
use crate::ledger::views::PlanRow;
use crate::ledger::{Actor, PlanRef};
use clap::Subcommand;
use std::collections::BTreeSet;
use std::io::Write;

#[derive(Subcommand)]
pub(super) enum PlansCommand {
    /// List every plan with its allowance, models and users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one plan.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Create a plan.
    Create {
        name: String,
        /// Tokens a month, input and output together (default: the input's and the
        /// output's allowances added up).
        #[arg(long, value_parser = parse_tokens)]
        allowance: Option<TokenAmount>,
        #[command(flatten)]
        sides: SideArgs,
        #[command(flatten)]
        overage: OverageArgs,
        /// The models it may use, separated by commas (default: every model).
        #[arg(long, value_parser = parse_models, default_value = "")]
        models: PlanModels,
        #[command(flatten)]
        limits: LimitArgs,
        /// What it is sold for a month, in reais ("199,90"), for reports.
        #[arg(long, value_parser = parse_price, value_name = "REAIS")]
        price: Option<PriceArg>,
        /// LibreChat roles whose users start on it, separated by commas.
        #[arg(long, value_parser = parse_roles_arg, value_name = "ROLE,ROLE")]
        roles: Option<RolesArg>,
        /// New users start on it.
        #[arg(long)]
        default: bool,
    },
    /// Change a plan: what is not given stays as it is. Everything applies at once
    /// but the monthly allowance, which applies from each user's next cycle.
    Edit {
        name: String,
        /// A new name.
        #[arg(long, value_parser = parse_name)]
        rename: Option<PlanName>,
        #[arg(long, value_parser = parse_tokens)]
        allowance: Option<TokenAmount>,
        #[command(flatten)]
        sides: SideArgs,
        #[command(flatten)]
        overage: OverageArgs,
        /// The models it may use, separated by commas; "*" for every model.
        #[arg(long, value_parser = parse_models)]
        models: Option<PlanModels>,
        #[command(flatten)]
        limits: LimitArgs,
        /// What it is sold for a month, in reais ("199,90"), or "none".
        #[arg(long, value_parser = parse_price, value_name = "REAIS|none")]
        price: Option<PriceArg>,
        /// LibreChat roles whose users it takes, separated by commas; "none" for none.
        #[arg(long, value_parser = parse_roles_arg, value_name = "ROLE,ROLE|none")]
        roles: Option<RolesArg>,
        /// New users start on it.
        #[arg(long)]
        default: bool,
    },
}

/// LibreChat roles as given.
#[derive(Clone)]
pub(super) struct RolesArg(BTreeSet<Role>);

fn parse_roles_arg(s: &str) -> Result<RolesArg, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(RolesArg(BTreeSet::new()));
    }
    parse_roles(s).map(RolesArg)
}

/// A monthly price as given, or none.
#[derive(Clone, Copy)]
pub(super) struct PriceArg(Option<Brl>);

fn parse_price(s: &str) -> Result<PriceArg, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("none") {
        return Ok(PriceArg(None));
    }
    Brl::parse(t)
        .map(|p| PriceArg(Some(p)))
        .map_err(|e| e.to_string())
}

/// The input's and the output's allowances, each a number of tokens a month or
/// "none". They apply at once, counted from what each user has used this cycle.
#[derive(clap::Args)]
pub(super) struct SideArgs {
    /// Weighted input tokens (prompts, images, tool fees) the plan pays a month.
    #[arg(long, value_parser = parse_side, value_name = "TOKENS|none")]
    input_allowance: Option<SideArg>,
    /// Weighted output tokens (answers) the plan pays a month.
    #[arg(long, value_parser = parse_side, value_name = "TOKENS|none")]
    output_allowance: Option<SideArg>,
}

/// A side's allowance as given, or none.
#[derive(Clone, Copy)]
pub(super) struct SideArg(Option<Allowance>);

fn parse_side(s: &str) -> Result<SideArg, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(SideArg(None));
    }
    parse_tokens(s).map(|t| SideArg(Some(t.into())))
}

/// Overage: past the allowances and the user's credits, go on up to a cap of
/// tokens a month, billed at a price per 1,000. It applies at once.
#[derive(clap::Args)]
pub(super) struct OverageArgs {
    /// Tokens a user may use past everything else in a month, or "none" to block
    /// there (the default).
    #[arg(long, value_parser = parse_side, value_name = "TOKENS|none")]
    overage_cap: Option<SideArg>,
    /// What 1,000 overage tokens cost, in reais ("0,10").
    #[arg(long, value_parser = parse_overage_price, value_name = "REAIS")]
    overage_price: Option<PricePer1k>,
}

fn parse_overage_price(s: &str) -> Result<PricePer1k, String> {
    PricePer1k::parse(s).map_err(|e| e.to_string())
}

impl OverageArgs {
    /// The overage these arguments ask for, from the plan's `old` one (an edit may
    /// give one of the two); `None` when they ask nothing.
    fn change(&self, old: Option<Overage>) -> Result<Option<Option<Overage>>, String> {
        let cap = match self.overage_cap {
            Some(SideArg(None)) if self.overage_price.is_some() => {
                return Err("--overage-cap none takes no --overage-price".into());
            }
            Some(SideArg(None)) => return Ok(Some(None)),
            Some(SideArg(Some(cap))) => Some(cap),
            None => old.map(|o| o.cap),
        };
        if self.overage_cap.is_none() && self.overage_price.is_none() {
            return Ok(None);
        }
        match (cap, self.overage_price.or(old.map(|o| o.price))) {
            (Some(cap), Some(price)) if cap.get() > 0 => Ok(Some(Some(Overage { cap, price }))),
            (Some(_), Some(_)) => Err("--overage-cap must be above zero, or none".into()),
            _ => Err("give both --overage-cap and --overage-price (reais per 1,000 tokens)".into()),
        }
    }
}

/// Request limits, each a count or "none". They apply at once.
#[derive(clap::Args)]
pub(super) struct LimitArgs {
    /// Requests a user may make in a clock minute.
    #[arg(long, value_parser = parse_limit, value_name = "N|none")]
    per_minute: Option<LimitArg>,
    /// Requests a user may make in a day (local time, from midnight).
    #[arg(long, value_parser = parse_limit, value_name = "N|none")]
    per_day: Option<LimitArg>,
    /// Requests a user may make in a cycle (a calendar month).
    #[arg(long, value_parser = parse_limit, value_name = "N|none")]
    per_month: Option<LimitArg>,
}

/// A limit as given: a count, or none (clap reads a bare `Option<Option<_>>` as a
/// flag whose value is optional).
#[derive(Clone, Copy)]
pub(super) struct LimitArg(Option<RequestLimit>);

fn parse_limit(s: &str) -> Result<LimitArg, String> {
    RequestLimit::parse(s)
        .map(LimitArg)
        .map_err(|e| e.to_string())
}

fn parse_models(s: &str) -> Result<PlanModels, String> {
    PlanModels::parse(s).map_err(|e| e.to_string())
}

fn parse_name(s: &str) -> Result<PlanName, String> {
    PlanName::parse(s).ok_or_else(|| {
        "a plan name is one line of 1 to 60 characters, without control characters".to_owned()
    })
}

pub(super) fn run(config: &Config, command: PlansCommand) -> CmdResult {
    match command {
        PlansCommand::List { json } => list(config, json),
        PlansCommand::Show { name, json } => show(config, &name, json),
        PlansCommand::Create {
            name,
            allowance,
            sides,
            overage,
            models,
            limits,
            price,
            roles,
            default,
        } => {
            let sides = SideAllowances {
                input: sides.input_allowance.and_then(|a| a.0),
                output: sides.output_allowance.and_then(|a| a.0),
            };
            let monthly_allowance = match (allowance, sides.total()) {
                (Some(a), _) => a.into(),
                (None, Some(total)) => total,
                (None, None) => {
                    return Err(
                        "give --allowance, or both --input-allowance and --output-allowance".into(),
                    );
                }
            };
            let spec = PlanSpec {
                monthly_price: price.and_then(|p| p.0),
                roles: roles.map(|r| r.0).unwrap_or_default(),
                name: parse_name(&name)?,
                monthly_allowance,
                sides,
                overage: overage.change(None)?.flatten(),
                models,
                limits: RequestLimits {
                    per_minute: limits.per_minute.and_then(|l| l.0),
                    per_day: limits.per_day.and_then(|l| l.0),
                    per_month: limits.per_month.and_then(|l| l.0),
                },
            };
            open(config)?.create_plan(&spec, default, &Actor::Cli)?;
            show(config, spec.name.as_str(), false)
        }
        PlansCommand::Edit {
            name,
            rename,
            allowance,
            sides,
            overage,
            models,
            limits,
            price,
            roles,
            default,
        } => {
            let ledger = open(config)?;
            let overage = match (&overage.overage_cap, &overage.overage_price) {
                (None, None) => None,
                _ => overage.change(ledger.plan(&name)?.overage)?,
            };
            let change = PlanChange {
                overage,
                monthly_price: price.map(|p| p.0),
                roles: roles.map(|r| r.0),
                name: rename,
                monthly_allowance: allowance.map(Into::into),
                input_allowance: sides.input_allowance.map(|a| a.0),
                output_allowance: sides.output_allowance.map(|a| a.0),
                models,
                per_minute: limits.per_minute.map(|l| l.0),
                per_day: limits.per_day.map(|l| l.0),
                per_month: limits.per_month.map(|l| l.0),
                make_default: default,
            };
            let id = ledger.update_plan(&PlanRef::Name(name), &change, &Actor::Cli)?;
            let plan = ledger
                .plans()?
                .into_iter()
                .find(|p| p.id == id)
                .ok_or("the plan was removed meanwhile")?;
            show(config, &plan.name, false)
        }
    }
}

fn list(config: &Config, json: bool) -> CmdResult {
    let plans = open(config)?.plans()?;
    if json {
        say!("{}", serde_json::to_string_pretty(&plans)?);
        return Ok(());
    }
    say!(
        "{:<6} {:<24} {:>14} {:>7} {:>14} {:>20}  MODELS",
        "ID",
        "NAME",
        "TOKENS/MONTH",
        "USERS",
        "PRICE/MONTH",
        "REQUESTS MIN/DAY/MO"
    );
    for p in &plans {
        say!(
            "{:<6} {:<24} {:>14} {:>7} {:>14} {:>20}  {}{}",
            p.id,
            p.name,
            p.monthly_allowance,
            p.users,
            price_text(p),
            limits_text(&p.request_limits),
            models_text(p),
            if p.is_default { " (default)" } else { "" }
        );
    }
    Ok(())
}

fn show(config: &Config, name: &str, json: bool) -> CmdResult {
    let plan = open(config)?.plan(name)?;
    if json {
        say!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    say!(
        "Plan #{} {}{}",
        plan.id,
        plan.name,
        if plan.is_default { " (default)" } else { "" }
    );
    say!("  tokens a month: {}", plan.monthly_allowance);
    let side = |a: Option<Allowance>| a.map_or_else(|| "none".to_owned(), |a| a.get().to_string());
    say!("  input/month:    {}", side(plan.sides.input));
    say!("  output/month:   {}", side(plan.sides.output));
    say!(
        "  overage:        {}",
        plan.overage.map_or_else(
            || "none (blocks)".to_owned(),
            |o| format!(
                "up to {} tokens a month at {} per 1,000",
                o.cap.get(),
                o.price.in_reais(false)
            )
        )
    );
    say!("  models:         {}", models_text(&plan));
    let limit = |l: Option<RequestLimit>| l.map_or_else(|| "none".to_owned(), |l| l.to_string());
    say!(
        "  requests/min:   {}",
        limit(plan.request_limits.per_minute)
    );
    say!("  requests/day:   {}", limit(plan.request_limits.per_day));
    say!("  requests/month: {}", limit(plan.request_limits.per_month));
    say!("  users:          {}", plan.users);
    say!("  price a month:  {}", price_text(&plan));
    say!(
        "  roles:          {}",
        if plan.roles.is_empty() {
            "none".to_owned()
        } else {
            plan.roles.join(", ")
        }
    );
    say!(
        "  this cycle:     {} tokens used, revenue {}",
        plan.used_this_cycle,
        format_centavos(plan.revenue_this_cycle, false)
    );
    Ok(())
}

fn price_text(plan: &PlanRow) -> String {
    plan.monthly_price.map_or_else(
        || "none".to_owned(),
        |p| format_centavos(p.centavos(), false),
    )
}

/// "10/50/-": a minute's, a day's and a month's limits, `-` for none.
fn limits_text(l: &RequestLimits) -> String {
    let one = |l: Option<RequestLimit>| l.map_or_else(|| "-".to_owned(), |l| l.to_string());
    format!(
        "{}/{}/{}",
        one(l.per_minute),
        one(l.per_day),
        one(l.per_month)
    )
}

fn models_text(plan: &PlanRow) -> String {
    match &plan.models {
        PlanModels::All => "all".to_owned(),
        only => only.to_string(),
    }
}
