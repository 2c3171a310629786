// Spark's own external shuffle service (ESS), its own ESS client, and a sort-shuffle file
// writer, for the shuffle interoperability tests (Rust ESS vs Spark client, Rust client vs
// Spark ESS). Spark-vs-Spark: tests/interop/shuffle-matrix.sh.
//
// One file, no build tool: compiled with javac against the jar cache of .ci/spark-jars.sh
// (spark-network-shuffle and its run-time needs), the way tests/tests/common/mod.rs
// (compile_java) compiles SparkPeer:
//   javac -d CLASSES -cp "$HOME/.cache/spark-rpc-rs/spark-jars/*" tests/interop/ShufflePeer.java
//   java -cp "CLASSES:$HOME/.cache/spark-rpc-rs/spark-jars/*" ShufflePeer <mode> ...
//
// Modes:
//
//   server [--auth SECRET] [--aes] [--root DIR] [--port N]
//     Spark's ESS as the standalone org.apache.spark.deploy.ExternalShuffleService builds it:
//     a TransportContext (module "shuffle", closeIdleConnections=true) over
//     org.apache.spark.network.shuffle.ExternalBlockHandler, without a registration DB. Binds
//     127.0.0.1 on an ephemeral port (or --port N), prints "PORT <n>" (flushed), serves until
//     stdin closes, then exits 0.
//     --auth SECRET  AuthServerBootstrap with a SecretKeyHolder that gives SECRET for any app id
//                    (as standalone Spark's SecurityManager does; SASL user "sparkSaslUser").
//                    SASL DIGEST-MD5 (auth only), Spark's default with spark.authenticate=true.
//     --aes          with --auth: spark.network.crypto.enabled=true (Spark's AES-based
//                    authentication, then AES-CTR on the channel; SASL fallback stays on).
//     --root DIR     the service's own local dir(s), comma-separated: Spark 4.3.0's
//                    LocalDirValidator refuses a RegisterExecutor whose localDirs do not
//                    canonicalise under one of them ("...ExternalBlockHandler(conf, null, roots,
//                    false)", as standalone passes Utils.getConfiguredLocalDirs). Without --root
//                    no root is given and 4.3.0 validates nothing.
//
//   client PORT [--auth SECRET] [--aes] [--retries N] --app APP [CMD ...]
//     Spark's ExternalBlockStoreClient, init(APP) (AuthClientBootstrap with app id APP when
//     --auth), against 127.0.0.1:PORT. Commands are taken from the arguments after the flags
//     (each command word followed by exactly its arguments, so several commands can follow
//     each other), or, when there is none, one per stdin line (blank-separated words; "quit" or
//     end of input ends). Every command prints its result lines, then "END <command word>".
//     A command that fails prints "ERROR <one line>" (and END) and the client goes on; the
//     client exits 0 at the end (2 for a usage error).
//       register EXEC DIR[,DIR...] SUBDIRS SHUFFLE_MANAGER
//           registerWithShuffleServer("127.0.0.1", PORT, EXEC, ExecutorShuffleInfo(...)) as
//           BlockManager.registerWithExternalShuffleServer does (one attempt, timeout
//           spark.shuffle.registration.timeout = 5000 ms) -> "REGISTERED EXEC"
//       fetch HOST EXEC BLOCKID[,BLOCKID...]
//       fetch-to-disk HOST EXEC BLOCKID[,BLOCKID...]
//           fetchBlocks(HOST, PORT, EXEC, ids, listener, null) -- chunk fetches -- or with a
//           DownloadFileManager (temporary files) -- stream requests, as Spark does for big
//           blocks. One line per block, in the order asked:
//             "BLOCK <id> OK <length> <sha256 hex>" | "BLOCK <id> FAIL <one-line reason>"
//           (a block without an answer within 60 s: "BLOCK <id> FAIL timeout").
//           Spark's fetcher (OneForOneBlockFetcher) takes the blocks of one shuffle per call
//           ("Expected shuffleId=0, got:..." otherwise) and, for batch ids shuffle_S_M_R1_R2,
//           one range per map (a second range of the same map is never answered: timeout).
//       remove EXEC BLOCKID[,BLOCKID...]
//           removeBlocks("127.0.0.1", PORT, APP, EXEC, ids) -> "REMOVED <n>"
//       localdirs EXEC[,EXEC...]
//           getHostLocalDirs("127.0.0.1", PORT, execs) -> "DIRS <exec> <dir,dir,...>" per exec
//     --retries N   spark.shuffle.io.maxRetries (default here 0, so a failure shows at once;
//                   Spark's default is 3 with 5 s between tries).
//
//   write-shuffle DIR[,DIR...] SUBDIRS SHUFFLE_ID MAP_ID NUM_REDUCERS SEED
//     Writes one map output in sort-shuffle layout where an executor with these local dirs
//     would: shuffle_S_M_0.data and shuffle_S_M_0.index, each at Spark's own
//     ExecutorDiskUtils.getFilePath(dirs, SUBDIRS, name) (sub-dirs created as needed). The
//     index holds NUM_REDUCERS+1 big-endian longs, the first 0. Prints
//     "BLOCK shuffle_S_M_r <length> <sha256 hex>" per reducer r.
//     Block r's bytes (mirrorable in Rust): a SplitMix64 generator with state
//     (SEED << 32) ^ r; length 0 when r % 4 == 1 (so block 1 is always empty), otherwise
//     1 + (next() mod 100000) (unsigned); the bytes are the following next() outputs,
//     little-endian, cut to the length. SplitMix64: state += 0x9E3779B97F4A7C15; z = state;
//     z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >>> 27)) * 0x94D049BB133111EB;
//     return z ^ (z >>> 31).
//
// Messages go on one line: backslash, CR and LF are escaped as \\, \r and \n; the stack
// frames of a server's stack trace (an RpcFailure's message) are left out. Spark's logging
// has no SLF4J provider in the jar cache, so Spark logs nothing; failures reach stdout through
// the callbacks.

