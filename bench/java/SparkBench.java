// rpc-bench's Spark contender: Spark's own network-common transport (TransportServer /
// TransportClient, the jars .ci/spark-jars.sh caches). `rpc-bench all` runs it on W1-W8 in
// plain mode; `rpc-bench security` runs W1, W2 and W4 with the same crypto as our contenders.
// rpc-bench (bench/src/spark.rs) compiles it with javac against the jar cache and runs it; the
// settings are those of tests/interop/SparkPeer.java, whose header explains each one.
//
//   java SparkBench server --port P [--block-bytes N] [--file PATH|none] [--security S]
//                          [--tls-key K --tls-cert C]
//     A TransportServer on 127.0.0.1:P. Prints "READY" once listening; runs until killed.
//     RPCs of 32 bytes are echoed; an empty RPC is answered with the count of one-way
//     messages received so far (8 bytes, little-endian); one-way messages are counted.
//     Streams: "bytes/<n>" is n pattern bytes (the block of --block-bytes, made at start,
//     served from one direct buffer as a NioManagedBuffer); "file" is --file, served as a
//     FileSegmentManagedBuffer (Netty sends it with a FileRegion: sendfile, no copy).
//   java SparkBench client --port P --workload W1..W8 [--quick] [--server-pid PID]
//                          [--security S] [--tls-key K --tls-cert C]
//     Runs the workload and prints "RESULT {json}" lines, as rpc-bench's own clients do.
//
//   --security plain | aes-gcm (AES auth v2, AES/GCM/NoPadding) | aes-ctr (v1, AES/CTR) |
//              tls (spark.ssl.rpc.* with PEM files: openSslEnabled=true, privateKey,
//              certChain; Spark's client needs the key and cert too and trusts exactly that
//              certificate)
//
// The workloads (shared/bench/WORKLOADS.md; sizes as bench/src/common.rs Sizes, metric names
// as the Rust contenders print them):
//   W1 sequential sendRpcSync of a 32-byte body (2,000 warm-up then 20,000 measured;
//      p50_us, p99_us, mean_us);
//   W2 200,000 sendRpc of 32 bytes with 64 in flight (req_per_s);
//   W3 1,000,000 one-way TransportClient.send of 32 bytes (waiting 200 us whenever the
//      channel is not writable, counted as send_refusals), then count RPCs until the server
//      has counted them all (msg_per_s);
//   W4 the stream "bytes/<block>" fetched 5 times (gib_per_s of the median; peak RSS);
//   W5 64 connections (createUnmanagedClient: the factory pools one per peer), each 2,000
//      sequential sendRpcSync, all at once on 64 threads (asks_per_s);
//   W6 W1 on one connection while a second one streams the block over and over (p50_us,
//      p99_us, and bulk_gib_per_s: the stream bytes received during the measured round trips);
//   W7 the stream "file" once (gib_per_s, server_cpu_s_per_gib from /proc/<server>/stat as
//      common.rs FileTimer does; peak RSS);
//   W8 1,000 connections, each 200 sequential asks (each sent from the previous reply's
//      callback), all at once (asks_per_s; peak RSS).
// --quick: 20/200 round trips, 2,000 pipelined asks, 10,000 one-way messages, 20 asks per
// W5 connection, a 16 MiB block and file, W8 50 connections x 20 asks.

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;

