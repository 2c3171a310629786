//! `rpc-bench all`: spawns server/client process pairs, interleaved (A B A B ...), takes the
//! median of the repetitions and writes the report: `results.md`, `results.json`,
//! `ratios.svg`. The `iperf3` contender (W4, W7) runs the `iperf3` program instead of a pair
//! of ours, when it is on the PATH.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, Sizes};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What `all` runs.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) workloads: Vec<String>,
    pub(crate) contenders: Vec<String>,
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) out: PathBuf,
}

/// (workload, metric, contender) -> the figure of each repetition.
type Figures = BTreeMap<(String, String, String), Vec<f64>>;

/// Kills the server when the pair is done, however it ends.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two free adjacent ports: control and data.
pub(crate) fn free_ports() -> Result<u16, Error> {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err("no two free adjacent ports".into())
}

fn run_pair(
    plan: &Plan,
    sizes: &Sizes,
    contender: &str,
    workload: &str,
) -> Result<Vec<(String, f64)>, Error> {
    let limit = Duration::from_secs(if plan.quick { 60 } else { 600 });
    if contender == "spark" {
        return crate::spark::run_all_pair(sizes, plan.quick, workload, &plan.out, limit);
    }
    let exe = std::env::current_exe()?;
    let port = free_ports()?.to_string();
    let mut server = Command::new(&exe);
    server.args(["server", "--port", &port, "--contender", contender]);
    let block = if common::needs_block(workload) {
        sizes.block
    } else {
        0
    };
    server.args(["--block-bytes", &block.to_string()]);
    let file = if workload == "W7" {
        common::default_file(sizes.file).display().to_string()
    } else {
        "none".to_owned()
    };
    server.args(["--file", &file]);
    if plan.quick {
        server.arg("--quick");
    }
    let client_args = move |pid: u32| {
        let mut client = Command::new(&exe);
        client.args([
            "client",
            "--port",
            &port,
            "--contender",
            contender,
            "--workload",
            workload,
            "--server-pid",
            &pid.to_string(),
        ]);
        if plan.quick {
            client.arg("--quick");
        }
        client
    };
    run_commands(
        server,
        client_args,
        limit,
        &format!("{contender} {workload}"),
    )
}

/// Spawns `server`, waits for its `READY` line, runs the client `client(server pid)` makes
/// (killed past `limit`), kills the server, and returns the client's `RESULT` figures.
pub(crate) fn run_commands(
    mut server: Command,
    client: impl FnOnce(u32) -> Command,
    limit: Duration,
    what: &str,
) -> Result<Vec<(String, f64)>, Error> {
    let mut server = Server(server.stdout(Stdio::piped()).spawn()?);
    let mut lines = BufReader::new(server.0.stdout.take().ok_or("no server stdout")?);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Err(format!("{what}: the server exited before it was ready").into());
        }
        if line.trim() == "READY" {
            break;
        }
    }
    let figures = run_client(client(server.0.id()), limit, what);
    drop(server);
    figures
}

/// Runs `client` (killed past `limit`) and returns its `RESULT` figures.
pub(crate) fn run_client(
    client: Command,
    limit: Duration,
    what: &str,
) -> Result<Vec<(String, f64)>, Error> {
    let (status, stdout) = output_within(client, limit, what)?;
    if !status.success() {
        return Err(format!("{what} client failed: {status}").into());
    }
    let mut figures = Vec::new();
    for line in stdout.lines() {
        if let Some(json) = line.strip_prefix("RESULT ") {
            let v: Value = serde_json::from_str(json)?;
            let metric = v["metric"].as_str().ok_or("a result without a metric")?;
            let value = v["value"].as_f64().ok_or("a result without a value")?;
            figures.push((metric.to_owned(), value));
        }
    }
    Ok(figures)
}

