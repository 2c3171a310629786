#!/usr/bin/env bash
# Runs Spark's external shuffle service against Spark's own shuffle client, Spark-to-Spark:
# ShufflePeer's server (ExternalBlockHandler) and client (ExternalBlockStoreClient), both from
# the Spark jars cached by .ci/spark-jars.sh, with no authentication, SASL (DIGEST-MD5) and
# AES authentication; plus the cases that must fail (wrong secret, a client that skips
# authentication, local dirs outside the service's root).
#
#   tests/interop/shuffle-matrix.sh [row-name-substring...]
#
# SPARK_JARS_CACHE  the jar cache (default: $HOME/.cache/spark-rpc-rs/spark-jars)
# JAVA_HOME         the JDK (else javac/java from PATH)
#
# Every row writes fresh sort-shuffle files with ShufflePeer write-shuffle into a temporary
# root (two executors: e1 with two local dirs and 64 sub-dirs, maps 5 and 6 of shuffle 0; e2
# with one local dir and 16 sub-dirs, map 7 of shuffle 0 and map 3 of shuffle 1; 8 reducers,
# some blocks empty), checks the writer's lines against a Python copy of its documented
# generator, starts the server with --root <root>, and runs one client that registers both
# executors and fetches: one block; all blocks of two maps (chunk fetches); blocks of both
# shuffles to disk (stream requests); batch ids (shuffle_S_M_R1_R2 of two maps, one
# FetchShuffleBlocks with batchFetchEnabled); asks for both executors' local dirs; removes one map output's .data
# and .index (and checks the files are gone); and fetches a block that was never written and a
# block of an unregistered executor (both must fail). Every fetched byte is checked (length and
# SHA-256). A row that must be refused checks that registration and fetches fail and that the
# expected reason appears. Prints one line per row and a summary; exits 1 if any row failed.
# The temporary directory is removed afterwards; nothing is written into the checkout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
jars="${SPARK_JARS_CACHE:-$HOME/.cache/spark-rpc-rs/spark-jars}"
[[ -f "$jars/spark-jars.complete" ]] || {
    echo "shuffle-matrix: no jar cache at $jars; run .ci/spark-jars.sh" >&2
    exit 1
}
grep -q '^spark-network-shuffle_' "$jars/spark-jars.complete" || {
    echo "shuffle-matrix: the jar cache at $jars has no spark-network-shuffle; run .ci/spark-jars.sh" >&2
    exit 1
}
tool() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/$1" ]]; then echo "$JAVA_HOME/bin/$1"; else command -v "$1"; fi
}
javac="$(tool javac)" || { echo "shuffle-matrix: no javac" >&2; exit 1; }
java="$(tool java)" || { echo "shuffle-matrix: no java" >&2; exit 1; }
command -v python3 >/dev/null || { echo "shuffle-matrix: python3 is not installed" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/shuffle-matrix.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

"$javac" -d "$tmp/classes" -cp "$jars/*" "$here/ShufflePeer.java"

export MATRIX_JAVA="$java" MATRIX_CP="$tmp/classes:$jars/*" MATRIX_TMP="$tmp"
exec python3 - "$@" <<'PYTHON'
import hashlib, os, queue, subprocess, sys, threading, time

JAVA = os.environ["MATRIX_JAVA"]
CP = os.environ["MATRIX_CP"]
TMP = os.environ["MATRIX_TMP"]
JVM = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
WAIT = 60  # seconds for the server's PORT line
CLIENT_WAIT = 180  # seconds for a whole client run
MANAGER = "org.apache.spark.shuffle.sort.SortShuffleManager"
REDUCERS = 8
M64 = (1 << 64) - 1


def splitmix64(state):
    state[0] = (state[0] + 0x9E3779B97F4A7C15) & M64
    z = state[0]
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def block(seed, r):
    """ShufflePeer's block r of a map output written with this seed (its header comment)."""
    state = [((seed << 32) ^ r) & M64]
    length = 0 if r % 4 == 1 else 1 + splitmix64(state) % 100000
    out = bytearray()
    while len(out) < length:
        out += splitmix64(state).to_bytes(8, "little")
    return bytes(out[:length])


def digest(data):
    return "%d %s" % (len(data), hashlib.sha256(data).hexdigest())


# (exec, shuffle, map, seed): e1 has maps 5 and 6 of shuffle 0, e2 map 7 of shuffle 0 and map 3
# of shuffle 1.
MAPS = [("e1", 0, 5, 11), ("e1", 0, 6, 12), ("e2", 0, 7, 13), ("e2", 1, 3, 14)]
SUBDIRS = {"e1": 64, "e2": 16}


def dirs(root, execid):
    n = 2 if execid == "e1" else 1
    return ",".join("%s/%s/blockmgr-%d" % (root, execid, k) for k in range(n))


def expected_blocks():
    blocks = {}
    for _, s, m, seed in MAPS:
        for r in range(REDUCERS):
            blocks["shuffle_%d_%d_%d" % (s, m, r)] = block(seed, r)
    return blocks


BLOCKS = expected_blocks()


def ids(s, m, rs):
    return ["shuffle_%d_%d_%d" % (s, m, r) for r in rs]


def java(args, stdin=subprocess.DEVNULL, timeout=CLIENT_WAIT):
    return subprocess.run([JAVA, *JVM, "-cp", CP, "ShufflePeer", *args], stdin=stdin,
                          capture_output=True, text=True, timeout=timeout)


class Server:
    def __init__(self, args):
        self.proc = subprocess.Popen([JAVA, *JVM, "-cp", CP, "ShufflePeer", "server", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def port(self):
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            raise RuntimeError("the server printed no PORT line within %ds" % WAIT)
        if line is None or not line.startswith("PORT "):
            raise RuntimeError("server: %r (stderr: %s)" % (line, "".join(self.stderr[-5:]).strip()))
        return line[len("PORT "):]

    def stop(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "killed"


def short(text, n=200):
    return text if len(text) <= n else text[:n] + "..."


def write_files(root):
    """Writes every map output; returns problems (writer lines that differ from Python's)."""
    problems = []
    for execid, s, m, seed in MAPS:
        done = java(["write-shuffle", dirs(root, execid), str(SUBDIRS[execid]), str(s), str(m),
                     str(REDUCERS), str(seed)])
        want = ["BLOCK %s %s" % (i, digest(BLOCKS[i])) for i in ids(s, m, range(REDUCERS))]
        if done.returncode != 0 or done.stdout.split("\n")[:-1] != want:
            problems.append("write-shuffle %d_%d: %s %s" % (s, m, short(done.stdout, 300),
                                                            short(done.stderr, 300)))
    return problems


def data_files(root, execid, s, m):
    found = []
    for base, _, files in os.walk(os.path.join(root, execid)):
        for f in files:
            if f.startswith("shuffle_%d_%d_0." % (s, m)):
                found.append(os.path.join(base, f))
    return found


def row(name, server, client, expect, why=None, root_for_server=None):
    """expect "ok": everything succeeds byte for byte; "refused": registration and every fetch
    fail, and `why` appears in the client's output."""
    return dict(name=name, server=server, client=client, expect=expect, why=why,
                root_for_server=root_for_server)


SECRET = ["--auth", "s3cret"]
ROWS = [
    row("no auth", [], [], "ok"),
    row("sasl", SECRET, SECRET, "ok"),
    row("aes", SECRET + ["--aes"], SECRET + ["--aes"], "ok"),
    row("aes client -> sasl server (fallback)", SECRET, SECRET + ["--aes"], "ok"),
    # Must fail.
    row("sasl, wrong secret", SECRET, ["--auth", "wrong"], "refused", why="Mismatched response"),
    row("aes, wrong secret", SECRET + ["--aes"], ["--auth", "wrong", "--aes"], "refused"),
    row("no-auth client -> sasl server", SECRET, [], "refused", why="Expected SaslMessage"),
    row("no-auth client -> aes server", SECRET + ["--aes"], [], "refused",
        why="Expected SaslMessage"),
    row("local dirs outside the service's root", [], [], "refused",
        why="localDirs entry is not under any of the service's local directories",
        root_for_server="elsewhere"),
]


def run(row, n):
    root = os.path.join(TMP, "row%d" % n)
    os.makedirs(root)
    problems = write_files(root)
    if problems:
        return problems
    server_root = root if row["root_for_server"] is None else os.path.join(TMP, row["root_for_server"])
    os.makedirs(server_root, exist_ok=True)
    server = Server(["--root", server_root, *row["server"]])
    try:
        port = server.port()
        single = ["shuffle_0_5_3"]
        two_maps = ids(0, 5, range(REDUCERS)) + ids(0, 6, range(REDUCERS))
        to_disk = ids(0, 7, [0, 1, 2])
        other_shuffle = ids(1, 3, [4, 5, 6])
        # Batch ids: reduce ranges [4, 8) of map 5 and [0, 3) of map 6. Spark's fetcher sends
        # one range per map id (a second range of the same map is never answered), and one
        # fetchBlocks call takes blocks of one shuffle only ("Expected shuffleId=0, got:...").
        batch = ["shuffle_0_5_4_8", "shuffle_0_6_0_3"]
        commands = [
            "register", "e1", dirs(root, "e1"), str(SUBDIRS["e1"]), MANAGER,
            "register", "e2", dirs(root, "e2"), str(SUBDIRS["e2"]), MANAGER,
            "fetch", "127.0.0.1", "e1", ",".join(single),
            "fetch", "127.0.0.1", "e1", ",".join(two_maps),
            "fetch-to-disk", "127.0.0.1", "e2", ",".join(to_disk),
            "fetch-to-disk", "127.0.0.1", "e2", ",".join(other_shuffle),
            "fetch", "127.0.0.1", "e1", ",".join(batch),
            "localdirs", "e1,e2",
            "remove", "e1", "shuffle_0_6_0.data,shuffle_0_6_0.index",
            "fetch", "127.0.0.1", "e1", "shuffle_0_99_0",
            "fetch", "127.0.0.1", "e9", "shuffle_0_5_0",
        ]
        done = java(["client", port, "--app", "app-matrix", *row["client"], *commands])
        lines = done.stdout.split("\n")[:-1]
    finally:
        scode = server.stop()
    if done.returncode != 0:
        problems.append("client exit %s: %s" % (done.returncode, short(done.stderr, 400)))
    if scode != 0:
        problems.append("server exit %s" % scode)
    # Split the output by command (each ends with "END <word>").
    results, current = [], []
    for line in lines:
        if line.startswith("END "):
            results.append(current)
            current = []
        else:
            current.append(line)
    if len(results) != 11:
        return problems + ["expected 11 command results, got %d: %s" % (len(results), short("|".join(lines), 600))]
    (reg1, reg2, f_single, f_two, f_disk, f_other, f_batch, localdirs, removed, f_missing,
     f_unreg) = results

    def want_blocks(got, blocks):
        want = ["BLOCK %s OK %s" % (i, digest(data)) for i, data in blocks]
        if got != want:
            bad = [g for g, w in zip(got, want) if g != w] or got
            problems.append("fetch %s: %s" % (short(",".join(i for i, _ in blocks), 60),
                                              short(" | ".join(bad), 300)))

    if row["expect"] == "ok":
        if reg1 != ["REGISTERED e1"] or reg2 != ["REGISTERED e2"]:
            problems.append("register: %s" % short(" | ".join(reg1 + reg2), 300))
        want_blocks(f_single, [(i, BLOCKS[i]) for i in single])
        want_blocks(f_two, [(i, BLOCKS[i]) for i in two_maps])
        want_blocks(f_disk, [(i, BLOCKS[i]) for i in to_disk])
        want_blocks(f_other, [(i, BLOCKS[i]) for i in other_shuffle])
        want_blocks(f_batch, [
            ("shuffle_0_5_4_8", b"".join(BLOCKS["shuffle_0_5_%d" % r] for r in range(4, 8))),
            ("shuffle_0_6_0_3", b"".join(BLOCKS["shuffle_0_6_%d" % r] for r in range(0, 3)))])
        want_dirs = ["DIRS e1 " + dirs(root, "e1"), "DIRS e2 " + dirs(root, "e2")]
        if localdirs != want_dirs:
            problems.append("localdirs: %s" % short(" | ".join(localdirs), 300))
        if removed != ["REMOVED 2"]:
            problems.append("remove: %s" % short(" | ".join(removed), 300))
        if data_files(root, "e1", 0, 6):
            problems.append("remove left %s" % data_files(root, "e1", 0, 6))
        if len(data_files(root, "e1", 0, 5)) != 2:
            problems.append("remove touched map 5")
        if len(f_missing) != 1 or " FAIL " not in f_missing[0]:
            problems.append("fetch of a block never written: %s" % short(" | ".join(f_missing), 300))
        if len(f_unreg) != 1 or "Executor is not registered" not in f_unreg[0]:
            problems.append("fetch from an unregistered executor: %s" % short(" | ".join(f_unreg), 300))
        observed = [short(f_missing[0], 160) if f_missing else "", short(f_unreg[0], 160) if f_unreg else ""]
    else:
        if not (reg1 and reg1[0].startswith("ERROR")):
            problems.append("register e1 succeeded: %s" % short(" | ".join(reg1), 200))
        fetches = f_single + f_two + f_disk + f_other + f_batch
        if any(" OK " in l for l in fetches):
            problems.append("a fetch succeeded")
        said = lines
        if row["why"] and not any(row["why"] in l for l in said):
            problems.append("no line says %r" % row["why"])
        observed = [short(reg1[0], 240) if reg1 else "", short(f_single[0], 240) if f_single else ""]
    if problems or os.environ.get("MATRIX_VERBOSE"):
        problems_out = problems + ["observed: " + o for o in observed if o]
        return problems_out if problems else ["(ok) " + p for p in problems_out]
    return []


def main():
    wanted = sys.argv[1:]
    rows = [r for r in ROWS if not wanted or any(w in r["name"] for w in wanted)]
    failed = 0
    start = time.time()
    for n, row in enumerate(rows):
        t = time.time()
        try:
            details = run(row, n)
        except Exception as e:  # a hung or crashed peer
            details = ["error: %r" % e]
        ok = not [d for d in details if not d.startswith("(ok) ")]
        failed += not ok
        print("%-4s %-44s %-8s %5.1fs" % ("PASS" if ok else "FAIL", row["name"], row["expect"],
                                          time.time() - t), flush=True)
        for d in details:
            print("       " + d, flush=True)
    print("shuffle-matrix: %d rows, %d passed, %d failed, %.0fs" %
          (len(rows), len(rows) - failed, failed, time.time() - start))
    sys.exit(1 if failed else 0)


main()
PYTHON
