"""A real PySpark 4.3.0 job whose reduce stages can only read their input through an external
shuffle service (ESS). Run it with tests/interop/shuffle-job.sh, which provides the pyspark
virtualenv and passes its arguments on:

    tests/interop/shuffle-job.sh [--ess-cmd 'CMD'] [--auth] [--no-streams] [--keep] [--timeout SECONDS]

(the options are described in shuffle-job.sh). What it does:

1. Makes a temporary directory with: local/ (the ESS's local-dir root; every executor's local
   dirs are under it), spark-home/ (symlinks to the pyspark installation, so the standalone
   workers' work dirs, with the executors' logs, land here and not in the venv), ess.log and
   driver.log.
2. Starts the ESS on 127.0.0.1:<free port> (its command, with {port}, {local_dir}, {secret},
   {spark_home} filled in, in its own process group) and waits until the port accepts
   connections.
3. Runs the driver (this file with --driver, in its own process group, output to driver.log)
   with master local-cluster[2,1,1024] (two standalone workers in the driver JVM, one executor
   JVM each) and spark.shuffle.service.enabled=true, spark.shuffle.service.port=<port>,
   spark.shuffle.readHostLocalDisk=false, spark.task.maxFailures=1,
   spark.stage.maxConsecutiveAttempts=1 (a fetch failure fails the job at once),
   spark.local.dir=<root>, SPARK_LOCAL_IP=127.0.0.1, and (unless --no-streams)
   spark.network.maxRemoteBlockSizeFetchToMem=64k, so that shuffle B is fetched with
   StreamRequests (to disk) and shuffle A with ChunkFetchRequests; with --auth
   spark.authenticate=true and spark.authenticate.secret=<secret> (SASL DIGEST-MD5 towards
   the ESS).
   The driver:
   a. waits for both executors;
   b. map stages: shuffle A = 200000 ints in 16 partitions keyed by (x * 7919) % 1009,
      reduceByKey(add) into 8 partitions; shuffle B = 20000 string records (hex digests, up to
      192 characters; about 3 MB of shuffle files) in 16 partitions, partitionBy(8); runs
      count() on both, which writes
      both shuffles' map outputs (an accumulator counts map partitions run: 32);
   c. kills both executor JVMs with SIGKILL (the CoarseGrainedExecutorBackend processes whose
      command line has this app's id) and waits until the master has started two new ones and
      the driver knows only those (the dead executors' map outputs stay registered, pointing
      at the ESS, because the ESS is enabled);
   d. reduce stages: reduceByKey's result collected, and reduceByKey's result joined with
      shuffle B, collected: every block of A and B now comes from the ESS, served from the dead
      executors' files (the new executors have their own, empty, local dirs). The
      accumulator must still be 32 (no map stage ran again: a lost map output would have
      been recomputed), and both results must equal the values computed in plain Python.
4. Stops the ESS and prints "shuffle-job: PASS ..." or "shuffle-job: FAIL <why>" last; exits
   0 or 1. On failure it prints the tails of ess.log, driver.log and the executors' stderr
   and keeps the temporary directory. Every wait is bounded.
"""

import argparse
import hashlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

APP_NAME = "shuffle-job"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
ESS_CLASS = "org.apache.spark.deploy.ExternalShuffleService"
N_INTS = 200_000
N_STRINGS = 50_000
KEYS = 1009
MAP_PARTITIONS = 16
REDUCE_PARTITIONS = 8
WAIT_EXECUTORS = 150  # seconds, for executors to come up (first start or replacements)
WAIT_ESS = 90  # seconds, for the ESS port
ACTION_TIMEOUT = 180  # seconds, for one Spark action


def say(line):
    print("shuffle-job: " + line, flush=True)