import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.spark.network.TransportContext;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.crypto.AuthServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.server.TransportServerBootstrap;
import org.apache.spark.network.shuffle.BlockFetchingListener;
import org.apache.spark.network.shuffle.DownloadFile;
import org.apache.spark.network.shuffle.DownloadFileManager;
import org.apache.spark.network.shuffle.ExecutorDiskUtils;
import org.apache.spark.network.shuffle.ExternalBlockHandler;
import org.apache.spark.network.shuffle.ExternalBlockStoreClient;
import org.apache.spark.network.shuffle.SimpleDownloadFile;
import org.apache.spark.network.shuffle.protocol.ExecutorShuffleInfo;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class ShufflePeer {
  static final String USAGE = """
      usage: ShufflePeer server [--auth SECRET] [--aes] [--root DIR[,DIR...]] [--port N]
             ShufflePeer client PORT [--auth SECRET] [--aes] [--retries N] --app APP [CMD ...]
               CMD: register EXEC DIR[,DIR...] SUBDIRS SHUFFLE_MANAGER
                    fetch HOST EXEC BLOCKID[,...] | fetch-to-disk HOST EXEC BLOCKID[,...]
                    remove EXEC BLOCKID[,...] | localdirs EXEC[,...]
             ShufflePeer write-shuffle DIR[,DIR...] SUBDIRS SHUFFLE_ID MAP_ID NUM_REDUCERS SEED""";
  static final long FETCH_TIMEOUT_SECONDS = 60;
  static final long REGISTRATION_TIMEOUT_MS = 5000; // spark.shuffle.registration.timeout
  static final String SASL_USER = "sparkSaslUser"; // SecurityManager.getSaslUser
  /** How many words follow each client command word. */
  static final Map<String, Integer> ARITY = Map.of(
      "register", 4, "fetch", 3, "fetch-to-disk", 3, "remove", 2, "localdirs", 1);

  public static void main(String[] args) throws Exception {
    try {
      if (args.length == 0) {
        throw new IllegalArgumentException("no mode");
      }
      switch (args[0]) {
        case "server" -> server(Arrays.copyOfRange(args, 1, args.length));
        case "client" -> client(Arrays.copyOfRange(args, 1, args.length));
        case "write-shuffle" -> writeShuffle(Arrays.copyOfRange(args, 1, args.length));
        default -> throw new IllegalArgumentException("unknown mode " + args[0]);
      }
    } catch (IllegalArgumentException e) {
      System.err.println("ShufflePeer: " + e.getMessage());
      System.err.println(USAGE);
      System.exit(2);
    }
  }

  /** Spark's transport settings for module "shuffle" (spark.shuffle.io.*), plus the flags. */
  static TransportConf conf(boolean aes, int retries) {
    Map<String, String> settings = new HashMap<>();
    settings.put("spark.shuffle.io.mode", "NIO");
    settings.put("spark.shuffle.io.serverThreads", "2");
    settings.put("spark.shuffle.io.clientThreads", "2");
    settings.put("spark.shuffle.io.connectionTimeout", "30s");
    settings.put("spark.shuffle.io.maxRetries", Integer.toString(retries));
    settings.put("spark.network.crypto.enabled", Boolean.toString(aes));
    return new TransportConf("shuffle", new MapConfigProvider(settings));
  }

  /** One secret for every app id, as standalone Spark's SecurityManager. */
  static SecretKeyHolder secrets(String secret) {
    return new SecretKeyHolder() {
      @Override
      public String getSaslUser(String appId) {
        return SASL_USER;
      }

      @Override
      public String getSecretKey(String appId) {
        return secret;
      }
    };
  }

  static String value(String[] args, int i, String flag) {
    if (i >= args.length) {
      throw new IllegalArgumentException(flag + " needs a value");
    }
    return args[i];
  }

  // ---------------------------------------------------------------------------------------
  // server

  static void server(String[] args) throws Exception {
    String secret = null;
    boolean aes = false;
    String[] roots = null;
    int port = 0;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--port" -> port = Integer.parseInt(value(args, ++i, "--port"));
        case "--auth" -> secret = value(args, ++i, "--auth");
        case "--aes" -> aes = true;
        case "--root" -> roots = value(args, ++i, "--root").split(",");
        default -> throw new IllegalArgumentException("unknown server flag " + args[i]);
      }
    }
    if (aes && secret == null) {
      throw new IllegalArgumentException("--aes needs --auth SECRET");
    }
    TransportConf conf = conf(aes, 0);
    // As ExternalShuffleService.start(): no registration DB (null file), the service's local
    // dirs as LocalDirValidator roots, requireAppSegment=false (standalone).
    ExternalBlockHandler handler = roots == null
        ? new ExternalBlockHandler(conf, null)
        : new ExternalBlockHandler(conf, null, roots, false);
    TransportContext context = new TransportContext(conf, handler, true);
    List<TransportServerBootstrap> bootstraps = secret == null
        ? List.of()
        : List.of(new AuthServerBootstrap(conf, secrets(secret)));
    TransportServer server = context.createServer("127.0.0.1", port, bootstraps);
    out("PORT " + server.getPort());
    while (System.in.read() != -1) {}
    server.close();
    handler.close();
    context.close();
    System.exit(0);
  }

  // ---------------------------------------------------------------------------------------
  // client

  static void client(String[] args) throws Exception {
    if (args.length < 1) {
      throw new IllegalArgumentException("client needs a port");
    }
    int port;
    try {
      port = Integer.parseInt(args[0]);
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException("not a port: " + args[0]);
    }
    String secret = null;
    boolean aes = false;
    String app = null;
    int retries = 0;
    int i = 1;
    for (; i < args.length && args[i].startsWith("--"); i++) {
      switch (args[i]) {
        case "--auth" -> secret = value(args, ++i, "--auth");
        case "--aes" -> aes = true;
        case "--app" -> app = value(args, ++i, "--app");
        case "--retries" -> retries = Integer.parseInt(value(args, ++i, "--retries"));
        default -> throw new IllegalArgumentException("unknown client flag " + args[i]);
      }
    }
    if (app == null) {
      throw new IllegalArgumentException("client needs --app APP");
    }
    if (aes && secret == null) {
      throw new IllegalArgumentException("--aes needs --auth SECRET");
    }
    // Commands from the arguments: split them by the arity of each command word.
    List<List<String>> commands = new ArrayList<>();
    while (i < args.length) {
      Integer arity = ARITY.get(args[i]);
      if (arity == null) {
        throw new IllegalArgumentException("unknown command " + args[i]);
      }
      if (i + arity >= args.length) {
        throw new IllegalArgumentException(args[i] + " needs " + arity + " arguments");
      }
      commands.add(List.of(Arrays.copyOfRange(args, i, i + 1 + arity)));
      i += 1 + arity;
    }

    TransportConf conf = conf(aes, retries);
    ExternalBlockStoreClient client = new ExternalBlockStoreClient(
        conf, secret == null ? null : secrets(secret), secret != null, REGISTRATION_TIMEOUT_MS);
    client.init(app);
    Client c = new Client(client, conf, port, app);
    if (!commands.isEmpty()) {
      for (List<String> command : commands) {
        c.run(command);
      }
    } else {
      var in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in));
      String line;
      while ((line = in.readLine()) != null) {
        line = line.strip();
        if (line.isEmpty()) {
          continue;
        }
        if (line.equals("quit")) {
          break;
        }
        c.run(List.of(line.split("\\s+")));
      }
    }
    client.close();
    System.exit(0);
  }

  record Client(ExternalBlockStoreClient client, TransportConf conf, int port, String app) {
    void run(List<String> command) {
      String word = command.get(0);
      try {
        Integer arity = ARITY.get(word);
        if (arity == null) {
          throw new IllegalArgumentException("unknown command " + word);
        }
        if (command.size() != arity + 1) {
          throw new IllegalArgumentException(word + " needs " + arity + " arguments");
        }
        switch (word) {
          case "register" -> register(command.get(1), command.get(2).split(","),
              Integer.parseInt(command.get(3)), command.get(4));
          case "fetch" -> fetch(command.get(1), command.get(2), command.get(3).split(","), false);
          case "fetch-to-disk" ->
              fetch(command.get(1), command.get(2), command.get(3).split(","), true);
          case "remove" -> remove(command.get(1), command.get(2).split(","));
          case "localdirs" -> localDirs(command.get(1).split(","));
          default -> throw new IllegalStateException(word);
        }
      } catch (Throwable e) {
        out("ERROR " + chain(e));
      }
      out("END " + word);
    }

    void register(String exec, String[] dirs, int subDirs, String shuffleManager)
        throws Exception {
      client.registerWithShuffleServer("127.0.0.1", port, exec,
          new ExecutorShuffleInfo(dirs, subDirs, shuffleManager));
      out("REGISTERED " + exec);
    }

    void fetch(String host, String exec, String[] ids, boolean toDisk) throws Exception {
      Map<String, String> results = new ConcurrentHashMap<>();
      CountDownLatch done = new CountDownLatch(ids.length);
      BlockFetchingListener listener = new BlockFetchingListener() {
        @Override
        public void onBlockFetchSuccess(String id, ManagedBuffer data) {
          String result;
          try {
            ByteBuffer bytes = data.nioByteBuffer();
            result = "OK " + bytes.remaining() + " " + sha256(bytes);
          } catch (Throwable e) {
            result = "FAIL reading the buffer: " + chain(e);
          }
          if (results.putIfAbsent(id, result) == null) {
            done.countDown();
          }
        }

        @Override
        public void onBlockFetchFailure(String id, Throwable e) {
          if (results.putIfAbsent(id, "FAIL " + chain(e)) == null) {
            done.countDown();
          }
        }
      };
      DownloadFileManager files = null;
      if (toDisk) {
        Path dir = Files.createTempDirectory("shuffle-peer-fetch");
        dir.toFile().deleteOnExit();
        files = new DownloadFileManager() {
          @Override
          public DownloadFile createTempFile(TransportConf transportConf) {
            try {
              File file = Files.createTempFile(dir, "block", ".tmp").toFile();
              file.deleteOnExit();
              return new SimpleDownloadFile(file, transportConf);
            } catch (IOException e) {
              throw new RuntimeException(e);
            }
          }

          @Override
          public boolean registerTempFileToClean(DownloadFile file) {
            return false; // the caller deletes it after the callback
          }
        };
      }
      client.fetchBlocks(host, port, exec, ids, listener, files);
      done.await(FETCH_TIMEOUT_SECONDS, TimeUnit.SECONDS);
      for (String id : ids) {
        out("BLOCK " + id + " " + results.getOrDefault(id, "FAIL timeout"));
      }
    }

    void remove(String exec, String[] ids) throws Exception {
      int n = client.removeBlocks("127.0.0.1", port, exec, ids)
          .get(FETCH_TIMEOUT_SECONDS, TimeUnit.SECONDS);
      out("REMOVED " + n);
    }

    void localDirs(String[] execs) throws Exception {
      CompletableFuture<Map<String, String[]>> future = new CompletableFuture<>();
      client.getHostLocalDirs("127.0.0.1", port, execs, future);
      Map<String, String[]> dirs = future.get(FETCH_TIMEOUT_SECONDS, TimeUnit.SECONDS);
      for (String exec : execs) {
        String[] d = dirs.get(exec);
        out("DIRS " + exec + " " + (d == null ? "?" : String.join(",", d)));
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // write-shuffle

  static void writeShuffle(String[] args) throws Exception {
    if (args.length != 6) {
      throw new IllegalArgumentException("write-shuffle needs 6 arguments");
    }
    String[] dirs = args[0].split(",");
    int subDirs = Integer.parseInt(args[1]);
    int shuffleId = Integer.parseInt(args[2]);
    long mapId = Long.parseLong(args[3]);
    int reducers = Integer.parseInt(args[4]);
    long seed = Long.parseLong(args[5]);
    String base = "shuffle_" + shuffleId + "_" + mapId + "_0";
    File data = new File(ExecutorDiskUtils.getFilePath(dirs, subDirs, base + ".data"));
    File index = new File(ExecutorDiskUtils.getFilePath(dirs, subDirs, base + ".index"));
    Files.createDirectories(data.toPath().getParent());
    Files.createDirectories(index.toPath().getParent());
    ByteBuffer offsets = ByteBuffer.allocate(8 * (reducers + 1)); // big-endian
    long offset = 0;
    offsets.putLong(offset);
    List<String> lines = new ArrayList<>();
    try (FileChannel out = new RandomAccessFile(data, "rw").getChannel()) {
      out.truncate(0);
      for (int r = 0; r < reducers; r++) {
        byte[] block = block(seed, r);
        ByteBuffer b = ByteBuffer.wrap(block);
        while (b.hasRemaining()) {
          out.write(b);
        }
        offset += block.length;
        offsets.putLong(offset);
        lines.add("BLOCK shuffle_" + shuffleId + "_" + mapId + "_" + r + " " + block.length
            + " " + sha256(ByteBuffer.wrap(block)));
      }
    }
    Files.write(index.toPath(), offsets.array());
    for (String line : lines) {
      out(line);
    }
  }

  /** Block r of a map output written with this seed (see the header comment). */
  static byte[] block(long seed, int r) {
    long[] state = {(seed << 32) ^ r};
    int length = r % 4 == 1 ? 0 : 1 + (int) Long.remainderUnsigned(splitMix64(state), 100_000);
    byte[] out = new byte[length];
    for (int k = 0; k < length; k += 8) {
      long z = splitMix64(state);
      for (int j = 0; j < 8 && k + j < length; j++) {
        out[k + j] = (byte) (z >>> (8 * j));
      }
    }
    return out;
  }

  static long splitMix64(long[] state) {
    state[0] += 0x9E3779B97F4A7C15L;
    long z = state[0];
    z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
    z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
    return z ^ (z >>> 31);
  }

  // ---------------------------------------------------------------------------------------
  // helpers

  /** Stdout is the test's channel: whole lines, flushed, from any thread. */
  static synchronized void out(String line) {
    System.out.println(line);
    System.out.flush();
  }

  static String sha256(ByteBuffer bytes) throws Exception {
    MessageDigest digest = MessageDigest.getInstance("SHA-256");
    digest.update(bytes.duplicate());
    return HexFormat.of().formatHex(digest.digest());
  }

  static final java.util.regex.Pattern FRAME =
      java.util.regex.Pattern.compile("\\r?\\n\\s+(at |\\.\\.\\. \\d+ more)[^\\n]*");

  /** Every exception of a cause chain, "Class: message", joined by " <- ", on one line. */
  static String chain(Throwable e) {
    StringBuilder out = new StringBuilder();
    int depth = 0;
    for (Throwable t = e; t != null && depth < 16; t = t.getCause(), depth++) {
      if (depth > 0) {
        out.append(" <- ");
      }
      // An RpcFailure's message is the server's whole stack trace: keep its exception lines
      // ("Class: message", "Caused by: ...") and drop the frames.
      out.append(FRAME.matcher(t.toString()).replaceAll(""));
    }
    return out.toString().strip().replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n");
  }
}