/// Runs `command` to its end, killing it past `limit`; its exit status and standard output.
fn output_within(
    mut command: Command,
    limit: Duration,
    what: &str,
) -> Result<(std::process::ExitStatus, String), Error> {
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} timed out after {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader
        .join()
        .map_err(|_| format!("reading {what}'s output"))??;
    Ok((status, text))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Whether the `iperf3` program runs here (`iperf3 --version`).
fn iperf3_present() -> bool {
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// iperf3 as a reference for W4 and W7: a one-off server (`iperf3 -s -1`) and a client
/// receiving `bytes` from it (`-R`: the server sends, as ours does); for W7 the server sends
/// with `sendfile` (`-Z`, from iperf3's own page-cached buffer file, not W7's file). Reads
/// the client's JSON report (`-J`): `gib_per_s` from `end.sum_received`, and the CPU use
/// of both sides (percent of one core over the transfer).
fn run_iperf3(sizes: &Sizes, workload: &str, quick: bool) -> Result<Vec<(String, f64)>, Error> {
    let port = free_ports()?.to_string();
    let mut server = Server(
        Command::new("iperf3")
            .args(["-s", "-1", "--forceflush", "-p", &port])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut lines = BufReader::new(server.0.stdout.take().ok_or("no iperf3 stdout")?);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Err("iperf3 -s exited before it was listening".into());
        }
        if line.contains("listening") {
            break;
        }
    }
    let bytes = if workload == "W7" {
        sizes.file
    } else {
        sizes.block as u64
    };
    let mut client = Command::new("iperf3");
    client.args([
        "-c",
        "127.0.0.1",
        "-p",
        &port,
        "-R",
        "-J",
        "-n",
        &bytes.to_string(),
    ]);
    if workload == "W7" {
        client.arg("-Z");
    }
    client.stderr(Stdio::null());
    let limit = Duration::from_secs(if quick { 60 } else { 300 });
    let (status, text) = output_within(client, limit, &format!("iperf3 {workload}"))?;
    drop(server);
    let report: Value = serde_json::from_str(&text)?;
    if !status.success() {
        return Err(format!("iperf3 -c failed ({status}): {}", report["error"]).into());
    }
    let end = &report["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3: no end.sum_received.bits_per_second")?;
    let mut figures = vec![("gib_per_s".to_owned(), bps / 8.0 / (1u64 << 30) as f64)];
    let cpu = &end["cpu_utilization_percent"];
    for (key, metric) in [
        ("host_total", "client_cpu_percent"),
        ("remote_total", "server_cpu_percent"),
    ] {
        if let Some(v) = cpu[key].as_f64() {
            figures.push((metric.to_owned(), v));
        }
    }
    Ok(figures)
}

/// Adds the derived rows: W6's bulk rate over the same contender's W4 rate
/// (`bulk_vs_w4`, the "at least 0.8x of its own W4 rate").
fn derive(medians: &mut Medians) {
    let derived: Vec<_> = medians
        .iter()
        .filter(|((w, m, _), _)| w == "W6" && m == "bulk_gib_per_s")
        .filter_map(|((_, _, c), bulk)| {
            let w4 = medians.get(&("W4".to_owned(), "gib_per_s".to_owned(), c.clone()))?;
            (*w4 > 0.0).then(|| {
                (
                    ("W6".to_owned(), "bulk_vs_w4".to_owned(), c.clone()),
                    bulk / w4,
                )
            })
        })
        .collect();
    medians.extend(derived);
}

/// Runs the plan and writes the report.
pub(crate) fn all(plan: &Plan) -> Result<(), Error> {
    let mut plan = plan.clone();
    crate::spark::keep_if_available(&mut plan.contenders);
    let plan = &plan;
    let sizes = Sizes::new(plan.quick);
    let iperf3 = plan.contenders.iter().any(|c| c == "iperf3") && iperf3_present();
    if plan.contenders.iter().any(|c| c == "iperf3") && !iperf3 {
        println!("SKIPPED: iperf3 (the W4/W7 reference): the iperf3 program is not on the PATH");
    }
    if plan.workloads.iter().any(|w| w == "W7") {
        let path = common::default_file(sizes.file);
        println!(
            "preparing {} ({} bytes, page cache)",
            path.display(),
            sizes.file
        );
        common::ensure_file(&path, sizes.file)?;
    }
    let mut figures = Figures::new();
    let mut failures = Vec::new();
    for workload in &plan.workloads {
        for rep in 0..plan.reps {
            for contender in &plan.contenders {
                if !common::supports(contender, workload) {
                    continue;
                }
                if contender == "iperf3" && !iperf3 {
                    continue;
                }
                let start = Instant::now();
                let got = if contender == "iperf3" {
                    run_iperf3(&sizes, workload, plan.quick)
                } else {
                    run_pair(plan, &sizes, contender, workload)
                };
                match got {
                    Ok(got) => {
                        let shown: Vec<String> =
                            got.iter().map(|(m, v)| format!("{m}={v:.2}")).collect();
                        println!(
                            "{workload} rep {} {contender}: {} ({:.1}s)",
                            rep + 1,
                            shown.join(" "),
                            start.elapsed().as_secs_f64()
                        );
                        for (metric, value) in got {
                            figures
                                .entry((workload.clone(), metric, contender.clone()))
                                .or_default()
                                .push(value);
                        }
                    }
                    Err(e) => {
                        println!("{workload} rep {} {contender}: FAILED: {e}", rep + 1);
                        failures.push(format!("{workload} {contender}: {e}"));
                    }
                }
            }
        }
    }
    std::fs::create_dir_all(&plan.out)?;
    let mut medians: BTreeMap<_, _> = figures
        .iter()
        .map(|(k, v)| (k.clone(), median(v)))
        .collect();
    derive(&mut medians);
    let table = markdown(plan, &medians);
    std::fs::write(plan.out.join("results.md"), &table)?;
    std::fs::write(
        plan.out.join("results.json"),
        serde_json::to_string_pretty(&report_json(plan, &figures, &medians, &failures))?,
    )?;
    std::fs::write(plan.out.join("ratios.svg"), svg(plan, &medians)?)?;
    println!("\n{table}");
    println!("written to {}", plan.out.display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} pair(s) failed: {}", failures.len(), failures.join("; ")).into())
    }
}

