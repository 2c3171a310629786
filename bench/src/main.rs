//! `rpc-bench`: the workloads W1..W7 of `shared/bench/WORKLOADS.md`, run against our adapters
//! (`rpc-tokio`, `rpc-async-std` under async-std and under smol), tarpc and a raw-TCP floor,
//! client and server in separate processes.
//!
//! ```text
//! rpc-bench server --port P --contender C [--block-bytes N] [--file PATH] [--quick]
//!     [--security plain|aes-gcm|aes-ctr|tls [--tls-dir DIR]]
//! rpc-bench client --port P --contender C --workload W [--quick] [--server-pid PID]
//!     [--security plain|aes-gcm|aes-ctr|tls [--tls-dir DIR]]
//! rpc-bench all [--workload W] [--contender C] [--quick] [--reps N] [--out DIR]
//! rpc-bench security [--workload W1,W2,W4] [--contender rpc-tokio,...,spark]
//!     [--security plain,aes-gcm,tls] [--quick] [--reps N] [--out DIR]
//! rpc-bench chart [--out DIR]     # redraw the chart and table from DIR/results.json
//! rpc-bench pending [--asks 10000,100000] [--contender C]   # server CPU per 10k parked asks
//! rpc-bench flood [--messages N] [--inbox N] [--contender C] # server memory after a flood
//! rpc-bench shuffle [--contender ours,spark] [--reps N] [--quick] [--streams] [--out DIR]  # W9
//! rpc-bench shuffle-server --port P --root DIR          # W9's server: our shuffle service
//! rpc-bench shuffle-client --port P --contender C [--server-pid PID] [--quick] [--streams]
//! ```
//!
//! The server listens on P (control plane) and P+1 (data plane). The client prints each
//! figure as `RESULT {"contender":..,"workload":..,"metric":..,"value":..}`. `all` spawns
//! server/client pairs itself, interleaved (A B A B ...), and writes a markdown table, a JSON
//! file and an SVG chart of the ratios under `bench/results/`.

// A command-line tool: its output is stdout.
#![allow(clippy::print_stdout)]

mod common;
mod harness;
mod ours;
mod pending;
mod raw;
mod secbench;
mod shuffle;
mod spark;
mod tarpc_side;

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

use common::{ClientOpts, Crypto, SecurityMode, ServerOpts, Sizes};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage:
  rpc-bench server --port P --contender C [--block-bytes N] [--file PATH] [--quick]
      [--security plain|aes-gcm|aes-ctr|tls [--tls-dir DIR]]
  rpc-bench client --port P --contender C --workload W [--quick] [--server-pid PID]
      [--security plain|aes-gcm|aes-ctr|tls [--tls-dir DIR]]
  rpc-bench all [--workload W] [--contender C] [--quick] [--reps N] [--out DIR]
  rpc-bench security [--workload W1,W2,W4] [--contender rpc-tokio,rpc-async-std,rpc-smol,spark]
      [--security plain,aes-gcm,tls] [--quick] [--reps N] [--out DIR]
      W1, W2, W4 with each connection security, beside Spark's transport (security.md)
  rpc-bench chart [--out DIR]
  rpc-bench pending [--asks 10000,100000] [--contender rpc-tokio|rpc-async-std|rpc-smol]
      server CPU seconds per 10k asks parked on a serial endpoint, at each N
  rpc-bench flood [--messages 1000000] [--inbox N] [--contender C]
      server memory growth after one-way messages flood a slow endpoint
  rpc-bench shuffle [--contender ours,spark] [--reps N] [--quick] [--streams] [--out DIR]
      W9: reducers fetching sort-shuffle blocks from our shuffle service and Spark's (shuffle.md)
  rpc-bench shuffle-server --port P --root DIR
  rpc-bench shuffle-client --port P --contender C [--server-pid PID] [--quick] [--streams]";

/// Tells the harness the server is listening.
pub(crate) fn ready() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY");
    let _ = out.flush();
}

