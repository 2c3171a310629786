//! The `spark-shuffle-service` binary: starts, prints its line, serves, authenticates,
//! stops on SIGTERM or when stdin closes, and reloads registrations after a restart.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rpc_shuffle::protocol::{BlockTransferMessage, FetchShuffleBlocks};
use rpc_tokio::{AuthMechanism, Security, TransportClientFactory, TransportConfig};

const APP: &str = "app-20261202111500-0007";

struct Service {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl Service {
    /// Starts the binary and waits (bounded) for its `listening on` line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-service"));
        command
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--exit-on-stdin-close",
            ])
            .args(args)
            .env_remove("SPARK_SHUFFLE_SECRET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("the service printed no line");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let mut err = String::new();
            let _ = child.kill();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("unexpected first line {line:?}; stderr:\n{err}");
        };
        Self {
            addr: addr.parse().unwrap(),
            child,
            stdin,
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the service did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes its stdin and waits for it to exit.
    fn stop_by_stdin(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.wait()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fetch(map: i64, reduce: i32) -> BlockTransferMessage {
    BlockTransferMessage::FetchShuffleBlocks(FetchShuffleBlocks {
        app_id: APP.into(),
        exec_id: "3".into(),
        shuffle_id: 1,
        map_ids: vec![map],
        reduce_ids: vec![vec![reduce]],
        batch_fetch_enabled: false,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn disk() -> Disk {
    let disk = Disk::new(2);
    let blocks: Vec<_> = (0..4).map(|r| block(9, r)).collect();
    disk.write_map_output(1, 9, &blocks);
    disk
}

fn root(disk: &Disk) -> &str {
    disk.root.path().to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_reloads_registrations_after_a_restart() {
    let disk = disk();
    let db = disk.root.path().join("registrations.redb");
    let db = db.to_str().unwrap();
    let metrics_port = free_port();
    let port = metrics_port.to_string();
    let service = Service::start(
        &[
            "--local-dir",
            root(&disk),
            "--db",
            db,
            "--metrics-port",
            &port,
        ],
        &[],
    );
    let client = connect(service.addr, Security::none()).await;
    rpc(&client, &register(APP, "3", disk.info()))
        .await
        .unwrap();
    assert_eq!(
        fetch_all(&client, &fetch(9, 2)).await,
        [Bytes::from(block(9, 2))]
    );
    let response = http_get(metrics_port, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("\nspark_shuffle_service_registered_executors 1\n"),
        "{response}"
    );
    assert!(
        response.contains("\nspark_shuffle_service_blocks_served_total 1\n"),
        "{response}"
    );
    assert!(http_get(metrics_port, "/").starts_with("HTTP/1.1 404"));
    client.close();
    assert!(service.stop_by_stdin().success());

    // Restarted on the same database: the executor is known without registering again.
    let service = Service::start(&["--local-dir", root(&disk), "--db", db], &[]);
    let client = connect(service.addr, Security::none()).await;
    assert_eq!(
        fetch_all(&client, &fetch(9, 3)).await,
        [Bytes::from(block(9, 3))]
    );
    // SIGTERM stops it cleanly too.
    #[cfg(unix)]
    {
        let mut service = service;
        let status = Command::new("kill")
            .args(["-TERM", &service.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(service.wait().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_the_binary_requires_spark_authentication() {
    let disk = disk();
    let secret_file = disk.root.path().join("secret");
    std::fs::write(&secret_file, "cluster-secret\n").unwrap();
    let with_file = Service::start(
        &[
            "--local-dir",
            root(&disk),
            "--auth-secret-file",
            secret_file.to_str().unwrap(),
        ],
        &[],
    );
    let with_env = Service::start(
        &["--local-dir", root(&disk)],
        &[("SPARK_SHUFFLE_SECRET", "cluster-secret")],
    );
    for service in [&with_file, &with_env] {
        // SASL DIGEST-MD5 (spark.authenticate=true alone) and AES (crypto enabled).
        for mechanism in [
            AuthMechanism::spark_default(),
            AuthMechanism::spark_aes_default(),
        ] {
            let security = Security::secret("cluster-secret")
                .with_mechanism(mechanism)
                .with_app_id(APP);
            let client = connect(service.addr, security).await;
            rpc(&client, &register(APP, "3", disk.info()))
                .await
                .unwrap();
            assert_eq!(
                fetch_all(&client, &fetch(9, 1)).await,
                [Bytes::from(block(9, 1))]
            );
        }
        // A wrong secret, or none, is refused.
        let factory = TransportClientFactory::new(
            rpc_tokio::runtime(),
            std::sync::Arc::new(rpc_tokio::NoopRpcHandler),
            TransportConfig::builder()
                .with_connect_timeout(WAIT)
                .with_security(
                    Security::secret("guess")
                        .with_mechanism(AuthMechanism::spark_default())
                        .with_app_id(APP),
                )
                .build()
                .unwrap(),
        );
        assert!(factory.create_client(service.addr).await.is_err());
        let plain = connect(service.addr, Security::none()).await;
        let refused = plain
            .send_rpc(register(APP, "3", disk.info()).encode(), Some(WAIT))
            .await;
        assert!(
            matches!(
                refused,
                Err(rpc_tokio::RequestError::AuthenticationRequired(_))
            ),
            "{refused:?}"
        );
    }
    // The secret is never logged.
    for service in [with_file, with_env] {
        let mut service = service;
        let mut stderr = service.child.stderr.take().unwrap();
        assert!(service_stop(&mut service).success());
        let mut log = String::new();
        stderr.read_to_string(&mut log).unwrap();
        assert!(log.contains("starting the shuffle service"), "{log}");
        assert!(!log.contains("cluster-secret"), "{log}");
    }
}

fn service_stop(service: &mut Service) -> ExitStatus {
    drop(service.stdin.take());
    service.wait()
}

#[test]
fn a_config_file_sets_the_same_keys_and_bad_settings_fail_fast() {
    let disk = disk();
    let config = disk.root.path().join("service.toml");
    std::fs::write(
        &config,
        format!(
            "host = \"127.0.0.1\"\nport = 0\nlocal-dir = [{:?}]\nexit-on-stdin-close = true\n",
            root(&disk)
        ),
    )
    .unwrap();
    let service = Service::start(&["--config", config.to_str().unwrap()], &[]);
    assert!(service.stop_by_stdin().success());

    // An unknown key, or a local dir that does not exist: a clear error and a failed exit.
    std::fs::write(&config, "prot = 7337\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-service"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
    let out = Command::new(env!("CARGO_BIN_EXE_spark-shuffle-service"))
        .args(["--port", "0", "--local-dir", "/nonexistent/spark-local"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/spark-local"));
}