type Medians = BTreeMap<(String, String, String), f64>;

/// Redraws `ratios.svg` and `results.md` in `plan.out` from the `results.json` there (of
/// the workloads and contenders it holds), without running anything.
pub(crate) fn chart(plan: &Plan) -> Result<(), Error> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(plan.out.join("results.json"))?)?;
    let text = |v: &Value, k: &str| -> Result<String, Error> {
        Ok(v[k]
            .as_str()
            .ok_or(format!("results.json: no {k}"))?
            .to_owned())
    };
    let mut medians = Medians::new();
    for figure in json["figures"]
        .as_array()
        .ok_or("results.json: no figures")?
    {
        let value = figure["value"]
            .as_f64()
            .ok_or("results.json: a figure has no value")?;
        let key = (
            text(figure, "workload")?,
            text(figure, "metric")?,
            text(figure, "contender")?,
        );
        medians.insert(key, value);
    }
    derive(&mut medians);
    let plan = Plan {
        workloads: plan
            .workloads
            .iter()
            .filter(|w| medians.keys().any(|(x, _, _)| x == *w))
            .cloned()
            .collect(),
        contenders: plan
            .contenders
            .iter()
            .filter(|c| medians.keys().any(|(_, _, x)| x == *c))
            .cloned()
            .collect(),
        quick: json["quick"].as_bool().unwrap_or(plan.quick),
        reps: json["repetitions"]
            .as_u64()
            .map_or(plan.reps, |n| n as usize),
        out: plan.out.clone(),
    };
    std::fs::write(plan.out.join("results.md"), markdown(&plan, &medians))?;
    std::fs::write(plan.out.join("ratios.svg"), svg(&plan, &medians)?)?;
    println!("written to {}", plan.out.display());
    Ok(())
}

fn ratio(
    medians: &Medians,
    workload: &str,
    metric: &str,
    contender: &str,
    to: &str,
) -> Option<f64> {
    let v = medians.get(&(workload.into(), metric.into(), contender.into()))?;
    let r = medians.get(&(workload.into(), metric.into(), to.into()))?;
    (*r != 0.0).then(|| v / r)
}

/// The (workload, metric) rows present, in workload order.
fn rows(medians: &Medians) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = medians
        .keys()
        .map(|(w, m, _)| (w.clone(), m.clone()))
        .collect();
    rows.dedup();
    rows
}

