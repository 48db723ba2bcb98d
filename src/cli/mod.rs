//! The command line (docs/configuration.md). Every command reads the same environment.

use crate::config::Config;
use crate::db::Database;
use crate::domain::{Email, TokenAmount};
use crate::ledger::{Actor, Ledger, UserSummary, parse_user_ref};
use crate::startup::Application;
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Read, Write};

/// `println!` that returns a closed pipe as an error (`tokengate users list | head
/// -1`), where `println!` would panic; `main` ends quietly on it.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}
use std::process::ExitCode;

mod distributors;
mod plans;

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "Per-user token metering between LibreChat and LiteLLM."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy and dashboard (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration and test the database and upstream.
    Check,
    /// Exit 0 when the running server on TOKENGATE_LISTEN is ready (for container
    /// health checks).
    Healthcheck,
    /// Manage admin accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage credit top-ups.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Codes worth tokens, which users redeem on their page.
    #[command(subcommand)]
    Codes(CodesCommand),
    /// Inspect users and balances.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Create, change and inspect plans.
    #[command(subcommand)]
    Plans(plans::PlansCommand),
    /// Distributors who resell the service: their client keys and pools.
    #[command(subcommand)]
    Distributors(distributors::DistributorsCommand),
    /// Check mail delivery.
    #[command(subcommand)]
    Mail(MailCommand),
}

#[derive(Subcommand)]
enum MailCommand {
    /// Send a test message to ADDRESS with the configured TOKENGATE_SMTP_URL (or write
    /// it under TOKENGATE_MAIL_DIR when none is set).
    Test { address: String },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add an admin. The password is read from standard input, or generated and
    /// printed when standard input is a terminal.
    Add {
        email: String,
        /// An admin of this distributor only (its name or #id): they see and manage
        /// only its users, plans, codes, requests, alerts and audit.
        #[arg(long)]
        distributor: Option<String>,
    },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// Grant non-expiring credits to a user (LibreChat id, email, or #id).
    Grant {
        user: String,
        #[arg(value_parser = parse_tokens, allow_hyphen_values = true)]
        tokens: TokenAmount,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand)]
enum CodesCommand {
    /// Make a batch of single-use codes and print them as CSV (the only time they
    /// are shown: tokengate keeps their hashes).
    Create {
        /// Tokens each code adds.
        #[arg(long, value_parser = parse_tokens)]
        tokens: TokenAmount,
        /// How many codes (1 to 10,000).
        #[arg(long)]
        count: i64,
        /// Last day the codes work (YYYY-MM-DD, in TOKENGATE_TIMEZONE).
        #[arg(long)]
        valid_until: chrono::NaiveDate,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// List every user with their balance.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one user (LibreChat id, email, or #id).
    Show {
        user: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_tokens(s: &str) -> Result<TokenAmount, String> {
    TokenAmount::parse(s).map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    // Everything tokengate creates is its own: the database (emails, code digests,
    // the dashboard's session key), the spool, mails written as files. Group and
    // others get nothing, whatever umask the process was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokengate: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_logging(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Migrate => migrate(&config),
        Command::Check => check(&config),
        Command::Healthcheck => healthcheck(&config),
        Command::Admin(AdminCommand::Add { email, distributor }) => {
            admin_add(&config, &email, distributor.as_deref())
        }
        Command::Codes(CodesCommand::Create {
            tokens,
            count,
            valid_until,
            note,
        }) => codes_create(&config, tokens, count, valid_until, note.as_deref()),
        Command::Credits(CreditsCommand::Grant { user, tokens, note }) => {
            grant(&config, &user, tokens, note.as_deref())
        }
        Command::Users(UsersCommand::List { json }) => users_list(&config, json),
        Command::Users(UsersCommand::Show { user, json }) => users_show(&config, &user, json),
        Command::Plans(command) => plans::run(&config, command),
        Command::Distributors(command) => distributors::run(&config, command),
        Command::Mail(MailCommand::Test { address }) => mail_test(&config, &address),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it did not read is not wanted.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokengate: {e}");
            ExitCode::FAILURE
        }
    }
}

type CmdResult = Result<(), Box<dyn std::error::Error>>;

fn serve(config: Config) -> CmdResult {
    more_descriptors();
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config)?;
        app.run_until_stopped().await?;
        Ok(())
    })
}

/// Raises the soft limit on open files to the hard one: each connection is a
/// descriptor, and a soft limit of 1,024 (common outside containers) is a few hundred
/// slow clients away from refusing LibreChat.
fn more_descriptors() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the limit on open files");
        }
    }
}

