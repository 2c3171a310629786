//! The env's file server on real sockets: Spark's `RpcEnvSuite` file server cases (files,
//! jars, directories, names with spaces, empty and large files, refused paths, duplicates),
//! and downloads kept off the connection control messages use.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt};
use rpc::{FileServerError, RpcEnv};

use super::util::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "rpc-file-server-{what}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Self(dir)
    }

    /// Writes `contents` to `name` (creating parent directories) and returns its path.
    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

async fn read_all(mut reader: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    within("the download", reader.read_to_end(&mut out))
        .await
        .expect("the download completes");
    out
}

/// Downloads `uri` from `env`, whole.
async fn download(env: &RpcEnv, uri: &str) -> Vec<u8> {
    let reader = within("the download to open", env.open_channel(uri))
        .await
        .unwrap_or_else(|e| panic!("opening {uri}: {e}"));
    read_all(reader).await
}

/// The error of opening `uri` from `env`, as text.
async fn refusal(env: &RpcEnv, uri: &str) -> String {
    match within("the download to open", env.open_channel(uri)).await {
        Ok(_) => panic!("{uri} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn files_jars_and_directories_download_through_another_env() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("kinds");
        let file = tmp.write("file.txt", b"a file");
        let jar = tmp.write("lib.jar", &pattern(10_000, 1));
        tmp.write("classes/Main.class", b"main");
        tmp.write("classes/pkg/Util.class", &pattern(3000, 2));
        let url = addr(&a).to_url();

        let file_uri = a.file_server().add_file(&file).unwrap();
        let jar_uri = a.file_server().add_jar(&jar).unwrap();
        let dir_uri = a
            .file_server()
            .add_directory("/classes", tmp.path().join("classes"))
            .unwrap();
        assert_eq!(file_uri, format!("{url}/files/file.txt"));
        assert_eq!(jar_uri, format!("{url}/jars/lib.jar"));
        assert_eq!(dir_uri, format!("{url}/classes"));

        assert_eq!(download(&b, &file_uri).await, b"a file");
        assert_eq!(download(&b, &jar_uri).await, pattern(10_000, 1));
        assert_eq!(
            download(&b, &format!("{dir_uri}/Main.class")).await,
            b"main"
        );
        assert_eq!(
            download(&b, &format!("{dir_uri}/pkg/Util.class")).await,
            pattern(3000, 2)
        );
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn a_name_with_spaces_is_percent_encoded_and_downloads() {
    block_on(async {
        let (a, b) = (server_env("a"), client_env("b"));
        let tmp = TempDir::new("spaces");
        let file = tmp.write("my file.txt", b"spaced");
        let uri = a.file_server().add_file(&file).unwrap();
        assert!(uri.ends_with("/files/my%20file.txt"), "{uri}");
        assert_eq!(download(&b, &uri).await, b"spaced");
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn an_empty_file_downloads_as_no_bytes() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("empty");
        let uri = a.file_server().add_file(tmp.write("empty", b"")).unwrap();
        let reader = within("the download to open", b.open_channel(&uri))
            .await
            .unwrap();
        assert_eq!(reader.byte_count(), Some(0));
        assert!(read_all(reader).await.is_empty());
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn a_five_mib_file_downloads_whole() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("large");
        let body = pattern(5 << 20, 3);
        let uri = a
            .file_server()
            .add_file(tmp.write("big.bin", &body))
            .unwrap();
        let got = download(&b, &uri).await;
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the downloaded bytes differ");
        shutdown(&[&a, &b]).await;
    })
}

/// `FileDownload` is tokio's `AsyncRead` (rpc-tokio turns on rpc-driver's `tokio` feature;
/// Cargo turns it on for both adapters in this suite's build, so every module checks it) and
/// futures-io's: read through either, or both in turn on one download, it gives the file's
/// bytes.
#[test]
fn a_download_reads_as_tokio_and_as_futures_io_async_read() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("readers");
        // Several pieces, and an odd length.
        let body = pattern((3 << 20) + 17, 5);
        let uri = a
            .file_server()
            .add_file(tmp.write("both.bin", &body))
            .unwrap();

        // tokio's `AsyncReadExt`, whole.
        let mut download = within("the download to open", b.open_channel(&uri))
            .await
            .unwrap();
        assert_eq!(download.byte_count(), Some(body.len() as u64));
        let mut got = Vec::new();
        within(
            "the download",
            tokio::io::AsyncReadExt::read_to_end(&mut download, &mut got),
        )
        .await
        .expect("the download completes");
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the bytes read through tokio's AsyncRead differ");

        // Small reads through tokio's (each smaller than a piece), the rest through
        // futures-io's: one download, one stream of bytes.
        let mut download = within("the download to open", b.open_channel(&uri))
            .await
            .unwrap();
        let mut got = vec![0; 1000];
        for chunk in got.chunks_mut(100) {
            within(
                "a read",
                tokio::io::AsyncReadExt::read_exact(&mut download, chunk),
            )
            .await
            .expect("a read");
        }
        within(
            "the download",
            AsyncReadExt::read_to_end(&mut download, &mut got),
        )
        .await
        .expect("the download completes");
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the bytes read through both traits differ");
        shutdown(&[&a, &b]).await;
    })
}