import org.apache.spark.network.TransportContext;
import org.apache.spark.network.buffer.FileSegmentManagedBuffer;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.buffer.NioManagedBuffer;
import org.apache.spark.network.client.RpcResponseCallback;
import org.apache.spark.network.client.StreamCallback;
import org.apache.spark.network.client.TransportClient;
import org.apache.spark.network.client.TransportClientFactory;
import org.apache.spark.network.crypto.AuthClientBootstrap;
import org.apache.spark.network.crypto.AuthServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.server.RpcHandler;
import org.apache.spark.network.server.StreamManager;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.server.TransportServerBootstrap;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class SparkBench {
  static final int PAYLOAD = 32;
  static final int PIPELINE = 64;
  static final int FAN_IN = 64;
  static final int W4_REPS = 5;
  static final String SECRET = "rpc-bench-secret";
  static final String APP_ID = "sparkSaslUser";

  static final class Options {
    boolean server;
    int port;
    String workload;
    boolean quick;
    long serverPid = -1;
    long blockBytes = -1;
    String file;
    String security = "plain";
    String tlsKey;
    String tlsCert;
  }

  public static void main(String[] args) throws Exception {
    if (System.getProperty("io.netty.handler.ssl.defaultEndpointVerificationAlgorithm") == null) {
      System.setProperty("io.netty.handler.ssl.defaultEndpointVerificationAlgorithm", "NONE");
    }
    Options o = new Options();
    if (args.length < 1) {
      usage("no mode");
    }
    o.server = switch (args[0]) {
      case "server" -> true;
      case "client" -> false;
      default -> { usage("unknown mode " + args[0]); yield false; }
    };
    for (int i = 1; i < args.length; i++) {
      String flag = args[i];
      switch (flag) {
        case "--port" -> o.port = Integer.parseInt(args[++i]);
        case "--workload" -> o.workload = args[++i];
        case "--quick" -> o.quick = true;
        case "--server-pid" -> o.serverPid = Long.parseLong(args[++i]);
        case "--block-bytes" -> o.blockBytes = Long.parseLong(args[++i]);
        case "--file" -> {
          String path = args[++i];
          o.file = path.equals("none") ? null : path;
        }
        case "--security" -> o.security = args[++i];
        case "--tls-key" -> o.tlsKey = args[++i];
        case "--tls-cert" -> o.tlsCert = args[++i];
        default -> usage("unknown flag " + flag);
      }
    }
    if (!List.of("plain", "aes-gcm", "aes-ctr", "tls").contains(o.security)) {
      usage("unknown --security " + o.security);
    }
    if (o.security.equals("tls") && (o.tlsKey == null || o.tlsCert == null)) {
      usage("--security tls needs --tls-key and --tls-cert");
    }
    if (o.server) {
      server(o);
    } else {
      client(o);
    }
  }

  static void usage(String why) {
    System.err.println("SparkBench: " + why);
    System.err.println("usage: SparkBench server --port P [--block-bytes N] [--security S] ..."
        + " | SparkBench client --port P --workload W [--quick] [--server-pid PID] [--security S] ...");
    System.exit(2);
  }

  /** Spark's transport settings as an RpcEnv makes them (module "rpc", NIO, 2 threads a side,
   *  one connection per peer), plus the crypto, under Spark's own keys. */
  static TransportConf conf(Options o) {
    Map<String, String> s = new HashMap<>();
    s.put("spark.rpc.io.mode", "NIO");
    s.put("spark.rpc.io.serverThreads", "2");
    s.put("spark.rpc.io.clientThreads", "2");
    s.put("spark.rpc.io.numConnectionsPerPeer", "1");
    s.put("spark.rpc.io.connectionTimeout", "120s");
    switch (o.security) {
      case "aes-gcm" -> {
        s.put("spark.network.crypto.enabled", "true");
        s.put("spark.network.crypto.authEngineVersion", "2");
        s.put("spark.network.crypto.cipher", "AES/GCM/NoPadding");
        s.put("spark.network.crypto.saslFallback", "false");
      }
      case "aes-ctr" -> {
        s.put("spark.network.crypto.enabled", "true");
        s.put("spark.network.crypto.authEngineVersion", "1");
        s.put("spark.network.crypto.cipher", "AES/CTR/NoPadding");
        s.put("spark.network.crypto.saslFallback", "false");
      }
      case "tls" -> {
        s.put("spark.ssl.rpc.enabled", "true");
        s.put("spark.ssl.rpc.openSslEnabled", "true");
        s.put("spark.ssl.rpc.privateKey", o.tlsKey);
        s.put("spark.ssl.rpc.certChain", o.tlsCert);
      }
      default -> {}
    }
    return new TransportConf("rpc", new MapConfigProvider(s));
  }

  static boolean aes(Options o) {
    return o.security.startsWith("aes-");
  }

  static SecretKeyHolder secrets() {
    return new SecretKeyHolder() {
      @Override
      public String getSaslUser(String appId) {
        return "sparkSaslUser";
      }

      @Override
      public String getSecretKey(String appId) {
        return SECRET;
      }
    };
  }

  static byte[] pattern(int len) {
    byte[] out = new byte[len];
    for (int k = 0; k < len; k++) {
      out[k] = (byte) (k % 251);
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------
  // Server

  static final Map<Integer, ByteBuffer> BLOCKS = new java.util.concurrent.ConcurrentHashMap<>();

  static ByteBuffer block(int n) {
    return BLOCKS.computeIfAbsent(n, len -> {
      ByteBuffer b = ByteBuffer.allocateDirect(len);
      b.put(pattern(len));
      b.flip();
      return b;
    });
  }

  static void server(Options o) throws Exception {
    TransportConf conf = conf(o);
    if (o.blockBytes > 0) {
      block((int) o.blockBytes);
    }
    File file = o.file == null ? null : new File(o.file);
    if (file != null && !file.isFile()) {
      usage("no file " + o.file);
    }
    StreamManager streams = new StreamManager() {
      @Override
      public ManagedBuffer getChunk(long streamId, int chunkIndex) {
        throw new IllegalArgumentException("no chunks");
      }

      @Override
      public ManagedBuffer openStream(String streamId) {
        if (streamId.startsWith("bytes/")) {
          int n = Integer.parseInt(streamId.substring("bytes/".length()));
          return new NioManagedBuffer(block(n).duplicate());
        }
        if (streamId.equals("file") && file != null) {
          return new FileSegmentManagedBuffer(conf, file, 0, file.length());
        }
        throw new IllegalArgumentException("no stream " + streamId);
      }
    };
    // W3's one-way messages, counted as they arrive (on the connection's event loop).
    AtomicLong received = new AtomicLong();
    RpcHandler handler = new RpcHandler() {
      @Override
      public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
        if (!message.hasRemaining()) {
          // The count ask of W3.
          ByteBuffer count = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
          count.putLong(received.get());
          count.flip();
          callback.onSuccess(count);
          return;
        }
        // Copy: Spark releases the request's buffer when this returns.
        ByteBuffer copy = ByteBuffer.allocate(message.remaining());
        copy.put(message);
        copy.flip();
        callback.onSuccess(copy);
      }

      @Override
      public void receive(TransportClient client, ByteBuffer message) {
        received.incrementAndGet();
      }

      @Override
      public StreamManager getStreamManager() {
        return streams;
      }
    };
    TransportContext context = new TransportContext(conf, handler, false);
    List<TransportServerBootstrap> bootstraps =
        aes(o) ? List.of(new AuthServerBootstrap(conf, secrets())) : List.of();
    TransportServer server = context.createServer("127.0.0.1", o.port, bootstraps);
    System.out.println("READY");
    System.out.flush();
    Thread.sleep(Long.MAX_VALUE);
    server.close();
  }

  // ---------------------------------------------------------------------------------------
  // Client

  static void client(Options o) throws Exception {
    TransportConf conf = conf(o);
    TransportContext context = new TransportContext(conf, new RpcHandler() {
      @Override
      public void receive(TransportClient c, ByteBuffer m, RpcResponseCallback cb) {
        cb.onFailure(new UnsupportedOperationException());
      }

      @Override
      public StreamManager getStreamManager() {
        return null;
      }
    }, false);
    TransportClientFactory factory = aes(o)
        ? context.createClientFactory(List.of(new AuthClientBootstrap(conf, APP_ID, secrets())))
        : context.createClientFactory();
    TransportClient client = factory.createClient("127.0.0.1", o.port);
    int warmup = o.quick ? 20 : 2_000;
    int latency = o.quick ? 200 : 20_000;
    int pipelined = o.quick ? 2_000 : 200_000;
    int block = o.quick ? 16 << 20 : 256 << 20;
    int oneWay = o.quick ? 10_000 : 1_000_000;
    int fanInAsks = o.quick ? 20 : 2_000;
    long fileBytes = o.quick ? 16L << 20 : 1L << 30;
    int manyConnections = o.quick ? 50 : 1_000;
    int manyAsks = o.quick ? 20 : 200;
    byte[] payload = new byte[PAYLOAD];
    Arrays.fill(payload, (byte) 7);
    switch (o.workload) {
      case "W1" -> {
        roundTrips(client, payload, warmup);
        long[] samples = roundTrips(client, payload, latency);
        Arrays.sort(samples);
        result(o, "p50_us", at(samples, 0.50) / 1e3);
        result(o, "p99_us", at(samples, 0.99) / 1e3);
        double sum = 0;
        for (long s : samples) {
          sum += s;
        }
        result(o, "mean_us", sum / samples.length / 1e3);
      }
      case "W2" -> {
        Semaphore window = new Semaphore(PIPELINE);
        CountDownLatch done = new CountDownLatch(pipelined);
        AtomicReference<Throwable> failed = new AtomicReference<>();
        RpcResponseCallback callback = new RpcResponseCallback() {
          @Override
          public void onSuccess(ByteBuffer response) {
            if (response.remaining() != PAYLOAD) {
              failed.compareAndSet(null, new IllegalStateException("reply of " + response.remaining()));
            }
            window.release();
            done.countDown();
          }

          @Override
          public void onFailure(Throwable e) {
            failed.compareAndSet(null, e);
            window.release();
            done.countDown();
          }
        };
        long start = System.nanoTime();
        for (int i = 0; i < pipelined; i++) {
          window.acquire();
          client.sendRpc(ByteBuffer.wrap(payload), callback);
        }
        if (!done.await(600, TimeUnit.SECONDS)) {
          throw new IllegalStateException("W2 did not finish");
        }
        long elapsed = System.nanoTime() - start;
        if (failed.get() != null) {
          throw new IllegalStateException("W2 failed", failed.get());
        }
        result(o, "req_per_s", pipelined / (elapsed / 1e9));
      }
      case "W4" -> {
        long[] times = new long[W4_REPS];
        for (int r = 0; r < W4_REPS; r++) {
          long start = System.nanoTime();
          long n = drain(client, "bytes/" + block, new AtomicLong());
          times[r] = System.nanoTime() - start;
          if (n != block) {
            throw new IllegalStateException("stream of " + n + " bytes, not " + block);
          }
        }
        Arrays.sort(times);
        double seconds = times[times.length / 2] / 1e9;
        result(o, "gib_per_s", block / (double) (1L << 30) / seconds);
        peakRss(o);
      }
      case "W3" -> {
        ByteBuffer one = ByteBuffer.wrap(payload);
        long refused = 0;
        long start = System.nanoTime();
        for (int i = 0; i < oneWay; i++) {
          while (!client.getChannel().isWritable()) {
            // Netty's outbound buffer is past its high-water mark: let the connection drain.
            refused++;
            LockSupport.parkNanos(200_000);
          }
          client.send(one.duplicate());
        }
        while (true) {
          ByteBuffer reply = client.sendRpcSync(ByteBuffer.allocate(0), 60_000);
          if (reply.order(ByteOrder.LITTLE_ENDIAN).getLong(0) >= oneWay) {
            break;
          }
          LockSupport.parkNanos(200_000);
        }
        long elapsed = System.nanoTime() - start;
        result(o, "msg_per_s", oneWay / (elapsed / 1e9));
        result(o, "send_refusals", refused);
      }
      case "W5" -> {
        List<TransportClient> clients = new ArrayList<>();
        for (int c = 0; c < FAN_IN; c++) {
          clients.add(factory.createUnmanagedClient("127.0.0.1", o.port));
        }
        CountDownLatch go = new CountDownLatch(1);
        AtomicReference<Throwable> failed = new AtomicReference<>();
        List<Thread> threads = new ArrayList<>();
        for (TransportClient c : clients) {
          Thread t = new Thread(() -> {
            try {
              go.await();
              roundTrips(c, payload, fanInAsks);
            } catch (Throwable e) {
              failed.compareAndSet(null, e);
            }
          });
          t.start();
          threads.add(t);
        }
        long start = System.nanoTime();
        go.countDown();
        for (Thread t : threads) {
          t.join();
        }
        long elapsed = System.nanoTime() - start;
        if (failed.get() != null) {
          throw new IllegalStateException("W5 failed", failed.get());
        }
        result(o, "asks_per_s", (double) FAN_IN * fanInAsks / (elapsed / 1e9));
        for (TransportClient c : clients) {
          c.close();
        }
      }
      case "W6" -> {
        // The load: a second connection streams the block over and over, on its own thread.
        TransportClient bulk = factory.createUnmanagedClient("127.0.0.1", o.port);
        AtomicLong streamed = new AtomicLong();
        AtomicBoolean stop = new AtomicBoolean();
        AtomicReference<Throwable> failed = new AtomicReference<>();
        Thread load = new Thread(() -> {
          try {
            while (!stop.get()) {
              drain(bulk, "bytes/" + block, streamed);
            }
          } catch (Throwable e) {
            failed.compareAndSet(null, e);
          }
        });
        load.setDaemon(true);
        load.start();
        roundTrips(client, payload, warmup);
        long bytesBefore = streamed.get();
        long start = System.nanoTime();
        long[] samples = roundTrips(client, payload, latency);
        long elapsed = System.nanoTime() - start;
        long bytes = streamed.get() - bytesBefore;
        stop.set(true);
        if (failed.get() != null) {
          throw new IllegalStateException("W6's load failed", failed.get());
        }
        Arrays.sort(samples);
        result(o, "p50_us", at(samples, 0.50) / 1e3);
        result(o, "p99_us", at(samples, 0.99) / 1e3);
        result(o, "bulk_gib_per_s", bytes / (double) (1L << 30) / (elapsed / 1e9));
      }
      case "W7" -> {
        Double cpuBefore = cpuSeconds(o.serverPid);
        long start = System.nanoTime();
        long n = drain(client, "file", new AtomicLong());
        long elapsed = System.nanoTime() - start;
        Double cpuAfter = cpuSeconds(o.serverPid);
        if (n != fileBytes) {
          throw new IllegalStateException("file stream of " + n + " bytes, not " + fileBytes);
        }
        double gib = n / (double) (1L << 30);
        result(o, "gib_per_s", gib / (elapsed / 1e9));
        if (cpuBefore != null && cpuAfter != null) {
          result(o, "server_cpu_s_per_gib", (cpuAfter - cpuBefore) / gib);
        }
        peakRss(o);
      }
      case "W8" -> {
        List<TransportClient> clients = new ArrayList<>();
        for (int c = 0; c < manyConnections; c++) {
          clients.add(factory.createUnmanagedClient("127.0.0.1", o.port));
        }
        CountDownLatch done = new CountDownLatch(manyConnections);
        AtomicReference<Throwable> failed = new AtomicReference<>();
        long start = System.nanoTime();
        for (TransportClient c : clients) {
          askChain(c, payload, manyAsks, done, failed);
        }
        if (!done.await(600, TimeUnit.SECONDS)) {
          throw new IllegalStateException("W8 did not finish");
        }
        long elapsed = System.nanoTime() - start;
        if (failed.get() != null) {
          throw new IllegalStateException("W8 failed", failed.get());
        }
        result(o, "asks_per_s", (double) manyConnections * manyAsks / (elapsed / 1e9));
        peakRss(o);
        for (TransportClient c : clients) {
          c.close();
        }
      }
      default -> usage("unknown workload " + o.workload);
    }
    client.close();
    factory.close();
    context.close();
    System.exit(0);
  }

  static long[] roundTrips(TransportClient client, byte[] payload, int n) {
    long[] samples = new long[n];
    for (int i = 0; i < n; i++) {
      long start = System.nanoTime();
      ByteBuffer reply = client.sendRpcSync(ByteBuffer.wrap(payload), 60_000);
      samples[i] = System.nanoTime() - start;
      if (reply.remaining() != PAYLOAD) {
        throw new IllegalStateException("reply of " + reply.remaining());
      }
    }
    return samples;
  }

  static double at(long[] sorted, double q) {
    return sorted[Math.min((int) (sorted.length * q), sorted.length - 1)];
  }

  /** Asks `left` more sequential 32-byte echoes on `client`, each from the previous reply's
   *  callback (W8: no thread per connection); counts `done` down when the last one is back. */
  static void askChain(TransportClient client, byte[] payload, int left, CountDownLatch done,
      AtomicReference<Throwable> failed) {
    if (left == 0) {
      done.countDown();
      return;
    }
    client.sendRpc(ByteBuffer.wrap(payload), new RpcResponseCallback() {
      @Override
      public void onSuccess(ByteBuffer response) {
        if (response.remaining() != PAYLOAD) {
          failed.compareAndSet(null, new IllegalStateException("reply of " + response.remaining()));
          done.countDown();
          return;
        }
        askChain(client, payload, left - 1, done, failed);
      }

      @Override
      public void onFailure(Throwable e) {
        failed.compareAndSet(null, e);
        done.countDown();
      }
    });
  }

  /** Reads the stream `id` whole, discarding it, adding each piece's length to `progress` as
   *  it arrives; returns the stream's length. */
  static long drain(TransportClient client, String id, AtomicLong progress) throws Exception {
    CompletableFuture<Long> result = new CompletableFuture<>();
    long[] count = {0};
    client.stream(id, new StreamCallback() {
      @Override
      public void onData(String streamId, ByteBuffer buf) {
        count[0] += buf.remaining();
        progress.addAndGet(buf.remaining());
      }

      @Override
      public void onComplete(String streamId) {
        result.complete(count[0]);
      }

      @Override
      public void onFailure(String streamId, Throwable e) {
        result.completeExceptionally(e);
      }
    });
    return result.get(600, TimeUnit.SECONDS);
  }

  static void result(Options o, String metric, double value) {
    System.out.println("RESULT {\"contender\":\"spark\",\"workload\":\"" + o.workload
        + "\",\"metric\":\"" + metric + "\",\"value\":" + value + "}");
    System.out.flush();
  }

  static void peakRss(Options o) {
    Long self = vmHwmKib("self");
    if (self != null) {
      result(o, "client_peak_rss_mib", self / 1024.0);
    }
    if (o.serverPid > 0) {
      Long server = vmHwmKib(Long.toString(o.serverPid));
      if (server != null) {
        result(o, "server_peak_rss_mib", server / 1024.0);
      }
    }
  }

  /** User plus system CPU seconds of process `pid` so far (/proc/<pid>/stat, 100 ticks a
   *  second), as common.rs cpu_seconds reads them; null if unknown. */
  static Double cpuSeconds(long pid) {
    if (pid <= 0) {
      return null;
    }
    try {
      String stat = Files.readString(Path.of("/proc/" + pid + "/stat"));
      // The fields after the command name, which is in parentheses and may hold spaces.
      String[] fields = stat.substring(stat.lastIndexOf(')') + 2).trim().split("\\s+");
      return (Long.parseLong(fields[11]) + Long.parseLong(fields[12])) / 100.0;
    } catch (Exception e) {
      return null;
    }
  }

  static Long vmHwmKib(String pid) {
    try {
      for (String line : Files.readAllLines(Path.of("/proc/" + pid + "/status"))) {
        if (line.startsWith("VmHWM:")) {
          return Long.parseLong(line.substring(6).trim().replace("kB", "").trim());
        }
      }
    } catch (Exception e) {
      // not on Linux, or the server is gone
    }
    return null;
  }
}