fn markdown(plan: &Plan, medians: &Medians) -> String {
    let mut s = format!(
        "Medians of {} repetition(s){}; each cell: value (ratio to raw, ratio to tarpc). \
         Ratios above 1 are faster for rates and slower for latencies, CPU and RSS. \
         W6 `bulk_vs_w4` is a contender's bulk rate during W6 over its own W4 rate.\n\n",
        plan.reps,
        if plan.quick { ", --quick sizes" } else { "" }
    );
    s += "| workload | metric |";
    for c in &plan.contenders {
        s += &format!(" {c} |");
    }
    s += "\n|---|---|";
    for _ in &plan.contenders {
        s += "---|";
    }
    s += "\n";
    for (w, m) in rows(medians) {
        s += &format!("| {w} | {m} |");
        for c in &plan.contenders {
            match medians.get(&(w.clone(), m.clone(), c.clone())) {
                Some(v) => {
                    let r = |to: &str| {
                        ratio(medians, &w, &m, c, to).map_or("-".to_owned(), |r| format!("{r:.2}"))
                    };
                    s += &format!(" {} ({}, {}) |", number(*v), r("raw"), r("tarpc"));
                }
                None => s += " - |",
            }
        }
        s += "\n";
    }
    s
}

pub(crate) fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn report_json(plan: &Plan, figures: &Figures, medians: &Medians, failures: &[String]) -> Value {
    let list: Vec<Value> = medians
        .iter()
        .map(|((w, m, c), value)| {
            // Derived rows (W6 `bulk_vs_w4`) have no runs of their own.
            let runs = figures.get(&(w.clone(), m.clone(), c.clone()));
            json!({
                "workload": w,
                "metric": m,
                "contender": c,
                "value": value,
                "runs": runs,
                "ratio_to_raw": ratio(medians, w, m, c, "raw"),
                "ratio_to_tarpc": ratio(medians, w, m, c, "tarpc"),
            })
        })
        .collect();
    json!({
        "quick": plan.quick,
        "repetitions": plan.reps,
        "figures": list,
        "failures": failures,
    })
}

/// The headline metric of each workload and whether higher is better.
const HEADLINES: [(&str, &str, bool); 8] = [
    ("W1", "p50_us", false),
    ("W2", "req_per_s", true),
    ("W3", "msg_per_s", true),
    ("W4", "gib_per_s", true),
    ("W5", "asks_per_s", true),
    ("W6", "p50_us", false),
    ("W7", "gib_per_s", true),
    ("W8", "asks_per_s", true),
];

/// A grouped bar chart, drawn with plotters: each workload's headline figure relative to the
/// raw floor, as a speed (higher is better: rates divided by raw's, raw's latency divided by
/// ours).
fn svg(plan: &Plan, medians: &Medians) -> Result<String, Error> {
    use plotters::prelude::*;

    let colors = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x7f, 0x7f, 0x7f),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    let groups: Vec<_> = HEADLINES
        .iter()
        .filter(|(w, _, _)| plan.workloads.iter().any(|x| x == w))
        .collect();
    let speed = |w: &str, m: &str, higher: bool, c: &str| {
        ratio(medians, w, m, c, "raw").map(|r| if higher { r } else { 1.0 / r })
    };
    let top = groups
        .iter()
        .flat_map(|(w, m, h)| plan.contenders.iter().filter_map(|c| speed(w, m, *h, c)))
        .fold(1.2_f64, |top, s| top.max(s * 1.1));
    let title = format!(
        "Speed relative to the raw-TCP floor (1.0 = raw; higher is better){}",
        if plan.quick { ", --quick run" } else { "" }
    );
    let n = groups.len().max(1);
    let bars = plan.contenders.len().max(1) as f64;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..n as f64, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                // Label the middle of each group with its workload and figure.
                let g = x.floor() as usize;
                match groups.get(g) {
                    Some((w, m, _)) if (x - g as f64 - 0.5).abs() < 0.01 => format!("{w} {m}"),
                    _ => String::new(),
                }
            })
            .y_desc("speed / raw")
            .draw()?;
        for (i, c) in plan.contenders.iter().enumerate() {
            let color = colors[i % colors.len()];
            let rects = groups.iter().enumerate().filter_map(|(g, (w, m, h))| {
                let v = speed(w, m, *h, c)?;
                let x0 = g as f64 + 0.1 + i as f64 * 0.8 / bars;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.8 / bars * 0.9, v)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(rects)?
                .label(c.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (n as f64, 1.0)],
            BLACK,
        )))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(out)
}
