#!/usr/bin/env bash
# Fetches the Spark jars the interoperability tests need (tests/tests/spark_interop.rs) into a
# cache outside the checkout. A second run finds the cache complete and does nothing.
#
#   .ci/spark-jars.sh
#
# SPARK_JARS_CACHE   where the jars go (default: $HOME/.cache/spark-rpc-rs/spark-jars)
# PYSPARK_VERSION    which Spark (default: 4.3.0); the jars come from PyPI's pyspark package
#
# pyspark carries Spark's jars: the sdist (about 450 MB) under deps/jars/, a wheel (when there
# is one) under pyspark/jars/. Only spark-network-common and what it needs at run time are
# kept, about 9 MB: plain transport (NIO), SASL, AES authentication with its CTR and GCM ciphers,
# and TLS. The download goes to a temporary directory that is removed afterwards, and not into
# pip's cache.
set -euo pipefail

PYSPARK_VERSION="${PYSPARK_VERSION:-4.3.0}"
CACHE="${SPARK_JARS_CACHE:-$HOME/.cache/spark-rpc-rs/spark-jars}"
MARKER_NAME="spark-jars.complete"

# The jars to keep, as patterns on the file name (the version follows the name). This is the
# minimal set found by compiling and running tests/interop/SparkPeer.java (RPC, one-way, chunk
# fetch, stream, upload and merged block metadata, both ways) and tests/interop/security-matrix.sh
# (every security mode, Spark against Spark), dropping one jar at a time until a class was
# missing:
#   - SASL DIGEST-MD5 (with or without auth-conf) needs nothing beyond the JDK;
#   - AES authentication needs tink (X25519, HKDF, AES-GCM; also the GCM transport cipher);
#   - the AES-CTR transport cipher needs commons-crypto (CryptoOutputStream over its native
#     OpenSSL binding or the JCE);
#   - TLS needs netty-transport-native-unix-common (Netty's SslHandler refers to UnixChannel);
#     netty-tcnative is left out on purpose, so spark.ssl.rpc.openSslEnabled falls back to the
#     JDK provider (SparkPeer relies on that for its PEM configuration).
# Merged block metadata needs no RoaringBitmap: its bitmaps travel as an opaque body, which
# neither side decodes. Guava is shaded inside spark-network-common; no Jackson is needed.
# Epoll mode would add the native netty jars.
JAR_PATTERNS=(
    '^spark-network-common_2\.13-[0-9].*\.jar$'
    '^spark-common-utils-java_2\.13-[0-9].*\.jar$'
    # rpc-shuffle/tests/spark_client.rs: Spark's ExternalBlockStoreClient, whose messages
    # carry Jackson annotations and RoaringBitmaps.
    '^spark-network-shuffle_2\.13-[0-9].*\.jar$'
    '^jackson-databind-[0-9].*\.jar$'
    '^jackson-core-[0-9].*\.jar$'
    '^jackson-annotations-[0-9].*\.jar$'
    '^RoaringBitmap-[0-9].*\.jar$'
    '^netty-buffer-[0-9].*\.jar$'
    '^netty-codec-base-[0-9].*\.jar$'
    '^netty-common-[0-9].*\.jar$'
    '^netty-handler-[0-9].*\.jar$'
    '^netty-resolver-[0-9].*\.jar$'
    '^netty-transport-[0-9].*\.jar$'
    '^netty-transport-native-unix-common-[0-9].*\.jar$'
    '^metrics-core-[0-9].*\.jar$'
    '^slf4j-api-[0-9].*\.jar$'
    '^log4j-api-[0-9].*\.jar$'
    '^tink-[0-9].*\.jar$'
    '^commons-crypto-[0-9].*\.jar$'
)

fail() {
    echo "spark-jars: FAILED: $*" >&2
    exit 1
}

say() {
    echo "spark-jars: $*"
}

