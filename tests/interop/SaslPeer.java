// The JDK's own DIGEST-MD5 (javax.security.sasl) configured exactly as Spark's SparkSaslClient
// and SparkSaslServer configure it, driven line by line over stdin/stdout, for the SASL
// interoperability tests (tests/tests/sasl_jdk.rs). JDK only: no Spark jars needed.
//
//   java SaslPeer client <qop> <secret> [user [cipher]]
//     Sasl.createSaslClient({"DIGEST-MD5"}, authzid null, protocol null, server "default",
//     {QOP: qop}). Prints "TOKEN <hex>" with its first token (empty), then for each
//     "TOKEN <hex>" read (a server token) prints the next token, or "COMPLETE <qop>" once done.
//   java SaslPeer server <qop> <secret> [user [cipher]]
//     Sasl.createSaslServer("DIGEST-MD5", protocol null, server "default",
//     {QOP: qop, SERVER_AUTH: "true"}). For each "TOKEN <hex>" read (a client token) prints
//     "TOKEN <hex>" with the reply; after the reply that completes it prints "COMPLETE <qop>".
//
//   After COMPLETE (both roles):
//     WRAP <hex>    -> WRAPPED <hex>   (SaslClient/SaslServer.wrap)
//     UNWRAP <hex>  -> PLAIN <hex>     (unwrap; the JDK gives an empty result on a bad MAC)
//   Any failure     -> ERROR <exception class>: <message>   (and the peer exits)
//
// cipher (client only) sets com.sun.security.sasl.digest.cipher, e.g. "rc4" (Spark never does).
// qop is Spark's Sasl.QOP property: "auth", "auth-conf" or "auth-conf,auth". The user defaults
// to "sparkSaslUser"; user and password are Base64-encoded as Spark does, the password with a
// "\n" after every 76 characters (Netty's Base64.encode, the same as a MIME encoder's lines).
// Hex is lowercase; "-" stands for an empty token.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Map;

import javax.security.auth.callback.Callback;
import javax.security.auth.callback.CallbackHandler;
import javax.security.auth.callback.NameCallback;
import javax.security.auth.callback.PasswordCallback;
import javax.security.auth.callback.UnsupportedCallbackException;
import javax.security.sasl.AuthorizeCallback;
import javax.security.sasl.RealmCallback;
import javax.security.sasl.RealmChoiceCallback;
import javax.security.sasl.Sasl;
import javax.security.sasl.SaslClient;
import javax.security.sasl.SaslServer;

public final class SaslPeer {
    private static final HexFormat HEX = HexFormat.of();

    private static String encode(String s) {
        byte[] utf8 = s.getBytes(StandardCharsets.UTF_8);
        return Base64.getMimeEncoder(76, new byte[] {'\n'}).encodeToString(utf8);
    }

    private static String hex(byte[] b) {
        return b == null || b.length == 0 ? "-" : HEX.formatHex(b);
    }

    private static byte[] unhex(String s) {
        return s.equals("-") ? new byte[0] : HEX.parseHex(s);
    }

    private static final class Handler implements CallbackHandler {
        private final String user;
        private final String secret;

        Handler(String user, String secret) {
            this.user = user;
            this.secret = secret;
        }

        @Override
        public void handle(Callback[] callbacks) throws UnsupportedCallbackException {
            for (Callback cb : callbacks) {
                if (cb instanceof NameCallback nc) {
                    nc.setName(encode(user));
                } else if (cb instanceof PasswordCallback pc) {
                    pc.setPassword(encode(secret).toCharArray());
                } else if (cb instanceof RealmCallback rc) {
                    rc.setText(rc.getDefaultText());
                } else if (cb instanceof RealmChoiceCallback) {
                    // Spark ignores it.
                } else if (cb instanceof AuthorizeCallback ac) {
                    ac.setAuthorized(ac.getAuthenticationID().equals(ac.getAuthorizationID()));
                    if (ac.isAuthorized()) {
                        ac.setAuthorizedID(ac.getAuthorizationID());
                    }
                } else {
                    throw new UnsupportedCallbackException(cb, "unrecognized callback");
                }
            }
        }
    }

    interface Side {
        byte[] step(byte[] token) throws Exception;
        boolean isComplete();
        Object qop();
        byte[] wrap(byte[] b) throws Exception;
        byte[] unwrap(byte[] b) throws Exception;
    }

    public static void main(String[] args) throws Exception {
        String role = args[0];
        String qop = args[1];
        String secret = args[2];
        String user = args.length > 3 ? args[3] : "sparkSaslUser";
        Handler handler = new Handler(user, secret);
        Map<String, String> props = new HashMap<>();
        props.put(Sasl.QOP, qop);
        if (args.length > 4) {
            props.put("com.sun.security.sasl.digest.cipher", args[4]);
        }
        Side side;
        if (role.equals("client")) {
            SaslClient c = Sasl.createSaslClient(
                new String[] {"DIGEST-MD5"}, null, null, "default", props, handler);
            side = new Side() {
                public byte[] step(byte[] t) throws Exception { return c.evaluateChallenge(t); }
                public boolean isComplete() { return c.isComplete(); }
                public Object qop() { return c.getNegotiatedProperty(Sasl.QOP); }
                public byte[] wrap(byte[] b) throws Exception { return c.wrap(b, 0, b.length); }
                public byte[] unwrap(byte[] b) throws Exception { return c.unwrap(b, 0, b.length); }
            };
            System.out.println("TOKEN " + hex(new byte[0]));
        } else {
            props.put(Sasl.SERVER_AUTH, "true");
            SaslServer s = Sasl.createSaslServer("DIGEST-MD5", null, "default", props, handler);
            side = new Side() {
                public byte[] step(byte[] t) throws Exception { return s.evaluateResponse(t); }
                public boolean isComplete() { return s.isComplete(); }
                public Object qop() { return s.getNegotiatedProperty(Sasl.QOP); }
                public byte[] wrap(byte[] b) throws Exception { return s.wrap(b, 0, b.length); }
                public byte[] unwrap(byte[] b) throws Exception { return s.unwrap(b, 0, b.length); }
            };
        }
        System.out.flush();

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        try {
            while ((line = in.readLine()) != null) {
                String[] parts = line.split(" ", 2);
                byte[] arg = parts.length > 1 ? unhex(parts[1].trim()) : new byte[0];
                switch (parts[0]) {
                    case "TOKEN" -> {
                        byte[] out = side.step(arg);
                        if (out != null) {
                            System.out.println("TOKEN " + hex(out));
                        }
                        if (side.isComplete()) {
                            System.out.println("COMPLETE " + side.qop());
                        }
                    }
                    case "WRAP" -> System.out.println("WRAPPED " + hex(side.wrap(arg)));
                    case "UNWRAP" -> System.out.println("PLAIN " + hex(side.unwrap(arg)));
                    default -> throw new IllegalArgumentException("unknown command " + parts[0]);
                }
                System.out.flush();
            }
        } catch (Exception e) {
            String msg = String.valueOf(e.getMessage()).replace('\n', ' ').replace('\r', ' ');
            System.out.println("ERROR " + e.getClass().getName() + ": " + msg);
            System.out.flush();
        }
    }
}
