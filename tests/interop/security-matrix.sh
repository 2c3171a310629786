#!/usr/bin/env bash
# Runs every row of the security matrix Spark-to-Spark: SparkPeer's client (Spark's
# TransportClient) against SparkPeer's server (Spark's TransportServer), both from the Spark
# jars cached by .ci/spark-jars.sh, with SASL, AES (v1/v2, CTR/GCM), the fallbacks between
# them, TLS (Spark's PEM and key-store configurations) and TLS with authentication; plus the
# cases that must fail (wrong secret, wrong app id, untrusted certificate, ...).
#
#   tests/interop/security-matrix.sh [row-name-substring...]
#
# SPARK_JARS_CACHE  the jar cache (default: $HOME/.cache/spark-rpc-rs/spark-jars)
# JAVA_HOME         the JDK (else javac/java from PATH)
#
# Each row starts a server and a client and runs: rpc with a 2 MiB body, send (one-way), fetch
# (chunk), stream "bytes/2097152" and an upload of 2 MiB. A row that must succeed checks every
# answer byte for byte, that the server saw the one-way message and authenticated the client,
# and which protection layers the client reports (LAYERS: aes-ctr, aes-gcm, sasl, tls, from
# Spark's pipeline handler names), so a silent downgrade shows; a row that must be refused
# checks that the client printed CONNECT_FAILED or that every command failed, and that the
# server served nothing (no SERVED or ONEWAY line: the server runs with --report). TLS keys are
# made with openssl in a temporary directory that is removed afterwards; nothing is written
# into the checkout. Prints one line per row and a summary; exits 1 if any row failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
jars="${SPARK_JARS_CACHE:-$HOME/.cache/spark-rpc-rs/spark-jars}"
[[ -f "$jars/spark-jars.complete" ]] || {
    echo "security-matrix: no jar cache at $jars; run .ci/spark-jars.sh" >&2
    exit 1
}
tool() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/$1" ]]; then echo "$JAVA_HOME/bin/$1"; else command -v "$1"; fi
}
javac="$(tool javac)" || { echo "security-matrix: no javac" >&2; exit 1; }
java="$(tool java)" || { echo "security-matrix: no java" >&2; exit 1; }
command -v openssl >/dev/null || { echo "security-matrix: openssl is not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "security-matrix: python3 is not installed" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/security-matrix.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

"$javac" -d "$tmp/classes" -cp "$jars/*" "$here/SparkPeer.java"

# Two unrelated self-signed identities: "peer" (the server's) and "other" (for the negative
# trust rows). RSA 2048, PKCS#8 PEM (OpenSSL 3's default), CN and SAN localhost.
for name in peer other; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$tmp/$name-key.pem" -out "$tmp/$name-cert.pem" 2>/dev/null
done

export MATRIX_JAVA="$java" MATRIX_CP="$tmp/classes:$jars/*" MATRIX_TLS="$tmp"
exec python3 - "$@" <<'PYTHON'
import os, queue, subprocess, sys, threading, time

JAVA = os.environ["MATRIX_JAVA"]
CP = os.environ["MATRIX_CP"]
TLS = os.environ["MATRIX_TLS"]
JVM = ["-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
WAIT = 60  # seconds for any one line
MIB2 = 2 * 1024 * 1024

def pattern(n, seed):
    return bytes((k + seed) % 251 for k in range(n))

BODY = bytes((7 * k + 3) % 256 for k in range(MIB2))
META = b"upload-meta"
ONEWAY = b"one-way message"
COMMANDS = [
    ("rpc", "rpc " + BODY.hex(), "OK " + BODY.hex()),
    ("send", "send " + ONEWAY.hex(), "SENT"),
    ("fetch", "fetch 65536 3", "CHUNK " + pattern(65536, 3).hex()),
    ("stream", "stream bytes/%d" % MIB2, "STREAM " + pattern(MIB2, 0).hex()),
    ("upload", "upload %s %s" % (META.hex(), BODY.hex()), "OK " + (META + BODY).hex()),
]

def tls(name, mode="pem", trust=None):
    flags = ["--tls", "--tls-key", f"{TLS}/{name}-key.pem", "--tls-cert", f"{TLS}/{name}-cert.pem"]
    if mode == "keystore":
        flags.append("--tls-keystore")
        if trust:
            flags += ["--tls-trust", f"{TLS}/{trust}-cert.pem"]
    return flags

SASL = ["--auth", "sasl"]
def AES(version, cipher):
    return ["--auth", "aes", "--aes-version", str(version), "--cipher", cipher]

ENDPOINT = "io.netty.handler.ssl.defaultEndpointVerificationAlgorithm"
HOSTNAME_CHECK = ["-D" + ENDPOINT + "=HTTPS"]

def row(name, server, client, expect, notes="", jvm=(), why=None, layers=None):
    """One matrix row. expect: "ok" (every command answers exactly, the server authenticated
    the client when --auth is on); "refused" (CONNECT_FAILED or every command fails, and the
    server serves nothing; `why`, if given, must appear in the client's or the server's
    lines); or a dict kind -> "ok" | "fail" | "dropped" (what an unauthenticated client gets).
    jvm: extra JVM options for the client. layers: the protection layers the client must
    report after CONNECTED (its LAYERS line, socket side first), checked when given."""
    return dict(name=name, server=server, client=client, expect=expect, notes=notes, jvm=jvm,
                why=why, layers=layers)

ROWS = [
    row("plain", [], [], "ok", layers="none"),
    row("sasl", SASL, SASL, "ok", layers="none"),
    row("sasl + sasl-encrypt", SASL + ["--sasl-encrypt"], SASL + ["--sasl-encrypt"], "ok",
        layers="sasl"),
    row("sasl, server always encrypts, client encrypts",
        SASL + ["--sasl-encrypt", "--server-always-encrypt"], SASL + ["--sasl-encrypt"], "ok",
        layers="sasl"),
    row("sasl, server encrypts, client does not ask", SASL + ["--sasl-encrypt"], SASL, "ok",
        "accepted without encryption: the server offers auth-conf,auth", layers="none"),
    row("aes v1 ctr", AES(1, "ctr"), AES(1, "ctr"), "ok", layers="aes-ctr"),
    row("aes v2 ctr", AES(2, "ctr"), AES(2, "ctr"), "ok", layers="aes-ctr"),
    row("aes v1 gcm", AES(1, "gcm"), AES(1, "gcm"), "ok", layers="aes-gcm"),
    row("aes v2 gcm", AES(2, "gcm"), AES(2, "gcm"), "ok", layers="aes-gcm"),
    row("aes client -> sasl-only server (fallback)", SASL, AES(2, "gcm"), "ok",
        "the server refuses the AES challenge, then accepts SASL; no cipher afterwards",
        layers="none"),
    row("aes client -> sasl server, both with sasl-encrypt (fallback)",
        SASL + ["--sasl-encrypt"], AES(2, "gcm") + ["--sasl-encrypt"], "ok",
        "falls back to SASL auth-conf", layers="sasl"),
    row("sasl client -> aes server (fallback)", AES(2, "gcm"), SASL, "ok",
        "no cipher afterwards (SASL auth only)", layers="none"),
    row("tls pem (client trusts its --tls-cert = the server's)", tls("peer"), tls("peer"), "ok", layers="tls"),
    row("tls keystore, client with trust store", tls("peer", "keystore"),
        tls("other", "keystore", "peer"), "ok", layers="tls"),
    row("tls keystore, client without trust store (trusts all)", tls("peer", "keystore"),
        tls("other", "keystore"), "ok", layers="tls"),
    row("tls pem server, keystore client without trust store", tls("peer"),
        tls("other", "keystore"), "ok", layers="tls"),
    row("tls + sasl", tls("peer") + SASL, tls("peer") + SASL, "ok", layers="tls"),
    row("tls + sasl + sasl-encrypt", tls("peer") + SASL + ["--sasl-encrypt"],
        tls("peer") + SASL + ["--sasl-encrypt"], "ok", layers="sasl tls"),
    row("tls + aes v2 gcm", tls("peer") + AES(2, "gcm"), tls("peer") + AES(2, "gcm"), "ok",
        layers="aes-gcm tls"),
    row("tls + aes v1 ctr", tls("peer") + AES(1, "ctr"), tls("peer") + AES(1, "ctr"), "ok",
        layers="aes-ctr tls"),
    # Must fail.
    row("sasl, wrong secret", SASL, SASL + ["--secret", "wrong"], "refused",
        why="Mismatched response"),
    row("sasl + encrypt, wrong secret", SASL + ["--sasl-encrypt"],
        SASL + ["--sasl-encrypt", "--secret", "wrong"], "refused", why="Mismatched response"),
    row("sasl, wrong app id", SASL, SASL + ["--app-id", "someone-else"], "refused",
        "the server's secret lookup returns null", why="Password cannot be null"),
    row("aes v1 ctr, wrong secret", AES(1, "ctr"), AES(1, "ctr") + ["--secret", "wrong"],
        "refused", why="Authentication failed."),
    row("aes v2 gcm, wrong secret", AES(2, "gcm"), AES(2, "gcm") + ["--secret", "wrong"],
        "refused", why="Authentication failed."),
    row("aes v2 gcm, wrong secret, no fallback", AES(2, "gcm") + ["--no-sasl-fallback"],
        AES(2, "gcm") + ["--secret", "wrong", "--no-sasl-fallback"], "refused",
        why="Authentication failed."),
    row("aes v2 gcm, wrong app id", AES(2, "gcm"), AES(2, "gcm") + ["--app-id", "someone-else"],
        "refused", why="Authentication failed."),
    row("sasl client -> aes server without fallback", AES(2, "gcm") + ["--no-sasl-fallback"],
        SASL, "refused", why="Unknown challenge message."),
    row("aes client without fallback -> sasl server", SASL,
        AES(2, "gcm") + ["--no-sasl-fallback"], "refused", why="Expected SaslMessage"),
    row("sasl, server always encrypts, client does not ask", SASL + ["--server-always-encrypt"],
        SASL, "refused", why="No common protection layer"),
    row("aes v1 client -> v2 server", AES(2, "ctr"), AES(1, "ctr"), "refused",
        "no key confirmation: the handshake succeeds, the first request kills the connection",
        why="AUTHENTICATED"),
    row("aes ctr client -> gcm server", AES(2, "gcm"), AES(2, "ctr"), "refused",
        "no key confirmation: the handshake succeeds, the first request kills the connection",
        why="AUTHENTICATED"),
    row("tls pem, client trusts another cert", tls("peer"), tls("other"), "refused",
        why="PKIX path validation failed"),
    row("tls keystore, client trusts another cert", tls("peer", "keystore"),
        tls("other", "keystore", "other"), "refused", why="PKIX path validation failed"),
    row("tls pem, client with Netty's default hostname check", tls("peer"), tls("peer"),
        "refused", "client JVM with -D" + ENDPOINT + "=HTTPS (Netty 4.2's default)",
        jvm=HOSTNAME_CHECK, why="Hostname or IP address is undefined"),
    row("plain client -> tls server", tls("peer"), [], "refused"),
    row("tls client -> plain server", [], tls("peer"), "refused", why="TLS handshake failed"),
    # What an authenticating Spark serves to a client that does not authenticate (§12).
    row("no-auth client -> sasl server", SASL, [],
        {"rpc": "fail", "send": "dropped", "fetch": "ok", "stream": "ok", "upload": "fail"},
        "Spark serves chunk fetches and streams before authentication"),
    row("no-auth client -> aes server", AES(2, "gcm"), [],
        {"rpc": "fail", "send": "dropped", "fetch": "ok", "stream": "ok", "upload": "fail"},
        "Spark serves chunk fetches and streams before authentication"),
]


class Peer:
    def __init__(self, args, jvm=()):
        self.proc = subprocess.Popen(
            [JAVA, *JVM, *jvm, "-cp", CP, "SparkPeer", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1 << 20)
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, wait=WAIT):
        try:
            line = self.lines.get(timeout=wait)
        except queue.Empty:
            raise RuntimeError("no line within %ds" % wait)
        if line is None:
            raise RuntimeError("the peer exited (stderr tail: %s)" % "".join(self.stderr[-5:]).strip())
        return line

    def write(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self):
        """Closes stdin, waits for the exit; returns (exit code, the remaining stdout lines)."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed"
        rest = []
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            rest.append(line)
        return code, rest


def short(text, n=160):
    return text if len(text) <= n else text[:n] + "..."


def run(row):
    name, server_flags, client_flags = row["name"], row["server"], row["client"]
    expect, notes, client_jvm = row["expect"], row["notes"], row["jvm"]
    problems = []
    server = Peer(["server", "--report", *server_flags])
    try:
        first = server.line()
        if not first.startswith("PORT "):
            return False, ["server: " + first], notes
        port = first[len("PORT "):]
        client = Peer(["client", port, "--report", *client_flags], client_jvm)
        try:
            hello = client.line()
            layers = client.line() if hello == "CONNECTED" else None
            results = {}
            if hello == "CONNECTED" or hello.startswith("CONNECT_FAILED"):
                for kind, command, want in COMMANDS:
                    client.write(command)
                    got = client.line()
                    results[kind] = (got, want)
            else:
                problems.append("client said " + short(hello))
            ccode, _ = client.finish()
        finally:
            if client.proc.poll() is None:
                client.proc.kill()
        scode, slines = server.finish()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    if ccode != 0:
        problems.append("client exit %s" % ccode)
    if scode != 0:
        problems.append("server exit %s" % scode)
    served = [l for l in slines if l.startswith("SERVED") or l.startswith("ONEWAY")]
    auth_lines = [l for l in slines if l.startswith("AUTH")]
    got_oneway = ("ONEWAY " + ONEWAY.hex()) in slines
    observed = []
    if hello.startswith("CONNECT_FAILED"):
        observed.append(short(hello, 200))
    if layers:
        observed.append("client: " + layers)
    if expect == "ok":
        if hello != "CONNECTED":
            problems.append("client: " + short(hello, 300))
        for kind, (got, want) in results.items():
            if got != want:
                problems.append("%s: %s" % (kind, short(got, 300)))
        if row["layers"] is not None and layers != "LAYERS " + row["layers"]:
            problems.append("client: %s, expected LAYERS %s" % (layers, row["layers"]))
        if not got_oneway:
            problems.append("the server did not receive the one-way message")
        if "--auth" in server_flags and not any(l.startswith("AUTHENTICATED") for l in auth_lines):
            problems.append("the server printed no AUTHENTICATED line")
    elif expect == "refused":
        for kind, (got, want) in results.items():
            ok = got == want and kind != "send"
            if ok:
                problems.append("%s succeeded" % kind)
            observed.append("%s: %s" % (kind, short(got, 100)))
        if served:
            problems.append("the server served: " + ", ".join(short(l, 40) for l in served))
        said = [hello] + [got for got, _ in results.values()] + auth_lines
        if row["why"] and not any(row["why"] in line for line in said):
            problems.append("no line says %r" % row["why"])
    else:
        for kind, (got, want) in results.items():
            how = expect[kind]
            if how == "ok" and got != want:
                problems.append("%s: expected success, got %s" % (kind, short(got, 200)))
            if how == "fail" and got == want:
                problems.append("%s: expected a failure, it succeeded" % kind)
            if how == "dropped" and got_oneway:
                problems.append("send: the server received the one-way message")
            observed.append("%s: %s" % (kind, "answered" if got == want else short(got, 100)))
        observed.append("server served: " + ", ".join(short(l, 40) for l in served))
    for l in auth_lines[:3]:
        observed.append("server: " + short(l, 160))
    return not problems, problems + (["observed: " + o for o in observed] if os.environ.get("MATRIX_VERBOSE") or problems else []), notes


def main():
    wanted = sys.argv[1:]
    rows = [r for r in ROWS if not wanted or any(w in r["name"] for w in wanted)]
    failed = 0
    start = time.time()
    for row in rows:
        t = time.time()
        try:
            ok, details, notes = run(row)
        except Exception as e:  # a hung or crashed peer
            ok, details, notes = False, ["error: %s" % e], row["notes"]
        failed += not ok
        expect = row["expect"] if isinstance(row["expect"], str) else "partial"
        print("%-4s %-64s %-8s %5.1fs%s" % ("PASS" if ok else "FAIL", row["name"], expect,
                                           time.time() - t, ("  # " + notes) if notes else ""),
              flush=True)
        for d in details:
            print("       " + d, flush=True)
    print("security-matrix: %d rows, %d passed, %d failed, %.0fs" %
          (len(rows), len(rows) - failed, failed, time.time() - start))
    sys.exit(1 if failed else 0)


main()
PYTHON