# ---------------------------------------------------------------------------------------------
# The orchestrator


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def kill_group(proc, grace=10):
    """Ends a process group this script started (its leader is proc): TERM, then KILL."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; stragglers of its group still get the signal next round.
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        return ["(cannot read %s: %s)" % (path, e)]
    return [l.rstrip("\n") for l in lines[-n:]]


def default_ess_cmd(auth):
    opts = ["-Dspark.shuffle.service.port={port}", "-Dspark.local.dir={local_dir}"]
    if auth:
        opts += ["-Dspark.authenticate=true", "-Dspark.authenticate.secret={secret}"]
    return ("SPARK_SHUFFLE_OPTS=%s exec {spark_home}/bin/spark-class %s"
            % (shlex.quote(" ".join(opts)), ESS_CLASS))


def orchestrate(args):
    import pyspark

    start = time.time()
    deadline = start + args.timeout
    pyspark_home = os.path.dirname(os.path.abspath(pyspark.__file__))
    tmp = tempfile.mkdtemp(prefix="shuffle-job.")
    root = os.path.join(tmp, "local")
    spark_home = os.path.join(tmp, "spark-home")
    os.makedirs(root)
    os.makedirs(os.path.join(spark_home, "work"))
    for entry in os.listdir(pyspark_home):
        if entry != "work":
            os.symlink(os.path.join(pyspark_home, entry), os.path.join(spark_home, entry))
    ess_log = os.path.join(tmp, "ess.log")
    driver_log = os.path.join(tmp, "driver.log")
    port = free_port()
    secret = secrets.token_hex(16) if args.auth else ""
    template = args.ess_cmd or default_ess_cmd(args.auth)
    ess_cmd = template
    for name, value in (("port", str(port)), ("local_dir", root), ("secret", secret),
                        ("spark_home", pyspark_home)):
        ess_cmd = ess_cmd.replace("{%s}" % name, value)
    say("temporary directory %s; ESS on 127.0.0.1:%d, local-dir root %s%s" %
        (tmp, port, root, ", spark.authenticate=true" if args.auth else ""))
    say("ESS: %s" % (ess_cmd.replace(secret, "<secret>") if secret else ess_cmd))

    env = dict(os.environ)
    for var in ("SPARK_LOCAL_DIRS", "SPARK_CONF_DIR", "SPARK_WORKER_DIR", "PYSPARK_SUBMIT_ARGS"):
        env.pop(var, None)
    env["SPARK_HOME"] = pyspark_home
    env["SPARK_LOCAL_IP"] = "127.0.0.1"

    ess = driver = None
    verdict = None
    try:
        with open(ess_log, "wb") as log:
            ess = subprocess.Popen(["bash", "-c", ess_cmd], stdin=subprocess.PIPE, stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        ready = time.time() + WAIT_ESS
        while not port_open(port):
            if ess.poll() is not None:
                verdict = "the ESS exited with %s before listening on %d" % (ess.returncode, port)
                break
            if time.time() > ready:
                verdict = "the ESS did not listen on 127.0.0.1:%d within %ds" % (port, WAIT_ESS)
                break
            time.sleep(0.5)
        if verdict is None:
            say("ESS is listening after %.0fs" % (time.time() - start))
            config = dict(port=port, root=root, secret=secret, spark_home=spark_home,
                          streams=not args.no_streams)
            denv = dict(env)
            denv["SPARK_HOME"] = spark_home
            denv["PYSPARK_PYTHON"] = sys.executable
            denv["PYSPARK_DRIVER_PYTHON"] = sys.executable
            with open(driver_log, "w") as log:
                driver = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--driver", json.dumps(config)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    env=denv, start_new_session=True, text=True, errors="replace")
                result = []

                def pump():
                    for line in driver.stdout:
                        log.write(line)
                        log.flush()
                        if line.startswith("JOB "):
                            say(line[len("JOB "):].rstrip("\n"))
                            result.append(line.rstrip("\n"))

                reader = threading.Thread(target=pump, daemon=True)
                reader.start()
                try:
                    driver.wait(timeout=max(1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    verdict = "the job did not finish within %ds" % args.timeout
                kill_group(driver)
                reader.join(timeout=10)
            if verdict is None:
                final = [l for l in result if l.startswith("JOB PASS") or l.startswith("JOB FAIL")]
                if not final:
                    verdict = "the driver exited with %s without a verdict" % driver.returncode
                elif final[-1].startswith("JOB FAIL"):
                    verdict = final[-1][len("JOB FAIL "):]
                elif driver.returncode != 0:
                    verdict = "the driver exited with %s" % driver.returncode
            if verdict is None and ess.poll() is not None:
                verdict = "the ESS exited with %s during the job" % ess.returncode
    finally:
        if driver is not None:
            kill_group(driver)
        if ess is not None:
            try:
                ess.stdin.close()
            except OSError:
                pass
            kill_group(ess)

    elapsed = time.time() - start
    if verdict is None:
        if not args.keep:
            subprocess.run(["rm", "-rf", tmp])
        say("PASS: shuffle job through %s ESS%s in %.0fs" %
            ("the given" if args.ess_cmd else "Spark's own", " with SASL authentication" if args.auth else "", elapsed))
        return 0
    for name, path in (("ESS log", ess_log), ("driver log", driver_log)):
        print("----- %s (%s), last lines:" % (name, path))
        for line in tail(path):
            print("  " + line)
    work = os.path.join(spark_home, "work")
    for base, _, files in sorted(os.walk(work)):
        if "stderr" in files:
            path = os.path.join(base, "stderr")
            print("----- executor log %s, last lines:" % path)
            for line in tail(path, 25):
                print("  " + line)
    say("logs kept in %s" % tmp)
    say("FAIL: %s (%.0fs)" % (verdict, elapsed))
    return 1


# ---------------------------------------------------------------------------------------------
# The driver (a child process: its output is driver.log)


class JobFailure(Exception):
    pass


def executor_processes(app_id):
    """{pid: executor id} of the live executor JVMs of this application."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv]
        if EXECUTOR_CLASS not in argv:
            continue
        pairs = dict(zip(argv, argv[1:]))
        if pairs.get("--app-id") == app_id:
            found[int(entry)] = pairs.get("--executor-id", "?")
    return found


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def executor_endpoints(sc, driver):
    """host:port of the block managers the driver knows, without the driver's own (`driver`,
    from spark.driver.blockManager.port)."""
    infos = sc._jsc.sc().statusTracker().getExecutorInfos()
    return {"%s:%d" % (i.host(), i.port()) for i in infos} - {driver}


