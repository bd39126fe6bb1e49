//! The `relayd` command line. Every mistake in flags, config or key files is
//! one line on stderr naming the problem, and exit code 2.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relay_kernel::flow::CcAlgorithm;
use relay_link::{LinkAddr, PeerAddr};
use relayd::config::Config;
use relayd::daemon::links::UdtCc;
use relayd::exit_policy::ExitPolicy;
use relayd::keys::Keys;
use relayd::peers::Peers;
use relayd::run::{self, RunOptions};
use relayd::spec::Spec;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(
    name = "relayd",
    version,
    about = "Onion-routing relay daemon: relays, tunnels, SOCKS5 proxy, exits, tracker"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Runtime threads (default 1; config key `threads`). One thread is the
    /// fastest on small hosts, see docs/config.md.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create DIR with identity and onion keys (unless present); print the node id.
    Keygen {
        /// Key directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the node id of the keys in DIR.
    Id {
        /// Key directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run a relay (and optionally tracker, exit, tunnels, proxies).
    Run(RunArgs),
    /// Client only: serve one tunnel `[HOST:]PORT>HOP>...>HOST:PORT`.
    Tunnel {
        /// The tunnel spec.
        spec: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Client only: serve a SOCKS5 proxy `[HOST:]PORT>HOP>...>internet`.
    Proxy {
        /// The proxy spec.
        spec: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Talk to a running node's control port.
    Ctl {
        /// The node's key directory (holds the cookie).
        #[arg(long)]
        dir: PathBuf,
        /// Control port address (default: the one the node wrote to DIR).
        #[arg(long)]
        control: Option<SocketAddr>,
        /// The command, e.g. `list circuits`.
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Start a small network on 127.0.0.1 and fetch a file through it.
    Demo {
        /// Run the self-test and exit 0 on success, 1 on failure.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Args, Default)]
struct RunArgs {
    /// Key directory (created with keys if missing).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Listen address, e.g. udt://127.0.0.1:9001 (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Keep a link to this peer ID@scheme://host:port (repeatable).
    #[arg(long)]
    connect: Vec<String>,
    /// Tracker ID@scheme://host:port (repeatable).
    #[arg(long)]
    tracker: Vec<String>,
    /// Serve relay lists to other nodes.
    #[arg(long)]
    act_as_tracker: bool,
    /// Exit policy rules, Tor syntax, e.g. "accept 127.0.0.1:*" (repeatable).
    #[arg(long)]
    exit_policy: Vec<String>,
    /// Control port (127.0.0.1 only).
    #[arg(long)]
    control: Option<String>,
    /// Tunnel spec (repeatable).
    #[arg(long)]
    tunnel: Vec<String>,
    /// SOCKS5 proxy spec (repeatable).
    #[arg(long)]
    proxy: Vec<String>,
    /// Peers file: lines `NAME ID@scheme://host:port`.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// TOML config mirroring these flags (flags add to / override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Tunnels carry all their connections on one shared circuit.
    #[arg(long)]
    share_circuits: bool,
    /// Seconds of silence after which a link is declared dead.
    #[arg(long, default_value_t = 8)]
    link_idle_timeout: u64,
    /// End-to-end congestion control of the circuits this node builds or
    /// ends: vegas (default) or bbr (keeps its rate on long lossy paths).
    #[arg(long)]
    circuit_cc: Option<String>,
    /// Congestion control of udt links: bbr (default), cubic or udt.
    #[arg(long)]
    udt_cc: Option<String>,
}

#[derive(Args)]
struct ClientArgs {
    /// Key directory (default: a temporary identity).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Tracker ID@scheme://host:port (repeatable).
    #[arg(long)]
    tracker: Vec<String>,
    /// Peers file.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// Tunnels carry all their connections on one shared circuit.
    #[arg(long)]
    share_circuits: bool,
    /// Circuit congestion control: vegas (default) or bbr.
    #[arg(long)]
    circuit_cc: Option<String>,
    /// Congestion control of udt links: bbr (default), cubic or udt.
    #[arg(long)]
    udt_cc: Option<String>,
}

/// A user mistake: printed as one line, exit code 2.
struct Usage(String);

fn parse_all<T>(
    what: &str,
    items: &[String],
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Usage> {
    items
        .iter()
        .map(|s| f(s).map_err(|e| Usage(format!("{what} {s:?}: {e}"))))
        .collect()
}

/// The daemon's options from the flags and, for `run --config`, the file
/// `main` already loaded.
fn options(mut a: RunArgs, config: Option<Config>) -> Result<RunOptions, Usage> {
    if let Some(c) = config {
        merge(&mut a, c);
    }
    let listen = parse_all("--listen", &a.listen, |s| {
        LinkAddr::parse(s).map_err(|e| e.to_string())
    })?;
    let connect = parse_all("--connect", &a.connect, |s| {
        PeerAddr::parse(s).map_err(|e| e.to_string())
    })?;
    let trackers = parse_all("--tracker", &a.tracker, |s| {
        PeerAddr::parse(s).map_err(|e| e.to_string())
    })?;
    let exit_policy = if a.exit_policy.is_empty() {
        ExitPolicy::reject_all()
    } else {
        ExitPolicy::parse_rules(&a.exit_policy).map_err(|e| Usage(format!("--exit-policy: {e}")))?
    };
    let control = match &a.control {
        Some(s) => Some(
            s.parse::<SocketAddr>()
                .map_err(|_| Usage(format!("--control {s:?}: not HOST:PORT")))?,
        ),
        None => None,
    };
    let tunnels = parse_all("--tunnel", &a.tunnel, |s| {
        Spec::parse(s).map_err(|e| e.to_string())
    })?;
    let proxies = parse_all("--proxy", &a.proxy, |s| {
        Spec::parse(s).map_err(|e| e.to_string())
    })?;
    for t in &tunnels {
        if t.is_proxy() {
            return Err(Usage("--tunnel: target `internet` is for --proxy".into()));
        }
    }
    for p in &proxies {
        if !p.is_proxy() {
            return Err(Usage("--proxy: the target must be `internet`".into()));
        }
    }
    let peers = match &a.peers {
        Some(p) => Peers::load(p).map_err(|e| Usage(e.to_string()))?,
        None => Peers::default(),
    };
    let circuit_cc = match &a.circuit_cc {
        Some(s) => s
            .parse::<CcAlgorithm>()
            .map_err(|e| Usage(format!("--circuit-cc: {e}")))?,
        None => CcAlgorithm::default(),
    };
    let udt_cc = match &a.udt_cc {
        Some(s) => s
            .parse::<UdtCc>()
            .map_err(|e| Usage(format!("--udt-cc: {e}")))?,
        None => UdtCc::default(),
    };
    if a.link_idle_timeout == 0 || a.link_idle_timeout > 3600 {
        return Err(Usage("--link-idle-timeout: 1 to 3600 seconds".into()));
    }
    Ok(RunOptions {
        dir: a.dir,
        listen,
        connect,
        trackers,
        act_as_tracker: a.act_as_tracker,
        exit_policy,
        control,
        tunnels,
        proxies,
        peers,
        share_circuits: a.share_circuits,
        idle_timeout: Duration::from_secs(a.link_idle_timeout),
        circuit_cc,
        udt_cc,
    })
}

/// Flags add to list settings from the config file and override the rest.
fn merge(a: &mut RunArgs, c: Config) {
    let prepend = |flags: &mut Vec<String>, conf: Vec<String>| {
        let mut v = conf;
        v.append(flags);
        *flags = v;
    };
    prepend(&mut a.listen, c.listen);
    prepend(&mut a.connect, c.connect);
    prepend(&mut a.tracker, c.tracker);
    prepend(&mut a.exit_policy, c.exit_policy);
    prepend(&mut a.tunnel, c.tunnel);
    prepend(&mut a.proxy, c.proxy);
    a.dir = a.dir.take().or(c.dir);
    a.control = a.control.take().or(c.control);
    a.peers = a.peers.take().or(c.peers);
    a.circuit_cc = a.circuit_cc.take().or(c.circuit_cc);
    a.udt_cc = a.udt_cc.take().or(c.udt_cc);
    a.act_as_tracker |= c.act_as_tracker;
}

/// The config file `run --config` names, read once, before the runtime and
/// the logger start (it sets `threads` and `log`).
fn load_config(cmd: &Command) -> Result<Option<Config>, Usage> {
    match cmd {
        Command::Run(RunArgs {
            config: Some(path), ..
        }) => Config::load(path)
            .map(Some)
            .map_err(|e| Usage(e.to_string())),
        _ => Ok(None),
    }
}

/// Runtime threads: `--threads`, else the config's `threads`, else 1.
fn runtime_threads(flag: Option<&str>, config: Option<&Config>) -> Result<usize, Usage> {
    match flag {
        Some(s) => relayd::runtime::parse_threads(s).map_err(|e| Usage(format!("--threads {e}"))),
        None => Ok(config.and_then(|c| c.threads).unwrap_or(1)),
    }
}

/// RUST_LOG wins, then `-v`, then the config's `log`, then warnings only.
fn init_logging(verbose: u8, config_filter: Option<String>) {
    let default = match (verbose, config_filter) {
        (0, Some(f)) => f,
        (0, None) => "warn".to_string(),
        (1, _) => "info".to_string(),
        _ => "debug".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = load_config(&cli.command);
    let loaded = config.as_ref().ok().and_then(Option::as_ref);
    init_logging(cli.verbose, loaded.and_then(|c| c.log.clone()));
    let (threads, config) = match (runtime_threads(cli.threads.as_deref(), loaded), config) {
        (Ok(n), Ok(config)) => (n, config),
        (Err(Usage(msg)), _) | (_, Err(Usage(msg))) => {
            eprintln!("relayd: {msg}");
            return ExitCode::from(2);
        }
    };
    let rt = match relayd::runtime::build(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relayd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run_command(cli.command, config)) {
        Ok(code) => ExitCode::from(code),
        Err(Usage(msg)) => {
            eprintln!("relayd: {msg}");
            ExitCode::from(2)
        }
    }
}

async fn run_command(cmd: Command, config: Option<Config>) -> Result<u8, Usage> {
    match cmd {
        Command::Keygen { dir } => {
            let (keys, created) = Keys::load_or_create(&dir).map_err(|e| Usage(e.to_string()))?;
            if created {
                println!("created keys in {}", dir.display());
            } else {
                println!("keys already present in {}", dir.display());
            }
            println!("{}", keys.node_id());
            Ok(0)
        }
        Command::Id { dir } => {
            let keys = Keys::load(&dir).map_err(|e| Usage(e.to_string()))?;
            println!("{}", keys.node_id());
            Ok(0)
        }
        Command::Run(args) => serve(options(args, config)?).await,
        Command::Tunnel { spec, client } => {
            let args = RunArgs {
                dir: client.dir,
                tracker: client.tracker,
                peers: client.peers,
                tunnel: vec![spec],
                share_circuits: client.share_circuits,
                circuit_cc: client.circuit_cc,
                udt_cc: client.udt_cc,
                link_idle_timeout: 8,
                ..RunArgs::default()
            };
            serve(options(args, None)?).await
        }
        Command::Proxy { spec, client } => {
            let args = RunArgs {
                dir: client.dir,
                tracker: client.tracker,
                peers: client.peers,
                proxy: vec![spec],
                circuit_cc: client.circuit_cc,
                udt_cc: client.udt_cc,
                link_idle_timeout: 8,
                ..RunArgs::default()
            };
            serve(options(args, None)?).await
        }
        Command::Ctl {
            dir,
            control,
            command,
        } => ctl(dir, control, command.join(" ")).await,
        Command::Demo { check } => Ok(relayd::demo::run(check).await.clamp(0, 255) as u8),
    }
}

/// Starts the daemon, prints what it serves (tests and scripts read these
/// lines), runs until a signal.
async fn serve(opts: RunOptions) -> Result<u8, Usage> {
    let running = match run::start(opts).await {
        Ok(r) => r,
        // A scheme this build lacks is the user's mistake (exit 2); a
        // port in use or a failed link is the environment's (exit 1).
        Err(run::RunError::Daemon(e))
            if !matches!(
                &e,
                relayd::daemon::DaemonError::Listen {
                    source: relay_link::LinkError::UnsupportedScheme(_),
                    ..
                }
            ) =>
        {
            eprintln!("relayd: {e}");
            return Ok(1);
        }
        Err(e) => return Err(Usage(e.to_string())),
    };
    let d = &running.client.daemon;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "id {}", d.id());
    for a in d.listen_addrs() {
        let _ = writeln!(out, "listen {}@{}", d.id(), a);
    }
    for a in &running.tunnels {
        let _ = writeln!(out, "tunnel {a}");
    }
    for a in &running.proxies {
        let _ = writeln!(out, "proxy {a}");
    }
    if let Some(a) = running.control {
        let _ = writeln!(out, "control {a}");
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    run::wait_for_signal().await;
    tracing::info!("shutting down: closing circuits");
    d.shutdown().await;
    Ok(0)
}

async fn ctl(dir: PathBuf, control: Option<SocketAddr>, command: String) -> Result<u8, Usage> {
    let (cookie, addr) = relayd::control::client_params(&dir, control).map_err(Usage)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Usage(format!("control port {addr}: {e}")))?;
    let (r, mut w) = tcp.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("AUTH {cookie}\n{command}\nquit\n").as_bytes())
        .await
        .map_err(|e| Usage(format!("control port {addr}: {e}")))?;
    match lines.next_line().await {
        Ok(Some(l)) if l == "OK" => {}
        Ok(Some(l)) => {
            eprintln!("relayd ctl: {l}");
            return Ok(1);
        }
        _ => return Err(Usage(format!("control port {addr}: closed"))),
    }
    while let Ok(Some(l)) = lines.next_line().await {
        if l == "OK" {
            return Ok(0);
        }
        if let Some(e) = l.strip_prefix("ERR ") {
            eprintln!("relayd ctl: {e}");
            return Ok(1);
        }
        println!("{l}");
    }
    Ok(1)
}
