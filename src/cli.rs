//! The command line (docs/configuration.md). Every command reads the same environment.

use crate::config::Config;
use crate::db::Database;
use crate::domain::{Email, TokenAmount};
use crate::ledger::{Actor, Ledger, UserSummary, parse_user_ref};
use crate::startup::Application;
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Read};
use std::process::ExitCode;

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
    Add { email: String },
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
        Command::Admin(AdminCommand::Add { email }) => admin_add(&config, &email),
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
        Command::Mail(MailCommand::Test { address }) => mail_test(&config, &address),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
        println!("ready");
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
        (crate::mail::Delivered::Smtp, via) => println!("Test message sent to {to} via {via}."),
        (crate::mail::Delivered::File(path), _) => println!(
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
        println!("Database {} is up to date.", config.database_url.redacted());
    } else {
        println!(
            "Applied {} migration(s) to {}: {}",
            applied.len(),
            config.database_url.redacted(),
            applied.join(", ")
        );
    }
    Ok(())
}

fn check(config: &Config) -> CmdResult {
    println!("configuration: ok");
    let db = Database::new(&config.database_url, 1);
    db.ping()
        .map_err(|e| format!("database {}: {e}", config.database_url.redacted()))?;
    println!("database {}: reachable", config.database_url.redacted());
    let upstream = crate::proxy::upstream::Upstream::new(config)?;
    let reachable = actix_web::rt::System::new().block_on(async {
        upstream
            .get("/models", Some(std::time::Duration::from_secs(5)))
            .await
    });
    match reachable {
        Ok(res) if res.status().is_success() => {
            println!("upstream {}: reachable", config.upstream_url)
        }
        Ok(res) => {
            return Err(format!(
                "upstream {}: answered {} to GET /models (check TOKENGATE_UPSTREAM_KEY)",
                config.upstream_url,
                res.status()
            )
            .into());
        }
        Err(e) => return Err(format!("upstream {}: {e:?}", config.upstream_url).into()),
    }
    let mailer = crate::mail::Mailer::from_config(config)?;
    actix_web::rt::System::new()
        .block_on(mailer.check())
        .map_err(|e| format!("mail ({}): {e}", mailer.describe()))?;
    println!("mail ({}): ok", mailer.describe());
    Ok(())
}

fn admin_add(config: &Config, email: &str) -> CmdResult {
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
    let db = Database::new(&config.database_url, 1);
    db.migrate()?;
    crate::bootstrap::add_admin(
        &db,
        email.as_str(),
        &password,
        config.clock().now().naive_utc(),
    )?;
    if generated {
        println!("Admin {email} created. Password (shown only now): {password}");
    } else {
        println!("Admin {email} created.");
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
    println!(
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
    std::io::Write::write_all(&mut out, csv.as_bytes())
        .and_then(|()| std::io::Write::flush(&mut out))
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
        println!("{}", serde_json::to_string_pretty(&users)?);
        return Ok(());
    }
    if users.is_empty() {
        println!("No users yet: they appear on their first request.");
        return Ok(());
    }
    println!(
        "{:<6} {:<26} {:<30} {:<12} {:>14} {:>14} {:>5}",
        "ID", "LIBRECHAT ID", "EMAIL", "PLAN", "USED", "REMAINING", "USE%"
    );
    for u in &users {
        println!(
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
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!("User {}", label(&summary));
    println!(
        "  plan:            {} ({} tokens a month)",
        summary.plan, summary.monthly_allowance
    );
    println!(
        "  cycle:           {} (resets {})",
        summary.cycle, summary.cycle_resets_at
    );
    println!("  allowance left:  {}", summary.allowance_left);
    println!("  credits:         {}", summary.credits);
    println!("  held:            {}", summary.held);
    println!("  remaining:       {}", summary.remaining);
    println!(
        "  used this cycle: {} ({}%)",
        summary.used_this_cycle, summary.used_percent
    );
    println!(
        "  blocked:         {}",
        if summary.blocked {
            "yes (out of tokens)"
        } else {
            "no"
        }
    );
    println!(
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