def launched_executors(spark_home, app_id):
    """The executor ids the standalone workers launched for this app (one work dir each)."""
    try:
        return os.listdir(os.path.join(spark_home, "work", app_id))
    except OSError:
        return []


def executor_error(spark_home, app_id):
    """The first telling error line of the executors' logs, if any."""
    markers = ("Unable to register with external shuffle server", "Exception", "ERROR")
    for marker in markers:
        for execid in sorted(launched_executors(spark_home, app_id), key=lambda e: int(e) if e.isdigit() else 0):
            try:
                with open(os.path.join(spark_home, "work", app_id, execid, "stderr"), errors="replace") as f:
                    for line in f:
                        if marker in line:
                            return "executor %s: %s" % (execid, line.strip()[:700])
            except OSError:
                pass
    return None


def wait_for(what, condition, timeout=WAIT_EXECUTORS, churn=None):
    """Polls condition() until it returns something true. churn = (spark_home, app_id, limit):
    fail early when the workers have launched more than `limit` executors (they keep dying,
    e.g. because the ESS refuses their registration)."""
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        if churn:
            launched = launched_executors(churn[0], churn[1])
            if len(launched) > churn[2]:
                raise JobFailure("executors keep dying while waiting for %s (%d launched); %s"
                                 % (what, len(launched), executor_error(churn[0], churn[1])))
        time.sleep(0.5)
    error = executor_error(churn[0], churn[1]) if churn else None
    raise JobFailure("timed out after %ds waiting for %s%s" % (timeout, what,
                                                              "; " + error if error else ""))


