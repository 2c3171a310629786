// A real Spark network-common peer for the interoperability tests (tests/tests/spark_interop.rs).
//
// Compiled by the test with javac into a temporary directory; the classpath is the jar cache
// that .ci/spark-jars.sh fills. No dependencies beyond Spark's own jars and the JDK.
//
//   java SparkPeer server
//     A Spark TransportServer on 127.0.0.1 (ephemeral port). Prints "PORT <n>", then one line
//     per one-way message received: "ONEWAY <hex>". Exits when stdin closes.
//     RPCs: a body of "fail" fails with FAIL_MESSAGE; any other body is echoed.
//     Chunks: stream id s, chunk i is pattern(s bytes, seed i); a negative id fails.
//     Streams: "bytes/<n>" is pattern(n bytes, seed 0); any other id fails.
//     Uploads: answered with meta followed by the uploaded bytes.
//     Merged block metadata: app id "fail" fails with FAIL_MESSAGE; any other request is
//     answered with meta(request): shuffleId + reduceId chunks and the body
//     "<appId>/<shuffleId>/<shuffleMergeId>/<reduceId>" in UTF-8.
//
//   java SparkPeer client <port>
//     A Spark TransportClient connected to 127.0.0.1:<port>. Prints "CONNECTED", then runs one
//     command per stdin line and prints one result line per command:
//       rpc <hex>                   -> OK <hex>      | FAILED <message>
//       send <hex>                  -> SENT          | FAILED <message>
//       fetch <stream id> <index>   -> CHUNK <hex>   | FAILED <message>
//       stream <stream id>          -> STREAM <hex>  | FAILED <message>
//       upload <meta hex> <hex>     -> OK <hex>      | FAILED <message>
//       meta <app> <shuffle> <merge> <reduce>
//                                   -> META <chunk count> <hex> | FAILED <message>
//       quit (or end of input)      -> exits 0
//     A command without an answer within COMMAND_TIMEOUT_SECONDS prints "TIMEOUT <command>".
//     Messages are on one line: backslash, CR and LF are escaped as \\, \r and \n.
//
// Hex is lowercase; an empty body is an empty hex string ("rpc " and "OK ").
// The data-plane parts (fetch, stream, upload) are separate methods on each side, so tests for
// them can be added without reshaping the program.

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.spark.network.TransportContext;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.buffer.NioManagedBuffer;
import org.apache.spark.network.client.ChunkReceivedCallback;
import org.apache.spark.network.client.MergedBlockMetaResponseCallback;
import org.apache.spark.network.client.RpcResponseCallback;
import org.apache.spark.network.client.StreamCallback;
import org.apache.spark.network.client.StreamCallbackWithID;
import org.apache.spark.network.client.TransportClient;
import org.apache.spark.network.client.TransportClientFactory;
import org.apache.spark.network.server.RpcHandler;
import org.apache.spark.network.server.StreamManager;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class SparkPeer {
  /** The message a failed RPC carries (Spark sends the exception's stack trace). */
  static final String FAIL_MESSAGE = "SparkPeer refused the request: you asked for it";
  static final long COMMAND_TIMEOUT_SECONDS = 30;
  static final HexFormat HEX = HexFormat.of();

  public static void main(String[] args) throws Exception {
    if (args.length == 1 && args[0].equals("server")) {
      server();
    } else if (args.length == 2 && args[0].equals("client")) {
      client(Integer.parseInt(args[1]));
    } else {
      System.err.println("usage: SparkPeer server | SparkPeer client <port>");
      System.exit(2);
    }
  }

  /** Spark's transport settings, as an RpcEnv would make them: module "rpc", NIO, few threads. */
  static TransportConf conf() {
    Map<String, String> settings = new HashMap<>();
    settings.put("spark.rpc.io.mode", "NIO");
    settings.put("spark.rpc.io.serverThreads", "2");
    settings.put("spark.rpc.io.clientThreads", "2");
    settings.put("spark.rpc.io.numConnectionsPerPeer", "1");
    settings.put("spark.rpc.io.connectionTimeout", "30s");
    return new TransportConf("rpc", new MapConfigProvider(settings));
  }

  /** Stdout is the test's channel: whole lines, flushed, from any thread. */
  static synchronized void out(String line) {
    System.out.println(line);
    System.out.flush();
  }

  static String oneLine(Throwable e) {
    String message = e.getMessage() != null ? e.getMessage() : e.toString();
    return message.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n");
  }

  static byte[] bytes(ByteBuffer buffer) {
    ByteBuffer view = buffer.duplicate();
    byte[] out = new byte[view.remaining()];
    view.get(out);
    return out;
  }

  /** The merged block metadata served for a request, mirrored by the Rust tests. */
  static byte[] meta(String appId, int shuffleId, int shuffleMergeId, int reduceId) {
    return (appId + "/" + shuffleId + "/" + shuffleMergeId + "/" + reduceId)
        .getBytes(StandardCharsets.UTF_8);
  }

  /** Deterministic test data, mirrored by the Rust tests: byte k is (k + seed) mod 251. */
  static byte[] pattern(int len, int seed) {
    byte[] out = new byte[len];
    for (int k = 0; k < len; k++) {
      out[k] = (byte) ((k + (long) seed) % 251);
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------
  // Server mode

  static void server() throws Exception {
    TransportContext context = new TransportContext(conf(), new PeerRpcHandler(), false);
    TransportServer server = context.createServer("127.0.0.1", 0, List.of());
    out("PORT " + server.getPort());
    // Serve until the test closes our stdin (or kills us).
    while (System.in.read() != -1) {}
    server.close();
    context.close();
    System.exit(0);
  }

  static final class PeerRpcHandler extends RpcHandler {
    private final StreamManager streams = new PeerStreamManager();
    private final AtomicLong uploads = new AtomicLong();

    @Override
    public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
      // Copy: Spark releases the request's buffer when this returns, the reply may be later.
      byte[] body = bytes(message);
      if (new String(body, StandardCharsets.UTF_8).equals("fail")) {
        callback.onFailure(new RuntimeException(FAIL_MESSAGE));
      } else {
        callback.onSuccess(ByteBuffer.wrap(body));
      }
    }

    @Override
    public void receive(TransportClient client, ByteBuffer message) {
      out("ONEWAY " + HEX.formatHex(bytes(message)));
    }

    @Override
    public StreamManager getStreamManager() {
      return streams;
    }

    /** Merged block metadata (MergedBlockMetaRequest): see meta(). */
    @Override
    public MergedBlockMetaReqHandler getMergedBlockMetaReqHandler() {
      return (client, request, callback) -> {
        if (request.appId.equals("fail")) {
          callback.onFailure(new RuntimeException(FAIL_MESSAGE));
        } else {
          callback.onSuccess(
              request.shuffleId + request.reduceId,
              new NioManagedBuffer(ByteBuffer.wrap(meta(
                  request.appId, request.shuffleId, request.shuffleMergeId, request.reduceId))));
        }
      };
    }

    /** Uploads (UploadStream): collects the bytes and answers with meta then the bytes. Spark
     *  answers a failed upload itself. */
    @Override
    public StreamCallbackWithID receiveStream(
        TransportClient client, ByteBuffer meta, RpcResponseCallback callback) {
      byte[] header = bytes(meta);
      String id = "upload-" + uploads.incrementAndGet();
      ByteArrayOutputStream received = new ByteArrayOutputStream();
      received.writeBytes(header);
      return new StreamCallbackWithID() {
        @Override
        public String getID() {
          return id;
        }

        @Override
        public void onData(String streamId, ByteBuffer buf) {
          received.writeBytes(bytes(buf));
        }

        @Override
        public void onComplete(String streamId) {}

        // Spark answers the upload itself once onComplete returns, with this response (a
        // handler that also called callback.onSuccess would answer the upload twice).
        @Override
        public ByteBuffer getCompletionResponse() {
          return ByteBuffer.wrap(received.toByteArray());
        }

        @Override
        public void onFailure(String streamId, Throwable cause) {}
      };
    }
  }

  /** Chunk fetches (ChunkFetchRequest) and streams (StreamRequest), computed on demand. */
  static final class PeerStreamManager extends StreamManager {
    @Override
    public ManagedBuffer getChunk(long streamId, int chunkIndex) {
      if (streamId < 0 || streamId > 64L * 1024 * 1024) {
        throw new IllegalArgumentException("SparkPeer has no stream " + streamId);
      }
      return new NioManagedBuffer(ByteBuffer.wrap(pattern((int) streamId, chunkIndex)));
    }

    @Override
    public ManagedBuffer openStream(String streamId) {
      if (streamId.startsWith("bytes/")) {
        int len = Integer.parseInt(streamId.substring("bytes/".length()));
        return new NioManagedBuffer(ByteBuffer.wrap(pattern(len, 0)));
      }
      throw new IllegalArgumentException("SparkPeer has no stream " + streamId);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Client mode

  static void client(int port) throws Exception {
    TransportContext context = new TransportContext(conf(), new PeerRpcHandler(), false);
    TransportClientFactory factory = context.createClientFactory();
    TransportClient client = factory.createClient("127.0.0.1", port);
    out("CONNECTED");
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null && !line.equals("quit")) {
      String[] words = line.split(" ", -1);
      String arg1 = words.length > 1 ? words[1] : "";
      String arg2 = words.length > 2 ? words[2] : "";
      CompletableFuture<String> result;
      switch (words[0]) {
        case "rpc" -> result = rpc(client, HEX.parseHex(arg1));
        case "send" -> result = send(client, HEX.parseHex(arg1));
        case "fetch" -> result = fetch(client, Long.parseLong(arg1), Integer.parseInt(arg2));
        case "stream" -> result = stream(client, arg1);
        case "streams" -> result = streams(client, java.util.Arrays.copyOfRange(words, 1, words.length));
        case "upload" -> result = upload(client, HEX.parseHex(arg1), HEX.parseHex(arg2));
        case "meta" -> result = mergedBlockMeta(client, arg1, Integer.parseInt(arg2),
            Integer.parseInt(words[3]), Integer.parseInt(words[4]));
        default -> {
          System.err.println("SparkPeer: unknown command: " + line);
          System.exit(2);
          return;
        }
      }
      try {
        out(result.get(COMMAND_TIMEOUT_SECONDS, TimeUnit.SECONDS));
      } catch (TimeoutException e) {
        out("TIMEOUT " + words[0]);
      }
    }
    client.close();
    factory.close();
    context.close();
    System.exit(0);
  }

  static RpcResponseCallback answer(CompletableFuture<String> result) {
    return new RpcResponseCallback() {
      @Override
      public void onSuccess(ByteBuffer response) {
        result.complete("OK " + HEX.formatHex(bytes(response)));
      }

      @Override
      public void onFailure(Throwable e) {
        result.complete("FAILED " + oneLine(e));
      }
    };
  }

  static CompletableFuture<String> rpc(TransportClient client, byte[] body) {
    CompletableFuture<String> result = new CompletableFuture<>();
    client.sendRpc(ByteBuffer.wrap(body), answer(result));
    return result;
  }

  /** A one-way message; "SENT" once Netty has written it to the socket. */
  static CompletableFuture<String> send(TransportClient client, byte[] body) {
    CompletableFuture<String> result = new CompletableFuture<>();
    client.send(ByteBuffer.wrap(body)).addListener(f -> {
      result.complete(f.isSuccess() ? "SENT" : "FAILED " + oneLine(f.cause()));
    });
    return result;
  }

  static CompletableFuture<String> fetch(TransportClient client, long streamId, int chunkIndex) {
    CompletableFuture<String> result = new CompletableFuture<>();
    client.fetchChunk(streamId, chunkIndex, new ChunkReceivedCallback() {
      @Override
      public void onSuccess(int index, ManagedBuffer buffer) {
        try {
          result.complete("CHUNK " + HEX.formatHex(bytes(buffer.nioByteBuffer())));
        } catch (Exception e) {
          result.complete("FAILED " + oneLine(e));
        }
      }

      @Override
      public void onFailure(int index, Throwable e) {
        result.complete("FAILED " + oneLine(e));
      }
    });
    return result;
  }

  static CompletableFuture<String> stream(TransportClient client, String streamId) {
    CompletableFuture<String> result = new CompletableFuture<>();
    ByteArrayOutputStream received = new ByteArrayOutputStream();
    client.stream(streamId, new StreamCallback() {
      @Override
      public void onData(String id, ByteBuffer buf) {
        received.writeBytes(bytes(buf));
      }

      @Override
      public void onComplete(String id) {
        result.complete("STREAM " + HEX.formatHex(received.toByteArray()));
      }

      @Override
      public void onFailure(String id, Throwable e) {
        result.complete("FAILED " + oneLine(e));
      }
    });
    return result;
  }

  /** Several streams requested at once on one connection; answers with one line of results. */
  static CompletableFuture<String> streams(TransportClient client, String[] ids) {
    java.util.List<CompletableFuture<String>> all = new java.util.ArrayList<>();
    for (String id : ids) {
      all.add(stream(client, id));
    }
    return CompletableFuture.allOf(all.toArray(new CompletableFuture[0]))
        .thenApply(done -> {
          StringBuilder line = new StringBuilder("STREAMS");
          for (CompletableFuture<String> one : all) {
            line.append(" | ").append(one.join());
          }
          return line.toString();
        });
  }

  /** TransportClient.sendMergedBlockMetaReq: the chunk count and the metadata, or why not. */
  static CompletableFuture<String> mergedBlockMeta(
      TransportClient client, String appId, int shuffleId, int shuffleMergeId, int reduceId) {
    CompletableFuture<String> result = new CompletableFuture<>();
    client.sendMergedBlockMetaReq(appId, shuffleId, shuffleMergeId, reduceId,
        new MergedBlockMetaResponseCallback() {
          @Override
          public void onSuccess(int numChunks, ManagedBuffer buffer) {
            try {
              result.complete("META " + numChunks + " " + HEX.formatHex(bytes(buffer.nioByteBuffer())));
            } catch (Exception e) {
              result.complete("FAILED " + oneLine(e));
            }
          }

          @Override
          public void onFailure(Throwable e) {
            result.complete("FAILED " + oneLine(e));
          }
        });
    return result;
  }

  static CompletableFuture<String> upload(TransportClient client, byte[] meta, byte[] data) {
    CompletableFuture<String> result = new CompletableFuture<>();
    client.uploadStream(
        new NioManagedBuffer(ByteBuffer.wrap(meta)),
        new NioManagedBuffer(ByteBuffer.wrap(data)),
        answer(result));
    return result;
  }
}
