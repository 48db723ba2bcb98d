//! `tokengate plans`: list, show, create and edit plans from the command line, with
//! the dashboard's rules (`domain::plan`) and its audit.

use super::{CmdResult, open, parse_tokens};
use crate::config::Config;
use crate::domain::identity::Role;
use crate::domain::money::format_centavos;
use crate::domain::plan::parse_roles;
use crate::domain::{
    Brl, PlanChange, PlanModels, PlanName, PlanSpec, RequestLimit, RequestLimits, TokenAmount,
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
        /// Tokens a month.
        #[arg(long, value_parser = parse_tokens)]
        allowance: TokenAmount,
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
    /// Change a plan: what is not given stays as it is. The name and models apply
    /// at once, the allowance from each user's next cycle.
    Edit {
        name: String,
        /// A new name.
        #[arg(long, value_parser = parse_name)]
        rename: Option<PlanName>,
        #[arg(long, value_parser = parse_tokens)]
        allowance: Option<TokenAmount>,
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
            models,
            limits,
            price,
            roles,
            default,
        } => {
            let spec = PlanSpec {
                monthly_price: price.and_then(|p| p.0),
                roles: roles.map(|r| r.0).unwrap_or_default(),
                name: parse_name(&name)?,
                monthly_allowance: allowance.into(),
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
            models,
            limits,
            price,
            roles,
            default,
        } => {
            let change = PlanChange {
                monthly_price: price.map(|p| p.0),
                roles: roles.map(|r| r.0),
                name: rename,
                monthly_allowance: allowance.map(Into::into),
                models,
                per_minute: limits.per_minute.map(|l| l.0),
                per_day: limits.per_day.map(|l| l.0),
                per_month: limits.per_month.map(|l| l.0),
                make_default: default,
            };
            let ledger = open(config)?;
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
