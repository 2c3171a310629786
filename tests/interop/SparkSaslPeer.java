// Spark's own SASL bootstraps (network-common 4.3.0: SaslServerBootstrap, SaslClientBootstrap,
// SparkSaslServer/Client, SaslEncryption) on a real TransportServer / TransportClient, for the
// end-to-end SASL tests in tests/tests/sasl_jdk.rs. Compiled against the jar cache that
// .ci/spark-jars.sh fills.
//
//   java SparkSaslPeer server <secret> <alwaysEncrypt: true|false>
//     A TransportServer on 127.0.0.1 with SaslServerBootstrap; RPCs are echoed back with the
//     prefix "echo:". Prints "PORT <n>"; exits when stdin closes.
//   java SparkSaslPeer client <port> <secret> <encrypt: true|false>
//     A TransportClient (SaslClientBootstrap, app id "app-1") to 127.0.0.1:<port>: prints
//     "CONNECTED" or "FAILED <message>", then answers each stdin line "rpc <hex>" with
//     "OK <hex>" or "FAILED <message>"; exits at end of input.
//
// The SASL user is Spark's "sparkSaslUser"; the secret is looked up for any app id.
// Hex is lowercase; messages are on one line.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;

import org.apache.spark.network.TransportContext;
import org.apache.spark.network.client.RpcResponseCallback;
import org.apache.spark.network.client.TransportClient;
import org.apache.spark.network.client.TransportClientBootstrap;
import org.apache.spark.network.client.TransportClientFactory;
import org.apache.spark.network.sasl.SaslClientBootstrap;
import org.apache.spark.network.sasl.SaslServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.server.OneForOneStreamManager;
import org.apache.spark.network.server.RpcHandler;
import org.apache.spark.network.server.StreamManager;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.server.TransportServerBootstrap;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class SparkSaslPeer {
  static final HexFormat HEX = HexFormat.of();

  static TransportConf conf(boolean encrypt, boolean alwaysEncrypt) {
    Map<String, String> settings = new HashMap<>();
    settings.put("spark.rpc.io.mode", "NIO");
    settings.put("spark.rpc.io.serverThreads", "2");
    settings.put("spark.rpc.io.clientThreads", "2");
    settings.put("spark.authenticate.enableSaslEncryption", Boolean.toString(encrypt));
    settings.put("spark.network.sasl.serverAlwaysEncrypt", Boolean.toString(alwaysEncrypt));
    return new TransportConf("rpc", new MapConfigProvider(settings));
  }

  static SecretKeyHolder holder(String secret) {
    return new SecretKeyHolder() {
      @Override public String getSaslUser(String appId) { return "sparkSaslUser"; }
      @Override public String getSecretKey(String appId) { return secret; }
    };
  }

  static synchronized void out(String line) {
    System.out.println(line);
    System.out.flush();
  }

  static String oneLine(Throwable e) {
    Throwable root = e;
    StringBuilder sb = new StringBuilder();
    while (root != null) {
      sb.append(root.getClass().getName()).append(": ").append(root.getMessage()).append(" | ");
      root = root.getCause();
    }
    return sb.toString().replace('\n', ' ').replace('\r', ' ');
  }

  static byte[] bytes(ByteBuffer buffer) {
    ByteBuffer view = buffer.duplicate();
    byte[] out = new byte[view.remaining()];
    view.get(out);
    return out;
  }

  public static void main(String[] args) throws Exception {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    if (args[0].equals("server")) {
      String secret = args[1];
      boolean always = Boolean.parseBoolean(args[2]);
      TransportConf conf = conf(false, always);
      RpcHandler echo = new RpcHandler() {
        @Override
        public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
          byte[] body = bytes(message);
          byte[] reply = new byte[5 + body.length];
          System.arraycopy("echo:".getBytes(StandardCharsets.UTF_8), 0, reply, 0, 5);
          System.arraycopy(body, 0, reply, 5, body.length);
          callback.onSuccess(ByteBuffer.wrap(reply));
        }

        @Override
        public StreamManager getStreamManager() { return new OneForOneStreamManager(); }
      };
      TransportContext context = new TransportContext(conf, echo);
      List<TransportServerBootstrap> boots = List.of(new SaslServerBootstrap(conf, holder(secret)));
      TransportServer server = context.createServer("127.0.0.1", 0, boots);
      out("PORT " + server.getPort());
      while (in.readLine() != null) {
      }
      server.close();
      context.close();
      System.exit(0);
    } else {
      int port = Integer.parseInt(args[1]);
      String secret = args[2];
      boolean encrypt = Boolean.parseBoolean(args[3]);
      TransportConf conf = conf(encrypt, false);
      TransportContext context = new TransportContext(conf, new RpcHandler() {
        @Override
        public void receive(TransportClient c, ByteBuffer m, RpcResponseCallback cb) {
          cb.onFailure(new UnsupportedOperationException("client"));
        }

        @Override
        public StreamManager getStreamManager() { return new OneForOneStreamManager(); }
      });
      List<TransportClientBootstrap> boots =
          List.of(new SaslClientBootstrap(conf, "app-1", holder(secret)));
      TransportClientFactory factory = context.createClientFactory(boots);
      TransportClient client;
      try {
        client = factory.createClient("127.0.0.1", port);
        out("CONNECTED");
      } catch (Exception e) {
        out("FAILED " + oneLine(e));
        System.exit(0);
        return;
      }
      String line;
      while ((line = in.readLine()) != null) {
        String[] parts = line.split(" ", 2);
        byte[] body = parts.length > 1 && !parts[1].isEmpty() ? HEX.parseHex(parts[1]) : new byte[0];
        try {
          ByteBuffer reply = client.sendRpcSync(ByteBuffer.wrap(body), 30_000);
          out("OK " + HEX.formatHex(bytes(reply)));
        } catch (Exception e) {
          out("FAILED " + oneLine(e));
        }
      }
      client.close();
      factory.close();
      context.close();
      System.exit(0);
    }
  }
}
