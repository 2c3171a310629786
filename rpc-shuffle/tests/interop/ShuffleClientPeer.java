// Spark 4.3's own shuffle client (ExternalBlockStoreClient, what every executor uses) against a
// shuffle service: registers an executor, fetches blocks to memory and to disk, asks for host
// local dirs, diagnoses a corruption, removes blocks. Driven by rpc-shuffle/tests/spark_client.rs.
//
//   java ShuffleClientPeer <host> <port> <appId> <execId> <localDir> <subDirs> <secret|-> <sasl|aes>
//                          <outDir> <removeId,...> <blockId>...
//
// Prints one line per outcome: "registered", "fetched <mem|disk> <id> <len>" (bytes written to
// <outDir>/<mem|disk>-<id>), "failed <mem|disk> <id> <message>", "dirs <exec> <dir>",
// "cause <CAUSE>", "removed <n>", "error <message>", then "done".
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.StandardOpenOption;
import java.util.*;
import java.util.concurrent.*;

import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.shuffle.*;
import org.apache.spark.network.shuffle.protocol.ExecutorShuffleInfo;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public class ShuffleClientPeer {
  static synchronized void say(String line) {
    System.out.println(line.replace('\n', ' '));
    System.out.flush();
  }

  public static void main(String[] args) throws Exception {
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    String appId = args[2], execId = args[3], localDir = args[4];
    int subDirs = Integer.parseInt(args[5]);
    String secret = args[6];
    boolean aes = args[7].equals("aes");
    File outDir = new File(args[8]);
    String[] removeIds = args[9].split(",");
    String[] blockIds = Arrays.copyOfRange(args, 10, args.length);
    boolean auth = !secret.equals("-");

    Map<String, String> settings = new HashMap<>();
    settings.put("spark.shuffle.io.maxRetries", "0");
    settings.put("spark.shuffle.io.mode", "NIO");
    if (aes) settings.put("spark.network.crypto.enabled", "true");
    TransportConf conf = new TransportConf("shuffle", new MapConfigProvider(settings));
    SecretKeyHolder keys = auth ? new SecretKeyHolder() {
      public String getSaslUser(String app) { return "sparkSaslUser"; }
      public String getSecretKey(String app) { return secret; }
    } : null;
    ExternalBlockStoreClient client = new ExternalBlockStoreClient(conf, keys, auth, 10000);
    client.init(appId);
    try {
      client.registerWithShuffleServer(host, port, execId, new ExecutorShuffleInfo(
          new String[] {localDir}, subDirs, "org.apache.spark.shuffle.sort.SortShuffleManager"));
      say("registered");

      for (String mode : new String[] {"mem", "disk"}) {
        CountDownLatch latch = new CountDownLatch(blockIds.length);
        DownloadFileManager files = mode.equals("mem") ? null : new DownloadFileManager() {
          public DownloadFile createTempFile(TransportConf c) {
            try {
              return new SimpleDownloadFile(File.createTempFile("fetch", ".tmp", outDir), c);
            } catch (Exception e) {
              throw new RuntimeException(e);
            }
          }
          public boolean registerTempFileToClean(DownloadFile f) { return true; }
        };
        client.fetchBlocks(host, port, execId, blockIds, new BlockFetchingListener() {
          public void onBlockFetchSuccess(String id, ManagedBuffer data) {
            try {
              ByteBuffer bytes = data.nioByteBuffer();
              int len = bytes.remaining();
              try (FileChannel out = FileChannel.open(new File(outDir, mode + "-" + id).toPath(),
                  StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                  StandardOpenOption.TRUNCATE_EXISTING)) {
                while (bytes.hasRemaining()) out.write(bytes);
              }
              say("fetched " + mode + " " + id + " " + len);
            } catch (Exception e) {
              say("failed " + mode + " " + id + " " + e);
            } finally {
              latch.countDown();
            }
          }
          public void onBlockFetchFailure(String id, Throwable e) {
            say("failed " + mode + " " + id + " " + e.getMessage());
            latch.countDown();
          }
        }, files);
        if (!latch.await(20, TimeUnit.SECONDS)) say("error fetch timed out");
      }

      CompletableFuture<Map<String, String[]>> dirs = new CompletableFuture<>();
      client.getHostLocalDirs(host, port, new String[] {execId}, dirs);
      for (Map.Entry<String, String[]> e : dirs.get(20, TimeUnit.SECONDS).entrySet()) {
        for (String d : e.getValue()) say("dirs " + e.getKey() + " " + d);
      }

      say("cause " + client.diagnoseCorruption(host, port, execId, 0, 5L, 1, 0L, "ADLER32"));

      if (!removeIds[0].isEmpty()) {
        say("removed " + client.removeBlocks(host, port, execId, removeIds).get(20, TimeUnit.SECONDS));
      }
    } catch (Throwable e) {
      say("error " + e);
    } finally {
      client.close();
      say("done");
    }
  }
}
