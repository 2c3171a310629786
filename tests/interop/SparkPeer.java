// A real Spark network-common peer for the interoperability tests (tests/tests/spark_interop.rs).
//
// Compiled by the test with javac into a temporary directory; the classpath is the jar cache
// that .ci/spark-jars.sh fills. No dependencies beyond Spark's own jars and the JDK.
// tests/interop/security-matrix.sh runs it against itself in every security mode.
//
//   java SparkPeer server [flags]
//     A Spark TransportServer on 127.0.0.1 (ephemeral port). Prints "PORT <n>", then one line
//     per one-way message received: "ONEWAY <hex>". Exits when stdin closes.
//     RPCs: a body of "fail" fails with FAIL_MESSAGE; any other body is echoed.
//     Chunks: stream id s, chunk i is pattern(s bytes, seed i); a negative id fails.
//     Streams: "bytes/<n>" is pattern(n bytes, seed 0); any other id fails.
//     Uploads: answered with meta followed by the uploaded bytes.
//     Merged block metadata: app id "fail" fails with FAIL_MESSAGE; any other request is
//     answered with meta(request): shuffleId + reduceId chunks and the body
//     "<appId>/<shuffleId>/<shuffleMergeId>/<reduceId>" in UTF-8.
//     With --auth sasl|aes it also prints, per connection, what Spark's authenticating handler
//     decided (a connection may print several AUTH_FAILED lines, e.g. a refused AES challenge
//     before an accepted SASL fallback):
//       AUTHENTICATED <client id>   the handshake succeeded (the client id is the app id)
//       AUTH_FAILED <exception chain>
//                                   a handshake message was refused (wrong secret, unknown app
//                                   id, the other protocol, ...), or an unauthenticated client
//                                   sent an RPC
//     With --report it prints one line per request its handler serves: "SERVED rpc <length>",
//     "SERVED fetch <stream id> <index>", "SERVED stream <id>", "SERVED upload",
//     "SERVED meta <app>" (one-way messages print ONEWAY as always). Spark serves chunk fetches
//     and streams to clients that never authenticated; these lines show it.
//
//   java SparkPeer client <port> [flags]
//     A Spark TransportClient connected to 127.0.0.1:<port>. Prints "CONNECTED", then runs one
//     command per stdin line and prints one result line per command:
//       rpc <hex>                   -> OK <hex>      | FAILED <message>
//       send <hex>                  -> SENT          | FAILED <message>
//       fetch <stream id> <index>   -> CHUNK <hex>   | FAILED <message>
//       stream <stream id>          -> STREAM <hex>  | FAILED <message>
//       streams <id> <id> ...       -> STREAMS | <result> | <result> ...  (all at once)
//       upload <meta hex> <hex>     -> OK <hex>      | FAILED <message>
//       meta <app> <shuffle> <merge> <reduce>
//                                   -> META <chunk count> <hex> | FAILED <message>
//       quit (or end of input)      -> exits 0
//     A command without an answer within COMMAND_TIMEOUT_SECONDS prints "TIMEOUT <command>".
//     Messages are on one line: backslash, CR and LF are escaped as \\, \r and \n.
//     If connecting fails (TCP, the TLS handshake, or the authentication bootstrap), the client
//     prints "CONNECT_FAILED <exception chain>" instead of "CONNECTED", answers every command
//     with "FAILED not connected" and exits 0 when stdin closes (or on "quit"). Spark's
//     TransportClientFactory returns a client on a dead channel when the TLS handshake failed
//     (it waits for the handshake to finish, not to succeed); the peer checks the outcome itself
//     and reports it as CONNECT_FAILED. An exception chain is "Class: message" of each cause,
//     joined by " <- ", escaped like the messages. Without key confirmation in Spark's AES
//     protocol, an AES version or cipher mismatch prints CONNECTED and fails every command.
//
// Flags (both modes; none given = plain transport, exactly as before). Every setting goes
// through Spark's own TransportConf keys (MapConfigProvider, module "rpc") and Spark's own
// bootstraps, as Spark's RpcEnv uses them: AuthServerBootstrap / AuthClientBootstrap, which run
// the AES protocol when spark.network.crypto.enabled and otherwise hand over to
// SaslServerBootstrap / SaslClientBootstrap.
//   --auth none|sasl|aes        spark.network.crypto.enabled = (aes); sasl = DIGEST-MD5.
//                               Default none: no bootstrap at all.
//   --secret <string>           the shared secret (default "secret").
//   --app-id <id>               client: the app id it presents; server: the only app id its
//                               SecretKeyHolder knows (null secret for any other, so another id
//                               fails as on Spark's shuffle service). Default "sparkSaslUser",
//                               the constant Spark's RpcEnv uses. The SASL user is always
//                               "sparkSaslUser" (SecurityManager.getSaslUser).
//   --aes-version 1|2           spark.network.crypto.authEngineVersion (Spark's default: 1).
//   --cipher ctr|gcm            spark.network.crypto.cipher = AES/CTR/NoPadding | AES/GCM/NoPadding
//                               (Spark's default: CTR).
//   --sasl-encrypt              spark.authenticate.enableSaslEncryption=true: the client asks
//                               for auth-conf, the server offers auth-conf,auth.
//   --server-always-encrypt     spark.network.sasl.serverAlwaysEncrypt=true (server: auth-conf
//                               only).
//   --no-sasl-fallback          spark.network.crypto.saslFallback=false.
//   --tls --tls-key <pem> --tls-cert <pem>
//                               spark.ssl.rpc.enabled=true with Spark's PEM configuration:
//                               spark.ssl.rpc.privateKey / certChain, and
//                               spark.ssl.rpc.openSslEnabled=true, without which TransportConf
//                               accepts only key stores ("RPC SSL encryption enabled but keys
//                               not found!"). netty-tcnative is not in the jar cache, so
//                               SSLFactory falls back to the JDK provider (it logs "OpenSSL
//                               Provider requested but it is not available"). The key is an
//                               unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"). In this
//                               configuration Spark's client needs a key and a cert too, and
//                               trusts exactly the certificate(s) in its own --tls-cert (Spark
//                               expects one certificate for the whole cluster): give the client
//                               the server's key and cert.
//   --tls-keystore [--tls-trust <pem>]
//                               with --tls: Spark's JDK configuration instead. The peer turns
//                               --tls-key/--tls-cert into a PKCS12 key store
//                               (spark.ssl.rpc.keyStore, keyStorePassword, keyPassword) and
//                               --tls-trust into a PKCS12 trust store (spark.ssl.rpc.trustStore,
//                               trustStorePassword), in a temporary directory. A client without
//                               --tls-trust trusts every certificate (Spark's credulous trust
//                               manager). Spark requires a key store on the client as well
//                               (any key and cert do; the client never presents it).
//   --report                    server: print SERVED lines (above). Client: print, right
//                               after CONNECTED, "LAYERS <layer>..." — the protection layers
//                               Spark installed on the connection, socket side first, from its
//                               handler names: aes-ctr, aes-gcm, sasl (auth-conf), tls; or
//                               "LAYERS none". E.g. "LAYERS aes-gcm tls" for TLS + AES.
// TLS and authentication combine: with --tls and --auth aes Spark stacks its AES cipher under
// TLS (the TLS records travel encrypted by AES).
//
// JVM options: Netty 4.2 makes a client SslContext check the server's host name by default,
// and Spark creates its TLS engines without a peer host, so with the PEM configuration every
// handshake fails ("Hostname or IP address is undefined"). Spark's launcher therefore runs
// every JVM with -Dio.netty.handler.ssl.defaultEndpointVerificationAlgorithm=NONE
// (org.apache.spark.launcher.JavaModuleOptions). SparkPeer sets that property itself at start
// when it is not given; pass -Dio.netty.handler.ssl.defaultEndpointVerificationAlgorithm=HTTPS
// to the JVM to see Netty's default instead. The key store configuration uses the JDK's
// SSLContext directly and never checks host names.
//
// Hex is lowercase; an empty body is an empty hex string ("rpc " and "OK ").
// The data-plane parts (fetch, stream, upload) are separate methods on each side, so tests for
// them can be added without reshaping the program.

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Base64;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;

