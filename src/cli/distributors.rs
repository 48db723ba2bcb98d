//! `tokengate distributors`: who resells the service, their client keys and pools.

use super::{CmdResult, open, parse_tokens};
use crate::config::Config;
use crate::domain::{DistributorName, Pool, TenantId, TokenAmount};
use crate::ledger::Actor;
use crate::ledger::distributors::{DistributorChange, NewKey};
use crate::proxy::auth::ClientKeys;
use clap::Subcommand;
use std::io::Write;

#[derive(Subcommand)]
pub enum DistributorsCommand {
    /// Add a distributor. Give it a client key next (`add-key`).
    Create {
        name: String,
        /// Whom its users are sent to in block texts and mails (an email address,
        /// a phone, a link); without it, TOKENGATE_SUPPORT_CONTACT.
        #[arg(long)]
        contact: Option<String>,
        /// The tenant id a shared LibreChat sends for its users
        /// ({{LIBRECHAT_USER_TENANTID}}).
        #[arg(long)]
        tenant: Option<String>,
        /// The most its users may use together in a month, in tokens.
        #[arg(long, value_parser = parse_tokens)]
        pool: Option<TokenAmount>,
    },
    /// Change a distributor (by name or #id); what is not given stays. `none`
    /// removes the contact, the tenant id or the pool.
    Edit {
        distributor: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        contact: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        pool: Option<String>,
    },
    /// List the distributors, with their pools and keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make a client key for a distributor's LibreChat (without a distributor: for
    /// the install's own) and print it, the only time it is shown.
    AddKey {
        distributor: Option<String>,
        /// For one LibreChat shared by several distributors: its requests name
        /// each user's distributor in X-LibreChat-Tenant-Id.
        #[arg(long)]
        names_distributors: bool,
    },
    /// Revoke a stored client key by the label `list` shows; it stops working
    /// within seconds.
    RevokeKey { label: String },
}

macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

pub fn run(config: &Config, command: DistributorsCommand) -> CmdResult {
    let ledger = open(config)?;
    match command {
        DistributorsCommand::Create {
            name,
            contact,
            tenant,
            pool,
        } => {
            let change = DistributorChange {
                name: Some(parse_name(&name)?),
                contact: Some(contact.as_deref().map(parse_contact).transpose()?),
                tenant: Some(tenant.as_deref().map(parse_tenant).transpose()?),
                pool: Some(pool.map(|cap| Pool { cap })),
            };
            let id = ledger.create_distributor(&change, &Actor::Cli)?;
            say!(
                "Distributor {} created (#{id}). Give it a client key: tokengate distributors add-key {:?}",
                name.trim(),
                name.trim()
            );
        }
        DistributorsCommand::Edit {
            distributor,
            name,
            contact,
            tenant,
            pool,
        } => {
            let none = |v: &str| v.trim().eq_ignore_ascii_case("none");
            let change = DistributorChange {
                name: name.as_deref().map(parse_name).transpose()?,
                contact: contact
                    .as_deref()
                    .map(|c| {
                        if none(c) {
                            Ok(None)
                        } else {
                            parse_contact(c).map(Some)
                        }
                    })
                    .transpose()?,
                tenant: tenant
                    .as_deref()
                    .map(|t| {
                        if none(t) {
                            Ok(None)
                        } else {
                            parse_tenant(t).map(Some)
                        }
                    })
                    .transpose()?,
                pool: pool
                    .as_deref()
                    .map(|p| {
                        if none(p) {
                            Ok(None)
                        } else {
                            parse_tokens(p).map(|cap| Some(Pool { cap }))
                        }
                    })
                    .transpose()?,
            };
            let id = ledger.edit_distributor(&distributor, &change, &Actor::Cli)?;
            say!("Distributor #{id} changed.");
        }
        DistributorsCommand::List { json } => {
            let rows = ledger.list_distributors()?;
            if json {
                say!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                say!("No distributors: every user is the install's own.");
            }
            for d in rows {
                let pool = match d.pool_cap {
                    Some(cap) => format!("pool {}/{}", d.pool_used, cap),
                    None => "no pool".to_owned(),
                };
                say!(
                    "#{} {}\t{} users\t{pool}\tcontact {}\ttenant {}",
                    d.id,
                    d.name,
                    d.users,
                    d.contact.as_deref().unwrap_or("-"),
                    d.tenant.as_deref().unwrap_or("-")
                );
                for k in d.keys {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "live"
                    };
                    let names = if k.names_distributors {
                        ", names distributors"
                    } else {
                        ""
                    };
                    say!("    key {} ({state}{names})", k.label);
                }
            }
        }
        DistributorsCommand::AddKey {
            distributor,
            names_distributors,
        } => {
            let key = format!("tg-{}", crate::bootstrap::random_token(24)?);
            // The label is what `list` shows and `revoke-key` takes: the key's first
            // characters, not enough to use it.
            let label = key.chars().take(11).collect::<String>();
            let new = NewKey {
                digest_hex: hex::encode(ClientKeys::digest(&key)),
                label: label.clone(),
                names_distributors,
            };
            ledger.add_client_key(distributor.as_deref(), &new, &Actor::Cli)?;
            say!(
                "Client key {label}… created (shown only now; set it as the apiKey of LibreChat's endpoint):\n{key}"
            );
        }
        DistributorsCommand::RevokeKey { label } => {
            let label = label.trim().trim_end_matches('…');
            match ledger.revoke_client_key(label, &Actor::Cli)? {
                0 => return Err(format!("no live key is labelled {label:?}").into()),
                n => say!("Revoked {n} key(s) labelled {label}; they stop working within seconds."),
            }
        }
    }
    Ok(())
}

fn parse_name(raw: &str) -> Result<DistributorName, String> {
    DistributorName::parse(raw).ok_or_else(|| {
        format!("{raw:?} is not a distributor name (1 to 80 visible characters, not \"direct\" nor a number)")
    })
}

fn parse_tenant(raw: &str) -> Result<TenantId, String> {
    TenantId::parse(raw.trim()).ok_or_else(|| {
        format!("{raw:?} is not a tenant id (1 to 128 characters: letters, digits, punctuation)")
    })
}

/// A contact is shown to users in the chat: one line, visible characters.
fn parse_contact(raw: &str) -> Result<String, String> {
    let contact = raw.trim();
    let ok = !contact.is_empty()
        && contact.chars().count() <= 120
        && !contact
            .chars()
            .any(|c| c.is_control() || crate::domain::text::is_hidden(c));
    if ok {
        Ok(contact.to_owned())
    } else {
        Err(format!(
            "{raw:?} is not a contact (one line of at most 120 visible characters)"
        ))
    }
}