fn healthcheck(config: &Config) -> CmdResult {
    let addr: std::net::SocketAddr = config.listen.parse()?;
    // A server listening on every interface answers on loopback.
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("http://{host}:{}/readyz", addr.port());
    let status = actix_web::rt::System::new().block_on(async {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()?
            .get(&url)
            .send()
            .await
            .map(|r| r.status())
    })?;
    if status.is_success() {
        say!("ready");
        Ok(())
    } else {
        Err(format!("{url} answered {status}").into())
    }
}

fn mail_test(config: &Config, address: &str) -> CmdResult {
    let to = Email::parse(address).map_err(|e| format!("{address:?}: {e}"))?;
    let outcome = actix_web::rt::System::new()
        .block_on(async { crate::mail::send_test(config, to.as_str()).await })?;
    match outcome {
        (crate::mail::Delivered::Smtp, via) => say!("Test message sent to {to} via {via}."),
        (crate::mail::Delivered::File(path), _) => say!(
            "No TOKENGATE_SMTP_URL is set: the test message was written to {}.",
            path.display()
        ),
    }
    Ok(())
}

fn open(config: &Config) -> Result<Ledger, Box<dyn std::error::Error>> {
    let db = Database::new(&config.database_url, 2);
    db.migrate()?;
    Ok(Ledger::new(
        db,
        config.clock(),
        config.timezone,
        config.instance_id.clone(),
        config.hold_max_age,
    ))
}

fn migrate(config: &Config) -> CmdResult {
    let db = Database::new(&config.database_url, 1);
    let applied = db.migrate()?;
    if applied.is_empty() {
        say!("Database {} is up to date.", config.database_url.redacted());
    } else {
        say!(
            "Applied {} migration(s) to {}: {}",
            applied.len(),
            config.database_url.redacted(),
            applied.join(", ")
        );
    }
    Ok(())
}