import io.netty.channel.Channel;
import io.netty.channel.socket.SocketChannel;
import io.netty.util.concurrent.Future;
import io.netty.handler.ssl.SslHandler;

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
import org.apache.spark.network.crypto.AuthClientBootstrap;
import org.apache.spark.network.crypto.AuthServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.server.AbstractAuthRpcHandler;
import org.apache.spark.network.server.RpcHandler;
import org.apache.spark.network.server.StreamManager;
import org.apache.spark.network.server.TransportChannelHandler;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.server.TransportServerBootstrap;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class SparkPeer {
  /** The message a failed RPC carries (Spark sends the exception's stack trace). */
  static final String FAIL_MESSAGE = "SparkPeer refused the request: you asked for it";
  static final long COMMAND_TIMEOUT_SECONDS = 30;
  static final HexFormat HEX = HexFormat.of();

  /** The Netty 4.2 property Spark's launcher sets (JavaModuleOptions): without it, a Spark TLS
   *  client configured with PEM files checks the server's host name, which Spark never gives. */
  static final String ENDPOINT_VERIFICATION_PROPERTY =
      "io.netty.handler.ssl.defaultEndpointVerificationAlgorithm";

  public static void main(String[] args) throws Exception {
    Options options;
    try {
      options = Options.parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println("SparkPeer: " + e.getMessage());
      System.err.println(Options.USAGE);
      System.exit(2);
      return;
    }
    // As Spark's launcher does; a -D on the command line wins (e.g. =HTTPS to see Netty's default).
    if (System.getProperty(ENDPOINT_VERIFICATION_PROPERTY) == null) {
      System.setProperty(ENDPOINT_VERIFICATION_PROPERTY, "NONE");
    }
    if (options.server) {
      server(options);
    } else {
      client(options);
    }
  }

  /** The command line: the mode, then optional security flags (see the header comment). */
  static final class Options {
    static final String USAGE = """
        usage: SparkPeer server [flags] | SparkPeer client <port> [flags]
          flags: --auth none|sasl|aes  --secret <s>  --app-id <id>  --aes-version 1|2
                 --cipher ctr|gcm  --sasl-encrypt  --server-always-encrypt  --no-sasl-fallback
                 --tls --tls-key <pem> --tls-cert <pem> [--tls-keystore [--tls-trust <pem>]]
                 --report""";

    boolean server;
    int port;
    String auth = "none";
    String secret = "secret";
    String appId = "sparkSaslUser";
    String aesVersion;
    String cipher;
    boolean saslEncrypt;
    boolean serverAlwaysEncrypt;
    boolean noSaslFallback;
    boolean tls;
    String tlsKey;
    String tlsCert;
    String tlsTrust;
    boolean tlsKeystore;
    boolean report;

    static Options parse(String[] args) {
      Options o = new Options();
      int i;
      if (args.length >= 1 && args[0].equals("server")) {
        o.server = true;
        i = 1;
      } else if (args.length >= 2 && args[0].equals("client")) {
        try {
          o.port = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
          throw new IllegalArgumentException("not a port: " + args[1]);
        }
        i = 2;
      } else {
        throw new IllegalArgumentException("no mode");
      }
      while (i < args.length) {
        String flag = args[i++];
        switch (flag) {
          case "--auth" -> o.auth = oneOf(flag, value(args, i++, flag), "none", "sasl", "aes");
          case "--secret" -> o.secret = value(args, i++, flag);
          case "--app-id" -> o.appId = value(args, i++, flag);
          case "--aes-version" -> o.aesVersion = oneOf(flag, value(args, i++, flag), "1", "2");
          case "--cipher" -> o.cipher = oneOf(flag, value(args, i++, flag), "ctr", "gcm");
          case "--sasl-encrypt" -> o.saslEncrypt = true;
          case "--server-always-encrypt" -> o.serverAlwaysEncrypt = true;
          case "--no-sasl-fallback" -> o.noSaslFallback = true;
          case "--tls" -> o.tls = true;
          case "--tls-key" -> o.tlsKey = value(args, i++, flag);
          case "--tls-cert" -> o.tlsCert = value(args, i++, flag);
          case "--tls-trust" -> o.tlsTrust = value(args, i++, flag);
          case "--tls-keystore" -> o.tlsKeystore = true;
          case "--report" -> o.report = true;
          default -> throw new IllegalArgumentException("unknown flag " + flag);
        }
      }
      if (o.tls && (o.tlsKey == null || o.tlsCert == null)) {
        throw new IllegalArgumentException("--tls needs --tls-key and --tls-cert");
      }
      if (!o.tls && (o.tlsKey != null || o.tlsCert != null || o.tlsTrust != null || o.tlsKeystore)) {
        throw new IllegalArgumentException("--tls-* flags need --tls");
      }
      if (o.tlsTrust != null && !o.tlsKeystore) {
        throw new IllegalArgumentException(
            "Spark's PEM configuration trusts exactly --tls-cert; --tls-trust needs --tls-keystore");
      }
      return o;
    }

    static String value(String[] args, int i, String flag) {
      if (i >= args.length) {
        throw new IllegalArgumentException(flag + " needs a value");
      }
      return args[i];
    }

    static String oneOf(String flag, String value, String... allowed) {
      if (!List.of(allowed).contains(value)) {
        throw new IllegalArgumentException(flag + " takes one of " + List.of(allowed) + ", not " + value);
      }
      return value;
    }

    boolean authenticating() {
      return !auth.equals("none");
    }
  }

  /** Spark's transport settings, as an RpcEnv would make them: module "rpc", NIO, few threads;
   *  plus the security settings the flags ask for, under Spark's own keys. */
  static TransportConf conf(Options o) throws Exception {
    Map<String, String> settings = new HashMap<>();
    settings.put("spark.rpc.io.mode", "NIO");
    settings.put("spark.rpc.io.serverThreads", "2");
    settings.put("spark.rpc.io.clientThreads", "2");
    settings.put("spark.rpc.io.numConnectionsPerPeer", "1");
    settings.put("spark.rpc.io.connectionTimeout", "30s");
    if (o.authenticating()) {
      settings.put("spark.network.crypto.enabled", Boolean.toString(o.auth.equals("aes")));
    }
    if (o.aesVersion != null) {
      settings.put("spark.network.crypto.authEngineVersion", o.aesVersion);
    }
    if (o.cipher != null) {
      settings.put("spark.network.crypto.cipher",
          o.cipher.equals("gcm") ? "AES/GCM/NoPadding" : "AES/CTR/NoPadding");
    }
    if (o.noSaslFallback) {
      settings.put("spark.network.crypto.saslFallback", "false");
    }
    if (o.saslEncrypt) {
      settings.put("spark.authenticate.enableSaslEncryption", "true");
    }
    if (o.serverAlwaysEncrypt) {
      settings.put("spark.network.sasl.serverAlwaysEncrypt", "true");
    }
    if (o.tls) {
      settings.put("spark.ssl.rpc.enabled", "true");
      if (o.tlsKeystore) {
        // Spark's JDK configuration: key stores (PKCS12, made here from the PEM files).
        Path dir = Files.createTempDirectory("spark-peer-tls");
        dir.toFile().deleteOnExit();
        Path keyStore = dir.resolve("key.p12");
        writeKeyStore(Path.of(o.tlsKey), Path.of(o.tlsCert), keyStore);
        settings.put("spark.ssl.rpc.keyStore", keyStore.toString());
        settings.put("spark.ssl.rpc.keyStorePassword", KEYSTORE_PASSWORD);
        settings.put("spark.ssl.rpc.keyPassword", KEYSTORE_PASSWORD);
        if (o.tlsTrust != null) {
          Path trustStore = dir.resolve("trust.p12");
          writeTrustStore(Path.of(o.tlsTrust), trustStore);
          settings.put("spark.ssl.rpc.trustStore", trustStore.toString());
          settings.put("spark.ssl.rpc.trustStorePassword", KEYSTORE_PASSWORD);
        }
      } else {
        // Spark's PEM configuration. TransportConf accepts PEM files only with openSslEnabled;
        // SSLFactory then uses Netty's OpenSSL provider if netty-tcnative is on the classpath
        // (it is not: the jar cache leaves it out) and falls back to the JDK provider.
        settings.put("spark.ssl.rpc.openSslEnabled", "true");
        settings.put("spark.ssl.rpc.privateKey", o.tlsKey);
        settings.put("spark.ssl.rpc.certChain", o.tlsCert);
      }
    }
    return new TransportConf("rpc", new MapConfigProvider(settings));
  }

  static final String KEYSTORE_PASSWORD = "sparkpeer";

  static void writeKeyStore(Path keyPem, Path certPem, Path out) throws Exception {
    byte[] der = pemBody(Files.readString(keyPem), "PRIVATE KEY");
    PrivateKey key = null;
    for (String algorithm : List.of("RSA", "EC", "Ed25519")) {
      try {
        key = KeyFactory.getInstance(algorithm).generatePrivate(new PKCS8EncodedKeySpec(der));
        break;
      } catch (Exception e) {
        // try the next algorithm
      }
    }
    if (key == null) {
      throw new IllegalArgumentException(keyPem + ": not an unencrypted PKCS#8 RSA/EC/Ed25519 key");
    }
    List<Certificate> chain = certificates(certPem);
    KeyStore store = KeyStore.getInstance("PKCS12");
    store.load(null, null);
    store.setKeyEntry("peer", key, KEYSTORE_PASSWORD.toCharArray(), chain.toArray(new Certificate[0]));
    try (var stream = Files.newOutputStream(out)) {
      store.store(stream, KEYSTORE_PASSWORD.toCharArray());
    }
    out.toFile().deleteOnExit();
  }

  static void writeTrustStore(Path certPem, Path out) throws Exception {
    KeyStore store = KeyStore.getInstance("PKCS12");
    store.load(null, null);
    int n = 0;
    for (Certificate cert : certificates(certPem)) {
      store.setCertificateEntry("trusted-" + n++, cert);
    }
    try (var stream = Files.newOutputStream(out)) {
      store.store(stream, KEYSTORE_PASSWORD.toCharArray());
    }
    out.toFile().deleteOnExit();
  }

  static List<Certificate> certificates(Path pem) throws Exception {
    try (var stream = Files.newInputStream(pem)) {
      List<Certificate> certs =
          List.copyOf(CertificateFactory.getInstance("X.509").generateCertificates(stream));
      if (certs.isEmpty()) {
        throw new IllegalArgumentException(pem + ": no certificate");
      }
      return certs;
    }
  }

  static byte[] pemBody(String pem, String label) {
    String begin = "-----BEGIN " + label + "-----";
    String end = "-----END " + label + "-----";
    int from = pem.indexOf(begin);
    int to = pem.indexOf(end);
    if (from < 0 || to < from) {
      throw new IllegalArgumentException("no " + begin + " block");
    }
    return Base64.getMimeDecoder().decode(pem.substring(from + begin.length(), to));
  }

  /** Secrets as Spark's SecurityManager gives them: the SASL user is the constant
   *  "sparkSaslUser" (SecurityManager.getSaslUser); the secret is known for one app id only
   *  (null for any other, so an unknown app fails as on Spark's external shuffle service). */
  static SecretKeyHolder secrets(Options o) {
    return new SecretKeyHolder() {
      @Override
      public String getSaslUser(String appId) {
        return "sparkSaslUser";
      }

      @Override
      public String getSecretKey(String appId) {
        return o.appId.equals(appId) ? o.secret : null;
      }
    };
  }

  /** Stdout is the test's channel: whole lines, flushed, from any thread. */
  static synchronized void out(String line) {
    System.out.println(line);
    System.out.flush();
  }

  static String oneLine(Throwable e) {
    String message = e.getMessage() != null ? e.getMessage() : e.toString();
    return escape(message);
  }

  static String escape(String message) {
    return message.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n");
  }

  /** Every exception of a cause chain, "Class: message", joined by " <- ", on one line. */
  static String chain(Throwable e) {
    StringBuilder out = new StringBuilder();
    int depth = 0;
    for (Throwable t = e; t != null && depth < 16; t = t.getCause(), depth++) {
      if (depth > 0) {
        out.append(" <- ");
      }
      out.append(t.toString());
    }
    return escape(out.toString());
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

  /** With --report, the server prints a SERVED line for every request its handler serves. */
  static volatile boolean report;

  static void served(String what) {
    if (report) {
      out("SERVED " + what);
    }
  }

  static void server(Options o) throws Exception {
    report = o.report;
    TransportConf conf = conf(o);
    TransportContext context = new TransportContext(conf, new PeerRpcHandler(), false);
    // As Spark's RpcEnv: AuthServerBootstrap, which runs the AES protocol when
    // spark.network.crypto.enabled (with SASL as fallback unless --no-sasl-fallback), and
    // otherwise hands the channel to SaslServerBootstrap.
    List<TransportServerBootstrap> bootstraps = o.authenticating()
        ? List.of(new ReportingBootstrap(new AuthServerBootstrap(conf, secrets(o))))
        : List.of();
    TransportServer server = context.createServer("127.0.0.1", 0, bootstraps);
    out("PORT " + server.getPort());
    // Serve until the test closes our stdin (or kills us).
    while (System.in.read() != -1) {}
    server.close();
    context.close();
    System.exit(0);
  }

  /** Wraps the authenticating handler Spark's bootstrap installs on each channel, to report
   *  what it decides: "AUTHENTICATED <client id>" and "AUTH_FAILED <exception chain>". */
  record ReportingBootstrap(TransportServerBootstrap inner) implements TransportServerBootstrap {
    @Override
    public RpcHandler doBootstrap(Channel channel, RpcHandler handler) {
      RpcHandler installed = inner.doBootstrap(channel, handler);
      return installed instanceof AbstractAuthRpcHandler auth
          ? new ReportingAuthHandler(auth)
          : installed;
    }
  }

  static final class ReportingAuthHandler extends RpcHandler {
    private final AbstractAuthRpcHandler auth;

    ReportingAuthHandler(AbstractAuthRpcHandler auth) {
      this.auth = auth;
    }

    @Override
    public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
      if (auth.isAuthenticated()) {
        auth.receive(client, message, callback);
        return;
      }
      RpcResponseCallback reporting = new RpcResponseCallback() {
        @Override
        public void onSuccess(ByteBuffer response) {
          callback.onSuccess(response);
        }

        @Override
        public void onFailure(Throwable e) {
          out("AUTH_FAILED " + chain(e));
          callback.onFailure(e);
        }
      };
      try {
        auth.receive(client, message, reporting);
      } catch (RuntimeException e) {
        out("AUTH_FAILED " + chain(e));
        throw e;
      }
      if (auth.isAuthenticated()) {
        out("AUTHENTICATED " + client.getClientId());
      }
    }

    @Override
    public void receive(TransportClient client, ByteBuffer message) {
      auth.receive(client, message);
    }

    @Override
    public StreamCallbackWithID receiveStream(
        TransportClient client, ByteBuffer meta, RpcResponseCallback callback) {
      return auth.receiveStream(client, meta, callback);
    }

    @Override
    public StreamManager getStreamManager() {
      return auth.getStreamManager();
    }

    @Override
    public MergedBlockMetaReqHandler getMergedBlockMetaReqHandler() {
      return auth.getMergedBlockMetaReqHandler();
    }

    @Override
    public void channelActive(TransportClient client) {
      auth.channelActive(client);
    }

    @Override
    public void channelInactive(TransportClient client) {
      auth.channelInactive(client);
    }

    @Override
    public void exceptionCaught(Throwable cause, TransportClient client) {
      auth.exceptionCaught(cause, client);
    }
  }

  static final class PeerRpcHandler extends RpcHandler {
    private final StreamManager streams = new PeerStreamManager();
    private final AtomicLong uploads = new AtomicLong();

    @Override
    public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
      // Copy: Spark releases the request's buffer when this returns, the reply may be later.
      byte[] body = bytes(message);
      served("rpc " + body.length);
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
        served("meta " + request.appId);
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
      served("upload");
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
      served("fetch " + streamId + " " + chunkIndex);
      if (streamId < 0 || streamId > 64L * 1024 * 1024) {
        throw new IllegalArgumentException("SparkPeer has no stream " + streamId);
      }
      return new NioManagedBuffer(ByteBuffer.wrap(pattern((int) streamId, chunkIndex)));
    }

    @Override
    public ManagedBuffer openStream(String streamId) {
      served("stream " + streamId);
      if (streamId.startsWith("bytes/")) {
        int len = Integer.parseInt(streamId.substring("bytes/".length()));
        return new NioManagedBuffer(ByteBuffer.wrap(pattern(len, 0)));
      }
      throw new IllegalArgumentException("SparkPeer has no stream " + streamId);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Client mode

  /** Spark's TransportContext, remembering each channel's TLS handshake: by the time
   *  createClient returns, a failed handshake may have closed the channel and emptied its
   *  pipeline, SslHandler included. */
  static final class ClientContext extends TransportContext {
    final Map<Channel, Future<Channel>> handshakes = new ConcurrentHashMap<>();

    ClientContext(TransportConf conf) {
      super(conf, new PeerRpcHandler(), false);
    }

    @Override
    public TransportChannelHandler initializePipeline(SocketChannel channel, boolean isClient) {
      TransportChannelHandler handler = super.initializePipeline(channel, isClient);
      SslHandler tls = channel.pipeline().get(SslHandler.class);
      if (tls != null) {
        handshakes.put(channel, tls.handshakeFuture());
      }
      return handler;
    }
  }

  static void client(Options o) throws Exception {
    TransportConf conf = conf(o);
    ClientContext context = new ClientContext(conf);
    // As Spark's RpcEnv: AuthClientBootstrap, which runs the AES protocol when
    // spark.network.crypto.enabled (retrying with SASL on failure unless --no-sasl-fallback),
    // and otherwise SASL (SaslClientBootstrap).
    TransportClientFactory factory = o.authenticating()
        ? context.createClientFactory(List.of(new AuthClientBootstrap(conf, o.appId, secrets(o))))
        : context.createClientFactory();
    TransportClient client;
    try {
      client = factory.createClient("127.0.0.1", o.port);
      // Spark's factory waits for the TLS handshake to finish, not to succeed: it returns a
      // client on a dead channel when the handshake failed. Report that as a failed connect.
      var handshake = context.handshakes.get(client.getChannel());
      if (handshake != null) {
        if (!handshake.await(COMMAND_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
          throw new TimeoutException("the TLS handshake did not finish");
        }
        if (!handshake.isSuccess()) {
          throw new IOException("TLS handshake failed", handshake.cause());
        }
      }
    } catch (Exception e) {
      out("CONNECT_FAILED " + chain(e));
      // Every command fails from now on; exit once stdin closes.
      BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
      String line;
      while ((line = in.readLine()) != null && !line.equals("quit")) {
        out("FAILED not connected");
      }
      factory.close();
      context.close();
      System.exit(0);
      return;
    }
    out("CONNECTED");
    if (o.report) {
      out("LAYERS " + layers(client.getChannel()));
    }
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

  /** The protection layers on a channel, socket side first, from the handler names Spark
   *  gives them: aes-ctr, aes-gcm, sasl (auth-conf), tls; "none" if there are none. */
  static String layers(Channel channel) {
    List<String> layers = new java.util.ArrayList<>();
    for (String name : channel.pipeline().names()) {
      String layer = switch (name) {
        case "CtrTransportEncryption" -> "aes-ctr";
        case "GcmTransportEncryption" -> "aes-gcm";
        case "saslEncryption" -> "sasl";
        case "NettySslEncryptionHandler" -> "tls";
        default -> null;
      };
      if (layer != null) {
        layers.add(layer);
      }
    }
    return layers.isEmpty() ? "none" : String.join(" ", layers);
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
