#!/usr/bin/env bash
# Runs a real PySpark 4.3.0 job whose reduce stages can only read their input through an
# external shuffle service (ESS): Spark's own standalone ESS by default, or any ESS given by
# the command that starts it (e.g. the Rust one). See tests/interop/shuffle_job.py for what the
# job does and checks.
#
#   tests/interop/shuffle-job.sh [--ess-cmd 'CMD'] [--auth] [--no-streams] [--keep] [--timeout SECONDS]
#
#   --ess-cmd CMD   how to start the ESS (run with bash -c, in its own process group, killed at
#                   the end; its stdin stays open until then). Placeholders:
#                     {port}       the port it must listen on, on 127.0.0.1
#                     {local_dir}  its local-dir root: every executor's local dirs are under it
#                                  (Spark 4.3.0's ESS refuses registrations from dirs that are
#                                  not under its own local dirs)
#                     {secret}     the shared secret (with --auth; empty otherwise)
#                     {spark_home} the pyspark installation (its jars/ hold Spark's jars)
#                   e.g. --ess-cmd 'target/debug/rpc-shuffle-server --port {port} --local-dir {local_dir}'
#                   or ShufflePeer's server (Spark's ExternalBlockHandler, compiled against the
#                   jar cache into CLASSES): --ess-cmd 'exec java -cp "CLASSES:$HOME/.cache/
#                   spark-rpc-rs/spark-jars/*" ShufflePeer server --port {port} --root {local_dir}
#                   --auth {secret}' (with --auth; without it, leave out "--auth {secret}").
#                   Default: Spark's own org.apache.spark.deploy.ExternalShuffleService from the
#                   pyspark installation (spark-class, with spark.shuffle.service.port={port},
#                   spark.local.dir={local_dir}, and with --auth spark.authenticate=true and
#                   spark.authenticate.secret={secret}).
#   --auth          spark.authenticate=true with a random secret on the job and the ESS (SASL
#                   DIGEST-MD5, Spark's default when only spark.authenticate is set).
#   --no-streams    leave spark.network.maxRemoteBlockSizeFetchToMem at Spark's default (200m),
#                   so every block is fetched with ChunkFetchRequests; by default it is 64k and
#                   the bigger shuffle is fetched with StreamRequests (fetch to disk).
#   --keep          keep the temporary directory (logs, local dirs) even when the job passes.
#   --timeout S     the whole run's bound (default 480 s).
#
# PYSPARK_VENV     the virtualenv with pyspark (default: $HOME/.cache/spark-rpc-rs/pyspark-venv).
#                  Created with python3 -m venv and pip install pyspark==4.3.0 when pyspark 4.3.0
#                  is not in it (about 460 MB download, 1 minute); reused otherwise. It must not
#                  be inside the checkout.
# JAVA_HOME        the JDK for Spark (else java from PATH); Spark 4 needs Java 17 or later.
#
# Prints "shuffle-job: PASS ..." or "shuffle-job: FAIL ..." as its last line and exits 0 or 1;
# on failure it prints the tails of the ESS log, the driver log and the executors' logs, and
# keeps the temporary directory (its path is printed). About 1-2 minutes on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo="$(cd "$here/../.." && pwd -P)"
PYSPARK_VERSION=4.3.0
venv="${PYSPARK_VENV:-$HOME/.cache/spark-rpc-rs/pyspark-venv}"

venv_abs="$(realpath -m "$venv")"
case "$venv_abs/" in
"$repo"/*) echo "shuffle-job: the venv $venv_abs is inside the checkout; set PYSPARK_VENV elsewhere" >&2; exit 1 ;;
esac

have_pyspark() {
    [[ -x "$venv_abs/bin/python" ]] &&
        "$venv_abs/bin/python" -c "import sys, pyspark; sys.exit(pyspark.__version__ != '$PYSPARK_VERSION')" 2>/dev/null
}

if ! have_pyspark; then
    command -v python3 >/dev/null || { echo "shuffle-job: python3 is not installed" >&2; exit 1; }
    echo "shuffle-job: installing pyspark==$PYSPARK_VERSION into $venv_abs (about 460 MB download)"
    [[ -x "$venv_abs/bin/python" ]] || python3 -m venv "$venv_abs"
    "$venv_abs/bin/python" -m pip install --disable-pip-version-check --no-cache-dir --quiet \
        "pyspark==$PYSPARK_VERSION" || { echo "shuffle-job: pip install pyspark==$PYSPARK_VERSION failed" >&2; exit 1; }
    have_pyspark || { echo "shuffle-job: pyspark $PYSPARK_VERSION is still not importable from $venv_abs" >&2; exit 1; }
fi

exec "$venv_abs/bin/python" "$here/shuffle_job.py" "$@"
