// rpc-bench's Spark contender: Spark's own network-common transport (TransportServer /
// TransportClient, the jars .ci/spark-jars.sh caches) running W1, W2 and W4 with the same
// crypto as our contenders. rpc-bench (bench/src/spark.rs) compiles it with javac against the
// jar cache and runs it; the settings are those of tests/interop/SparkPeer.java, whose header
// explains each one.
//
//   java SparkBench server --port P [--block-bytes N] [--security S] [--tls-key K --tls-cert C]
//     A TransportServer on 127.0.0.1:P. Prints "READY" once listening; runs until killed.
//     RPCs are echoed. Streams: "bytes/<n>" is n pattern bytes (the block of --block-bytes,
//     made at start, served from one direct buffer as a NioManagedBuffer).
//   java SparkBench client --port P --workload W1|W2|W4 [--quick] [--server-pid PID]
//                          [--security S] [--tls-key K --tls-cert C]
//     Runs the workload and prints "RESULT {json}" lines, as rpc-bench's own clients do.
//
//   --security plain | aes-gcm (AES auth v2, AES/GCM/NoPadding) | aes-ctr (v1, AES/CTR) |
//              tls (spark.ssl.rpc.* with PEM files: openSslEnabled=true, privateKey,
//              certChain; Spark's client needs the key and cert too and trusts exactly that
//              certificate)
//
// The workloads (shared/bench/WORKLOADS.md): W1 sequential sendRpcSync of a 32-byte body
// (2,000 warm-up then 20,000 measured; p50/p99/mean µs); W2 200,000 sendRpc of 32 bytes with 64
// in flight (requests/s); W4 the stream "bytes/<block>" fetched 5 times (GiB/s of the median).
// --quick: 20/200 round trips, 2,000 pipelined asks, a 16 MiB block.

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.spark.network.TransportContext;
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
        throw new IllegalArgumentException("no stream " + streamId);
      }
    };
    RpcHandler handler = new RpcHandler() {
      @Override
      public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
        // Copy: Spark releases the request's buffer when this returns.
        ByteBuffer copy = ByteBuffer.allocate(message.remaining());
        copy.put(message);
        copy.flip();
        callback.onSuccess(copy);
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
          long n = drain(client, "bytes/" + block);
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

  static long drain(TransportClient client, String id) throws Exception {
    CompletableFuture<Long> result = new CompletableFuture<>();
    long[] count = {0};
    client.stream(id, new StreamCallback() {
      @Override
      public void onData(String streamId, ByteBuffer buf) {
        count[0] += buf.remaining();
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