/// Checks the configuration (already parsed by now), the database, LiteLLM and the
/// mail server, each on its own line, and reports every one: a LiteLLM that is down
/// must not hide what the mail server would say.
fn check(config: &Config) -> CmdResult {
    say!("configuration: ok");
    let mut failed = 0;
    let mut report = |what: String, result: Result<(), String>| -> std::io::Result<()> {
        match result {
            Ok(()) => writeln!(std::io::stdout().lock(), "{what}: ok"),
            Err(e) => {
                failed += 1;
                writeln!(std::io::stdout().lock(), "{what}: FAILED: {e}")
            }
        }
    };
    let db = Database::new(&config.database_url, 1);
    report(
        format!("database {}", config.database_url.redacted()),
        db.ping().map_err(|e| e.to_string()),
    )?;
    let upstream = match crate::proxy::upstream::Upstream::new(config) {
        Ok(upstream) => {
            let answer = actix_web::rt::System::new().block_on(async {
                upstream
                    .get("/models", Some(std::time::Duration::from_secs(5)))
                    .await
            });
            match answer {
                Ok(res) if res.status().is_success() => Ok(()),
                Ok(res) => Err(format!(
                    "answered {} to GET /models (check TOKENGATE_UPSTREAM_KEY)",
                    res.status()
                )),
                Err(e) => Err(format!("{e:?}")),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    report(format!("upstream {}", config.upstream_url), upstream)?;
    let mail = match crate::mail::Mailer::from_config(config) {
        Ok(mailer) => {
            let checked = actix_web::rt::System::new().block_on(mailer.check());
            (
                format!("mail ({})", mailer.describe()),
                checked.map_err(|e| e.to_string()),
            )
        }
        Err(e) => ("mail".to_owned(), Err(e.to_string())),
    };
    report(mail.0, mail.1)?;
    if failed > 0 {
        return Err(format!("{failed} of 3 checks failed").into());
    }
    Ok(())
}

fn admin_add(config: &Config, email: &str, distributor: Option<&str>) -> CmdResult {
    let email = Email::parse(email).map_err(|_| format!("{email:?} is not an email address"))?;
    let stdin = std::io::stdin();
    let (password, generated) = if stdin.is_terminal() {
        (crate::bootstrap::random_token(12)?, true)
    } else {
        let mut input = String::new();
        stdin.lock().read_to_string(&mut input)?;
        let line = input.lines().next().unwrap_or("").to_owned();
        if line.is_empty() {
            (crate::bootstrap::random_token(12)?, true)
        } else {
            (line, false)
        }
    };
    let ledger = open(config)?;
    let distributor_id = match distributor {
        None => None,
        Some(name) => Some(
            ledger
                .find_distributor(name)?
                .ok_or_else(|| format!("no distributor named {name:?}"))?,
        ),
    };
    crate::bootstrap::add_admin(
        ledger.db(),
        email.as_str(),
        &password,
        distributor_id,
        config.clock().now().naive_utc(),
    )?;
    let of = distributor.map_or(String::new(), |d| format!(" (of {d} only)"));
    if generated {
        say!("Admin {email}{of} created. Password (shown only now): {password}");
    } else {
        say!("Admin {email}{of} created.");
    }
    Ok(())
}

fn grant(config: &Config, user: &str, tokens: TokenAmount, note: Option<&str>) -> CmdResult {
    let ledger = open(config)?;
    let note = note.map(|n| {
        n.chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect::<String>()
    });
    let summary =
        ledger.grant_credits(&parse_user_ref(user), tokens, &Actor::Cli, note.as_deref())?;
    say!(
        "Granted {tokens} tokens to {}. Credits: {}; remaining: {}.",
        label(&summary),
        summary.credits,
        summary.remaining
    );
    Ok(())
}

fn codes_create(
    config: &Config,
    tokens: TokenAmount,
    count: i64,
    valid_until: chrono::NaiveDate,
    note: Option<&str>,
) -> CmdResult {
    use crate::admin::pages::codes;
    if !(1..=crate::ledger::credits::MAX_BATCH).contains(&count) {
        return Err(format!(
            "--count must be from 1 to {}",
            crate::ledger::credits::MAX_BATCH
        )
        .into());
    }
    let ledger = open(config)?;
    let today = ledger.now().with_timezone(&config.timezone).date_naive();
    let expires_at = codes::end_of(valid_until, config.timezone)
        .filter(|_| valid_until >= today && valid_until <= codes::latest_day(today))
        .ok_or("--valid-until must be from today to ten years on")?;
    let note = note.map(|n| {
        n.chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect::<String>()
    });
    let (batch, list) =
        ledger.create_code_batch(tokens, count, expires_at, note.as_deref(), &Actor::Cli)?;
    // Written at once and checked: a closed pipe must say the codes were lost, not
    // panic halfway through them.
    let csv = codes::csv(batch, tokens.get(), valid_until, &list);
    let mut out = std::io::stdout().lock();
    out.write_all(csv.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            format!("batch #{batch} was made, but its codes could not be written out ({e}); they cannot be shown again: make a new batch")
        })?;
    eprintln!(
        "Batch #{batch}: {count} codes of {tokens} tokens, valid until {valid_until}. Keep this output: the codes are not shown again."
    );
    Ok(())
}

fn users_list(config: &Config, json: bool) -> CmdResult {
    let users = open(config)?.list_users()?;
    if json {
        say!("{}", serde_json::to_string_pretty(&users)?);
        return Ok(());
    }
    if users.is_empty() {
        say!("No users yet: they appear on their first request.");
        return Ok(());
    }
    say!(
        "{:<6} {:<26} {:<30} {:<12} {:>14} {:>14} {:>5}",
        "ID",
        "LIBRECHAT ID",
        "EMAIL",
        "PLAN",
        "USED",
        "REMAINING",
        "USE%"
    );
    for u in &users {
        say!(
            "{:<6} {:<26} {:<30} {:<12} {:>14} {:>14} {:>4}%{}",
            u.id,
            u.external_id.as_deref().unwrap_or("-"),
            u.email.as_deref().unwrap_or("-"),
            u.plan,
            u.used_this_cycle,
            u.remaining,
            u.used_percent,
            if u.suspended {
                " (suspended)"
            } else if u.blocked {
                " (blocked)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn users_show(config: &Config, user: &str, json: bool) -> CmdResult {
    let ledger = open(config)?;
    let id = ledger
        .find_user(&parse_user_ref(user))?
        .ok_or_else(|| format!("no user matches {user:?}"))?;
    let summary = ledger.user_summary(id)?;
    if json {
        say!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    say!("User {}", label(&summary));
    say!(
        "  plan:            {} ({} tokens a month)",
        summary.plan,
        summary.monthly_allowance
    );
    say!(
        "  cycle:           {} (resets {})",
        summary.cycle,
        summary.cycle_resets_at
    );
    say!("  allowance left:  {}", summary.allowance_left);
    say!("  credits:         {}", summary.credits);
    say!("  held:            {}", summary.held);
    say!("  remaining:       {}", summary.remaining);
    say!(
        "  used this cycle: {} ({}%)",
        summary.used_this_cycle,
        summary.used_percent
    );
    say!(
        "  blocked:         {}",
        if summary.blocked {
            "yes (out of tokens)"
        } else {
            "no"
        }
    );
    say!(
        "  suspended:       {}",
        if summary.suspended { "yes" } else { "no" }
    );
    Ok(())
}

fn label(u: &UserSummary) -> String {
    let who = u
        .email
        .clone()
        .or_else(|| u.external_id.clone())
        .unwrap_or_default();
    format!("#{} {}", u.id, who)
}