/// A refused download `?`-ed into I/O code: a file the serving env does not have is
/// `NotFound`, and the typed error is inside.
#[test]
fn a_missing_file_is_not_found_as_an_io_error() {
    async fn open(env: &RpcEnv, uri: &str) -> std::io::Result<rpc::FileDownload> {
        Ok(within("the download to open", env.open_channel(uri)).await?)
    }
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let url = addr(&a).to_url();
        let error = open(&b, &format!("{url}/files/nope.txt"))
            .await
            .expect_err("a missing file");
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
        assert!(error.to_string().contains("/files/nope.txt"), "{error}");
        assert!(matches!(
            error.get_ref().and_then(|e| e.downcast_ref::<FileServerError>()),
            Some(FileServerError::Download { .. })
        ));
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn a_missing_file_fails_naming_its_path() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("missing");
        let dir = a.file_server().add_directory("dir", tmp.path()).unwrap();
        let url = addr(&a).to_url();

        let error = refusal(&b, &format!("{url}/files/nope.txt")).await;
        assert!(error.contains("/files/nope.txt"), "{error}");
        assert!(error.contains("not found"), "{error}");
        let error = refusal(&b, &format!("{dir}/nope.class")).await;
        assert!(error.contains("/dir/nope.class"), "{error}");
        let error = refusal(&b, &format!("{url}/nothing/here")).await;
        assert!(error.contains("/nothing"), "{error}");
        // A file that vanished after it was added.
        let gone = tmp.write("gone.txt", b"soon gone");
        let uri = a.file_server().add_file(&gone).unwrap();
        std::fs::remove_file(&gone).unwrap();
        let error = refusal(&b, &uri).await;
        assert!(error.contains("/files/gone.txt"), "{error}");
        shutdown(&[&a, &b]).await;
    })
}

/// The serving env's own message for a refused download.
async fn remote_refusal(env: &RpcEnv, uri: &str) -> String {
    match within("the download to open", env.open_channel(uri)).await {
        Ok(_) => panic!("{uri} should be refused"),
        Err(FileServerError::Download {
            source: rpc_proto::RequestError::Remote(message),
            ..
        }) => message.to_string(),
        Err(other) => panic!("{uri}: expected the serving env's refusal, got {other}"),
    }
}

/// Spark's `ExecutorClassLoader` asks the driver's file server for classes and turns exactly
/// `Stream '<id>' was not found.` into a `ClassNotFoundException`: a missing file, jar or
/// class must be refused with that text, as Spark's `TransportRequestHandler` does. An
/// unknown directory gets the message of Spark's `NettyStreamManager`.
#[test]
fn a_missing_file_is_refused_with_sparks_exact_text() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("spark-text");
        tmp.write("classes/pkg/Here.class", b"here");
        let dir = a
            .file_server()
            .add_directory("/classes", tmp.path().join("classes"))
            .unwrap();
        let url = addr(&a).to_url();
        for (uri, stream_id) in [
            (format!("{url}/files/nope.txt"), "/files/nope.txt"),
            (format!("{url}/jars/nope.jar"), "/jars/nope.jar"),
            (format!("{dir}/pkg/Missing.class"), "/classes/pkg/Missing.class"),
            (format!("{dir}/pkg"), "/classes/pkg"),
        ] {
            assert_eq!(
                remote_refusal(&b, &uri).await,
                format!("Stream '{stream_id}' was not found."),
                "{uri}"
            );
        }
        assert_eq!(
            remote_refusal(&b, &format!("{url}/nothing/here")).await,
            "requirement failed: Invalid stream URI: nothing not found."
        );
        assert_eq!(download(&b, &format!("{dir}/pkg/Here.class")).await, b"here");
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn parent_traversal_and_absolute_paths_out_of_a_directory_are_refused() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("traversal");
        let secret = tmp.write("secret.txt", b"secret");
        tmp.write("served/ok.txt", b"ok");
        let dir = a
            .file_server()
            .add_directory("/served/", tmp.path().join("served"))
            .unwrap();
        assert_eq!(download(&b, &format!("{dir}/ok.txt")).await, b"ok");

        for uri in [
            format!("{dir}/../secret.txt"),
            format!("{dir}/%2E%2E/secret.txt"),
            format!("{dir}/sub/../../secret.txt"),
            format!("{dir}/{}", secret.display()),
        ] {
            let error = refusal(&b, &uri).await;
            assert!(error.contains("escapes the directory"), "{uri}: {error}");
        }
        shutdown(&[&a, &b]).await;
    })
}