def bounded(sc, what, action):
    """Runs a Spark action; cancels every job if it takes longer than ACTION_TIMEOUT."""
    done = threading.Event()

    def watchdog():
        if not done.wait(ACTION_TIMEOUT):
            print("JOB %s is taking more than %ds; cancelling" % (what, ACTION_TIMEOUT), flush=True)
            sc.cancelAllJobs()

    threading.Thread(target=watchdog, daemon=True).start()
    t = time.time()
    try:
        return action()
    except Exception as e:
        first = str(e).strip().split("\n")[0]
        raise JobFailure("%s failed: %s" % (what, first[:600]))
    finally:
        done.set()
        print("JOB %s took %.1fs" % (what, time.time() - t), flush=True)


def key_of(x):
    return (x * 7919) % KEYS


def string_of(i):
    return hashlib.sha256(b"%d" % i).hexdigest() * (i % 4)


def driver(config):
    from operator import add
    from pyspark import SparkConf, SparkContext

    settings = {
        "spark.shuffle.service.enabled": "true",
        "spark.shuffle.service.port": str(config["port"]),
        "spark.shuffle.readHostLocalDisk": "false",
        "spark.task.maxFailures": "1",
        "spark.stage.maxConsecutiveAttempts": "1",
        "spark.local.dir": config["root"],
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.blockManager.port": str(free_port()),
        "spark.ui.enabled": "false",
        "spark.default.parallelism": str(REDUCE_PARTITIONS),
        "spark.executor.extraJavaOptions": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1",
        "spark.python.worker.reuse": "true",
    }
    if config["streams"]:
        # Fetch requests above 64 KiB go to disk: StreamRequest instead of ChunkFetchRequest.
        # With this data, shuffle B's requests (8 blocks of about 20 KiB from one executor's
        # output) are streamed and shuffle A's (about 9 KiB) are fetched as chunks.
        settings["spark.network.maxRemoteBlockSizeFetchToMem"] = "64k"
    if config["secret"]:
        settings["spark.authenticate"] = "true"
        settings["spark.authenticate.secret"] = config["secret"]
    conf = SparkConf().setMaster("local-cluster[2,1,1024]").setAppName(APP_NAME)
    for k, v in settings.items():
        conf.set(k, v)
    print("JOB settings: " + " ".join("%s=%s" % (k, "<secret>" if "secret" in k else v)
                                      for k, v in sorted(settings.items())), flush=True)
    sc = SparkContext(conf=conf)
    try:
        app_id = sc.applicationId
        driver_bm = "127.0.0.1:" + settings["spark.driver.blockManager.port"]
        print("JOB application %s" % app_id, flush=True)

        # a. Both executors up.
        first = wait_for("2 executors", lambda: len(executor_processes(app_id)) == 2
                         and len(executor_endpoints(sc, driver_bm)) == 2 and executor_processes(app_id),
                         churn=(config["spark_home"], app_id, 3))
        old_endpoints = executor_endpoints(sc, driver_bm)
        print("JOB executors %s up (pids %s)" % (sorted(first.values()), sorted(first)), flush=True)

        # b. Map stages of both shuffles.
        maps_run = sc.accumulator(0)

        def counted(records):
            maps_run.add(1)
            return records

        ints = sc.parallelize(range(N_INTS), MAP_PARTITIONS).mapPartitions(counted)
        a = ints.map(lambda x: (key_of(x), x)).reduceByKey(add, REDUCE_PARTITIONS)
        strings = sc.parallelize(range(N_STRINGS), MAP_PARTITIONS).mapPartitions(counted)
        b = strings.map(lambda i: (i % KEYS, string_of(i))).partitionBy(REDUCE_PARTITIONS)
        count_a = bounded(sc, "map stage of shuffle A (count)", a.count)
        count_b = bounded(sc, "map stage of shuffle B (count)", b.count)
        if count_a != KEYS or count_b != N_STRINGS:
            raise JobFailure("counts %d, %d; expected %d, %d" % (count_a, count_b, KEYS, N_STRINGS))
        maps_before = maps_run.value
        if maps_before != 2 * MAP_PARTITIONS:
            raise JobFailure("%d map partitions ran, expected %d" % (maps_before, 2 * MAP_PARTITIONS))
        files = sorted(os.path.relpath(os.path.join(d, f), config["root"])
                       for d, _, fs in os.walk(config["root"]) for f in fs
                       if f.startswith("shuffle_") and f.endswith(".data"))
        print("JOB map outputs written: %d shuffle .data files under the root" % len(files), flush=True)
        if not files:
            raise JobFailure("no shuffle .data file under %s" % config["root"])

        # c. Kill the executors; wait for replacements.
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        print("JOB killed executors %s (SIGKILL to pids %s)" % (sorted(first.values()), sorted(first)),
              flush=True)
        wait_for("the killed executors to exit", lambda: not any(alive(p) for p in first))

        def replaced():
            now = executor_processes(app_id)
            endpoints = executor_endpoints(sc, driver_bm)
            fresh = (len(now) == 2 and not set(now) & set(first)
                     and not set(now.values()) & set(first.values())
                     and len(endpoints) == 2 and not endpoints & old_endpoints)
            return now if fresh else None

        second = wait_for("2 replacement executors", replaced, churn=(config["spark_home"], app_id, 5))
        print("JOB replacement executors %s up (pids %s)" % (sorted(second.values()), sorted(second)),
              flush=True)

        # d. Reduce stages, reading the dead executors' map outputs through the ESS.
        expected_a = {}
        for x in range(N_INTS):
            expected_a[key_of(x)] = expected_a.get(key_of(x), 0) + x
        expected_join = sorted((i % KEYS, (expected_a[i % KEYS], string_of(i))) for i in range(N_STRINGS))
        got_a = bounded(sc, "reduce stage of shuffle A (collect)", a.collect)
        if sorted(got_a) != sorted(expected_a.items()):
            raise JobFailure("reduceByKey result differs from the expected values (%d rows, expected %d)"
                             % (len(got_a), len(expected_a)))
        got_join = bounded(sc, "join of A and B (collect)", a.join(b).collect)
        if sorted(got_join) != expected_join:
            raise JobFailure("join result differs from the expected values (%d rows, expected %d)"
                             % (len(got_join), len(expected_join)))
        if maps_run.value != maps_before:
            raise JobFailure("map stages ran again (%d map partitions, %d before the kill): "
                             "the map outputs were lost, not read through the ESS"
                             % (maps_run.value, maps_before))
        print("JOB PASS: %d + %d rows equal the expected values; no map stage re-ran after the "
              "executors were killed" % (len(got_a), len(got_join)), flush=True)
        return 0
    except JobFailure as e:
        print("JOB FAIL %s" % e, flush=True)
        return 1
    except Exception as e:  # anything unexpected still gets a verdict line
        print("JOB FAIL unexpected %s: %s" % (type(e).__name__, str(e).split("\n")[0][:600]), flush=True)
        return 1
    finally:
        try:
            sc.stop()
        except Exception:
            pass


def main():
    parser = argparse.ArgumentParser(description="PySpark shuffle job through an external shuffle service")
    parser.add_argument("--ess-cmd", help="command that starts the ESS ({port} {local_dir} {secret} {spark_home})")
    parser.add_argument("--auth", action="store_true", help="spark.authenticate=true with a random secret")
    parser.add_argument("--no-streams", action="store_true",
                        help="leave spark.network.maxRemoteBlockSizeFetchToMem at Spark's default")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--timeout", type=int, default=480, help="bound for the whole run, seconds")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        sys.exit(driver(json.loads(args.driver)))
    sys.exit(orchestrate(args))


if __name__ == "__main__":
    main()