# The cache must not be inside the checkout: the jars must never be committed.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cache_abs="$(realpath -m "$CACHE")" || fail "cannot resolve $CACHE"
case "$cache_abs/" in
"$repo"/*) fail "the cache $cache_abs is inside the checkout $repo; set SPARK_JARS_CACHE elsewhere" ;;
esac

marker="$cache_abs/$MARKER_NAME"

# A complete cache for this version: every jar the marker lists is present, and every pattern
# names a listed jar (a cache made when the script kept fewer jars is fetched again).
if [[ -f "$marker" ]] && [[ "$(head -n 1 "$marker")" == "pyspark $PYSPARK_VERSION" ]]; then
    complete=1
    while read -r jar; do
        [[ -f "$cache_abs/$jar" ]] || complete=0
    done < <(tail -n +2 "$marker")
    for pattern in "${JAR_PATTERNS[@]}"; do
        found=0
        while read -r jar; do
            [[ $jar =~ $pattern ]] && found=1
        done < <(tail -n +2 "$marker")
        [[ $found == 1 ]] || complete=0
    done
    if [[ $complete == 1 ]]; then
        say "cache complete at $cache_abs (pyspark $PYSPARK_VERSION, $(($(wc -l <"$marker") - 1)) jars); nothing to do"
        exit 0
    fi
    say "cache at $cache_abs is incomplete or lacks jars this script now keeps; fetching again"
fi

# Never overwrite a directory that is not ours.
if [[ -d "$cache_abs" && ! -f "$marker" ]] && [[ -n "$(ls -A "$cache_abs")" ]]; then
    fail "$cache_abs exists and is not a spark-jars cache (no $MARKER_NAME); remove it or set SPARK_JARS_CACHE elsewhere"
fi

command -v python3 >/dev/null || fail "python3 is not installed (pip fetches pyspark from PyPI)"
python3 -m pip --version >/dev/null 2>&1 || fail "pip is not available (python3 -m pip)"
command -v tar >/dev/null || fail "tar is not installed"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/spark-jars.XXXXXX")"
staging="$cache_abs.partial.$$"
cleanup() {
    rm -rf "$tmp" "$staging"
}
trap cleanup EXIT

say "downloading pyspark $PYSPARK_VERSION from PyPI into $tmp (an sdist is about 450 MB)"
start=$(date +%s)
if ! python3 -m pip download --no-deps --no-cache-dir --disable-pip-version-check \
    "pyspark==$PYSPARK_VERSION" -d "$tmp/download" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    fail "pip could not download pyspark==$PYSPARK_VERSION (is PyPI reachable? does the version exist: python3 -m pip index versions pyspark)"
fi
downloaded=$(($(date +%s) - start))

shopt -s nullglob
archives=("$tmp/download"/pyspark-*)
shopt -u nullglob
[[ ${#archives[@]} == 1 ]] || fail "expected one pyspark archive in $tmp/download, found ${#archives[@]}"
archive="${archives[0]}"
size_mb=$(($(stat -c %s "$archive") / 1024 / 1024))
say "downloaded $(basename "$archive") ($size_mb MiB) in ${downloaded}s"

# The archive's members, then the jar members matching the patterns, one per pattern.
case "$archive" in
*.whl)
    command -v unzip >/dev/null || fail "unzip is not installed (needed for the pyspark wheel)"
    unzip -Z1 "$archive" >"$tmp/members" || fail "cannot list $archive"
    jar_dir_re='^pyspark/jars/'
    ;;
*.tar.gz)
    tar -tzf "$archive" >"$tmp/members" || fail "cannot list $archive"
    jar_dir_re='^pyspark-[^/]*/deps/jars/'
    ;;
*) fail "unexpected archive type: $archive" ;;
esac

selected=()
for pattern in "${JAR_PATTERNS[@]}"; do
    matches=()
    while IFS= read -r member; do
        name="${member##*/}"
        [[ $name =~ $pattern ]] && matches+=("$member")
    done < <(grep -E "$jar_dir_re[^/]+\.jar$" "$tmp/members")
    [[ ${#matches[@]} == 1 ]] ||
        fail "expected one jar matching $pattern in $(basename "$archive"), found ${#matches[@]}: ${matches[*]:-none}"
    selected+=("${matches[0]}")
done

mkdir -p "$tmp/extract" "$staging" || fail "cannot create $staging"
case "$archive" in
*.whl) unzip -q "$archive" "${selected[@]}" -d "$tmp/extract" || fail "cannot extract jars from $archive" ;;
*.tar.gz) tar -xzf "$archive" -C "$tmp/extract" "${selected[@]}" || fail "cannot extract jars from $archive" ;;
esac

{
    echo "pyspark $PYSPARK_VERSION"
    for member in "${selected[@]}"; do
        echo "${member##*/}"
    done
} >"$staging/$MARKER_NAME.new"
for member in "${selected[@]}"; do
    mv "$tmp/extract/$member" "$staging/" || fail "cannot move ${member##*/} into $staging"
done
# The marker goes in last: a cache with a marker is a complete cache.
mv "$staging/$MARKER_NAME.new" "$staging/$MARKER_NAME"

# Replace only what is ours: a directory with our marker, or an empty one.
if [[ -e "$cache_abs" ]]; then
    if [[ -f "$marker" ]]; then
        rm -rf "$cache_abs"
    else
        rmdir "$cache_abs" 2>/dev/null ||
            fail "$cache_abs exists and is not a spark-jars cache (no $MARKER_NAME); remove it or set SPARK_JARS_CACHE elsewhere"
    fi
fi
mv "$staging" "$cache_abs" || fail "cannot move $staging to $cache_abs"

say "cached ${#selected[@]} jars ($(du -sh "$cache_abs" | cut -f1)) from pyspark $PYSPARK_VERSION at $cache_abs in $(($(date +%s) - start))s:"
tail -n +2 "$cache_abs/$MARKER_NAME" | sed 's/^/  /'