#[cfg(unix)]
#[test]
fn a_symlink_pointing_out_of_a_directory_is_refused() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let tmp = TempDir::new("symlink");
        let secret = tmp.write("secret.txt", b"secret");
        tmp.write("served/inside.txt", b"inside");
        let served = tmp.path().join("served");
        std::os::unix::fs::symlink(&secret, served.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(served.join("inside.txt"), served.join("ok-link.txt")).unwrap();
        let dir = a.file_server().add_directory("served", &served).unwrap();

        let error = refusal(&b, &format!("{dir}/link.txt")).await;
        assert!(error.contains("escapes the directory"), "{error}");
        // A symlink staying inside is served.
        assert_eq!(download(&b, &format!("{dir}/ok-link.txt")).await, b"inside");
        shutdown(&[&a, &b]).await;
    })
}

#[test]
fn a_different_file_under_a_taken_name_is_an_error_and_the_same_file_is_not() {
    block_on(async {
        let a = server_env("a");
        let tmp = TempDir::new("duplicates");
        let first = tmp.write("one/name.txt", b"1");
        let second = tmp.write("two/name.txt", b"2");
        let fs = a.file_server();

        let uri = fs.add_file(&first).unwrap();
        // The same file again, even by another spelling of its path, is fine.
        let again = fs.add_file(tmp.path().join("one/../one/name.txt")).unwrap();
        assert_eq!(again, uri);
        assert!(matches!(
            fs.add_file(&second),
            Err(FileServerError::DuplicateName { ref name, .. }) if name == "name.txt"
        ));
        // Jars are a separate namespace.
        fs.add_jar(&second).unwrap();
        assert!(matches!(
            fs.add_jar(&first),
            Err(FileServerError::DuplicateName { .. })
        ));
        // Directories: same rule per base URI; /files and /jars are reserved.
        fs.add_directory("/d", tmp.path().join("one")).unwrap();
        fs.add_directory("/d", tmp.path().join("one")).unwrap();
        assert!(matches!(
            fs.add_directory("/d", tmp.path().join("two")),
            Err(FileServerError::DuplicateBaseUri(_))
        ));
        for reserved in ["/files", "/jars", "/", ""] {
            assert!(matches!(
                fs.add_directory(reserved, tmp.path()),
                Err(FileServerError::InvalidBaseUri(_))
            ));
        }
        // Wrong kinds and missing paths.
        assert!(matches!(
            fs.add_file(tmp.path()),
            Err(FileServerError::NotAFile(_))
        ));
        assert!(matches!(
            fs.add_directory("/x", &first),
            Err(FileServerError::NotADirectory(_))
        ));
        assert!(matches!(
            fs.add_file(tmp.path().join("absent")),
            Err(FileServerError::Io { .. })
        ));
        shutdown(&[&a]).await;
    })
}

#[test]
fn a_client_mode_env_refuses_to_serve_files() {
    block_on(async {
        let env = client_env("client");
        let tmp = TempDir::new("client");
        let file = tmp.write("f.txt", b"f");
        assert!(matches!(
            env.file_server().add_file(&file),
            Err(FileServerError::NoAddress)
        ));
        assert!(matches!(
            env.file_server().add_jar(&file),
            Err(FileServerError::NoAddress)
        ));
        assert!(matches!(
            env.file_server().add_directory("/d", tmp.path()),
            Err(FileServerError::NoAddress)
        ));
        shutdown(&[&env]).await;
    })
}

/// Downloads travel on connections of their own (the env's bulk client factory), so an ask
/// to the serving env is not queued behind a large body that the downloader reads slowly.
#[test]
fn an_ask_does_not_wait_behind_a_large_download_from_the_same_env() {
    block_on(async {
        let (a, b) = (server_env("a"), server_env("b"));
        let rec = Recorder::default();
        a.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        let probe = lookup(&b, &a, "probe").await;
        let tmp = TempDir::new("bulk");
        let size = 64 << 20;
        let uri = a
            .file_server()
            .add_file(tmp.write("huge.bin", &pattern(size, 4)))
            .unwrap();

        let mut download = within("the download to open", b.open_channel(&uri))
            .await
            .unwrap();
        assert_eq!(download.byte_count(), Some(size as u64));
        let mut buf = vec![0; 64 << 10];
        let mut read = 0;
        while read < buf.len() {
            let n = within("a piece", download.read(&mut buf[read..]))
                .await
                .unwrap();
            assert!(n > 0);
            read += n;
        }
        // The consumer stalls; most of the file is still to come.
        sleep(Duration::from_millis(200)).await;
        for i in 0..5 {
            let reply = give_up_after(
                Duration::from_secs(2),
                probe.ask(Cmd::Quiet(format!("{i}"))),
            )
            .await
            .expect("the ask is answered while the download is stalled");
            assert_eq!(reply.unwrap(), i.to_string());
        }

        let mut rest = Vec::new();
        give_up_after(LONG, download.read_to_end(&mut rest))
            .await
            .expect("the download finishes")
            .unwrap();
        assert_eq!(read + rest.len(), size);
        assert!(
            rest[..] == pattern(size, 4)[read..],
            "the downloaded bytes differ"
        );
        shutdown(&[&a, &b]).await;
    })
}