/// Command-line flags: `--name value` pairs and `--flag` switches.
struct Args {
    command: String,
    pairs: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse() -> Result<Self, Error> {
        let mut it = std::env::args().skip(1).peekable();
        let command = it.next().ok_or(USAGE)?;
        let mut pairs = Vec::new();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {flag}"))?
                .to_owned();
            let value = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next(),
                _ => None,
            };
            pairs.push((name, value));
        }
        Ok(Self { command, pairs })
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn values(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.clone())
            .flat_map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    fn flag(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    fn required(&self, name: &str) -> Result<&str, Error> {
        self.value(name)
            .ok_or_else(|| format!("--{name} is required").into())
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("rpc-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let args = Args::parse()?;
    let quick = args.flag("quick");
    let sizes = Sizes::new(quick);
    match args.command.as_str() {
        "server" => {
            let contender = args.required("contender")?.to_owned();
            let file = match args.value("file") {
                Some("none") => None,
                Some(path) => Some(path.into()),
                None if contender != "tarpc" => {
                    let path = common::default_file(sizes.file);
                    common::ensure_file(&path, sizes.file)?;
                    Some(path)
                }
                None => None,
            };
            let opts = ServerOpts {
                port: args.required("port")?.parse()?,
                block: match args.value("block-bytes") {
                    Some(n) => n.parse()?,
                    None => sizes.block,
                },
                file,
                crypto: crypto(&args, &contender)?,
            };
            on_runtime(&contender.clone(), move |rt| async move {
                match contender.as_str() {
                    "tarpc" => tarpc_side::server(opts).await,
                    "raw" => raw::server(opts).await,
                    _ => ours::server(rt.expect("our contenders have a runtime"), opts).await,
                }
            })
        }
        "client" => {
            let opts = ClientOpts {
                port: args.required("port")?.parse()?,
                contender: args.required("contender")?.to_owned(),
                workload: args.required("workload")?.to_owned(),
                sizes,
                server_pid: args.value("server-pid").map(str::parse).transpose()?,
                crypto: crypto(&args, args.required("contender")?)?,
            };
            on_runtime(&opts.contender.clone(), move |rt| async move {
                match opts.contender.as_str() {
                    "tarpc" => tarpc_side::client(opts).await,
                    "raw" => raw::client(opts).await,
                    _ => ours::client(rt.expect("our contenders have a runtime"), opts).await,
                }
            })
        }
        "all" => harness::all(&args_for_harness(&args, quick)?),
        "chart" => harness::chart(&args_for_harness(&args, quick)?),
        "security" => secbench::run(&args_for_security(&args, quick)?),
        "pending" => {
            let asks = match args.values("asks") {
                given if given.is_empty() => vec![10_000, 100_000],
                given => given
                    .iter()
                    .map(|n| n.parse())
                    .collect::<Result<Vec<usize>, _>>()?,
            };
            let contender = args.value("contender").unwrap_or("rpc-tokio");
            if !matches!(contender, "rpc-tokio" | "rpc-async-std" | "rpc-smol") {
                return Err(format!("pending runs on our contenders, not {contender}").into());
            }
            pending::run(contender, &asks)
        }
        "flood" => {
            let contender = args.value("contender").unwrap_or("rpc-tokio");
            let messages = args.value("messages").map_or(Ok(1_000_000), str::parse)?;
            let inbox = args.value("inbox").map(str::parse).transpose()?;
            pending::flood(contender, messages, inbox)
        }
        "pending-server" => {
            let contender = args.required("contender")?.to_owned();
            let port = args.required("port")?.parse()?;
            let asks = args.required("asks")?.parse()?;
            let inbox = args.value("inbox").map(str::parse).transpose()?;
            let slow = args.flag("slow");
            on_runtime(&contender, move |rt| async move {
                let rt = rt.expect("our contenders have a runtime");
                pending::server(rt, port, asks, inbox, slow).await
            })
        }
        "shuffle" => shuffle::run(&shuffle::Plan {
            contenders: pick(args.values("contender"), &shuffle::CONTENDERS)?,
            quick,
            reps: match args.value("reps") {
                Some(n) => n.parse()?,
                None if quick => 1,
                None => 3,
            },
            out: args
                .value("out")
                .map_or_else(shuffle::default_out, Into::into),
            streams: args.flag("streams"),
        }),
        "shuffle-server" => shuffle::server(
            args.required("port")?.parse()?,
            args.required("root")?.into(),
        ),
        "shuffle-client" => shuffle::client(
            args.required("port")?.parse()?,
            args.required("contender")?.to_owned(),
            args.value("server-pid").map(str::parse).transpose()?,
            quick,
            args.flag("streams"),
        ),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!(
            "unknown command {other} (server, client, all, chart, security, pending, flood or shuffle)"
        )
        .into()),
    }
}

/// `--security` and `--tls-dir` of a server or client: plain unless given, and only for our
/// contenders.
fn crypto(args: &Args, contender: &str) -> Result<Crypto, Error> {
    let mode = args
        .value("security")
        .map_or(Ok(SecurityMode::Plain), SecurityMode::parse)?;
    if mode != SecurityMode::Plain && matches!(contender, "tarpc" | "raw") {
        return Err(format!(
            "--security {} runs on our contenders, not {contender}",
            mode.name()
        )
        .into());
    }
    Ok(Crypto {
        mode,
        tls_dir: args.value("tls-dir").map(Into::into),
    })
}

fn pick(given: Vec<String>, all: &[&str]) -> Result<Vec<String>, Error> {
    if given.is_empty() {
        return Ok(all.iter().map(|s| (*s).to_owned()).collect());
    }
    for g in &given {
        if !all.contains(&g.as_str()) {
            return Err(format!("unknown {g} (one of {})", all.join(", ")).into());
        }
    }
    Ok(given)
}

fn args_for_security(args: &Args, quick: bool) -> Result<secbench::Plan, Error> {
    let modes = match args.values("security") {
        given if given.is_empty() => secbench::DEFAULT_MODES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        given => given,
    };
    Ok(secbench::Plan {
        workloads: pick(args.values("workload"), &secbench::WORKLOADS)?,
        contenders: pick(args.values("contender"), &secbench::CONTENDERS)?,
        modes: modes
            .iter()
            .map(|m| SecurityMode::parse(m))
            .collect::<Result<_, _>>()?,
        quick,
        reps: match args.value("reps") {
            Some(n) => n.parse()?,
            None if quick => 1,
            None => 3,
        },
        out: args
            .value("out")
            .map(Into::into)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/results").into()),
    })
}

fn args_for_harness(args: &Args, quick: bool) -> Result<harness::Plan, Error> {
    Ok(harness::Plan {
        workloads: pick(args.values("workload"), &common::WORKLOADS)?,
        contenders: pick(args.values("contender"), &common::CONTENDERS)?,
        quick,
        reps: match args.value("reps") {
            Some(n) => n.parse()?,
            None if quick => 1,
            None => 3,
        },
        out: args
            .value("out")
            .map(Into::into)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/results").into()),
    })
}

/// Runs `body` on the contender's runtime, with our `Runtime` for our contenders.
fn on_runtime<F, Fut>(contender: &str, body: F) -> Result<(), Error>
where
    F: FnOnce(Option<Arc<dyn rpc_tokio::Runtime>>) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    match contender {
        "rpc-tokio" | "tarpc" | "raw" => {
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let ours = contender == "rpc-tokio";
            tokio.block_on(async move {
                let rt = ours.then(rpc_tokio::runtime);
                body(rt).await
            })
        }
        "rpc-async-std" => async_std::task::block_on(body(Some(rpc_async_std::runtime()))),
        "rpc-smol" => {
            // Our tasks on a smol executor of our own, run by two threads (one per core).
            let executor = Arc::new(async_executor::Executor::new());
            for _ in 0..2 {
                let ex = executor.clone();
                std::thread::spawn(move || {
                    smol::block_on(ex.run(futures::future::pending::<()>()))
                });
            }
            let rt: Arc<dyn rpc_tokio::Runtime> =
                Arc::new(rpc_async_std::AsyncIoRuntime::with_executor(executor));
            smol::block_on(body(Some(rt)))
        }
        other => Err(format!("unknown contender {other}").into()),
    }
}
