"""A local WS-Man (WinRM) server for tests: real HTTP(S) on a real socket, answering as a Windows host does.

It speaks the operations pywinrm's shell uses: Create (a shell, whose
code page and profile options it records), Command, Send (stdin, given to
the command when its output is first asked for), Receive (base64
stdout/stderr streams, the exit code in CommandState/Done, the output split
over two Receives as a long command's is), Signal and Delete. The reply
envelopes are pywinrm's recorded ones (winrm/tests/conftest.py: captured
from Windows), with the ids of this conversation filled in; RelatesTo echoes
the request's MessageID, which pywinrm checks.

Authentication is HTTP Basic (WinRM's Basic, enabled on a host with
`winrm set winrm/config/service/auth @{Basic="true"}`), or NTLM, WinRM's
default and devenv's (auth="ntlm"): the 401 a Windows host sends offers
Negotiate and NTLM; the client's NEGOTIATE, the server's CHALLENGE and the
client's AUTHENTICATE (the request's body with it) pass on one kept-alive
connection, which is then authenticated. The server's side is pyspnego's
NTLM acceptor, the code pywinrm's own client side is built on; it checks
the password against NTLM_USER_FILE (the test writes it) and, over TLS, the
channel binding to the server's certificate (RFC 5929 tls-server-end-point,
which a Windows host with CbtHardeningLevel=Strict requires). Or CredSSP
(auth="credssp"): its TLS handshake inside the HTTP tokens, NTLM inside
that, then the user's password handed to the host (what the server records
in seen.delegated), through pyspnego's CredSSP acceptor, the counterpart of
requests-credssp, which pywinrm uses. A wrong password gets the 401 Windows
sends (under CredSSP: an error code inside the handshake). What a command
does is the test's `run` callable: given the command, its arguments and its
stdin, it returns (exit code, stdout bytes, stderr bytes); tests run the
stand-in PowerShell with them.
"""

from __future__ import annotations

import base64
import ssl
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"

_ENVELOPE = """<?xml version="1.0" ?>
<s:Envelope xml:lang="en-US" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer">
    <s:Header>
        <a:Action>{action}</a:Action>
        <a:MessageID>uuid:{own}</a:MessageID>
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
        <a:RelatesTo>{relates}</a:RelatesTo>
    </s:Header>
    <s:Body>{body}</s:Body>
</s:Envelope>"""

_CREATED = """
        <x:ResourceCreated>
            <a:Address>http://windows-host:5985/wsman</a:Address>
            <a:ReferenceParameters>
                <w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>
                <w:SelectorSet>
                    <w:Selector Name="ShellId">{shell}</w:Selector>
                </w:SelectorSet>
            </a:ReferenceParameters>
        </x:ResourceCreated>"""
_COMMAND = """
        <rsp:CommandResponse>
            <rsp:CommandId>{command}</rsp:CommandId>
        </rsp:CommandResponse>"""
_STREAM = '<rsp:Stream CommandId="{command}" Name="{name}">{data}</rsp:Stream>'
_END = '<rsp:Stream CommandId="{command}" End="true" Name="{name}"/>'
_RUNNING = '<rsp:CommandState CommandId="{command}" State="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"/>'
_DONE = """<rsp:CommandState CommandId="{command}" State="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done">
                <rsp:ExitCode>{code}</rsp:ExitCode>
            </rsp:CommandState>"""

Run = Callable[[str, list[str], bytes], tuple[int, bytes, bytes]]


@dataclass
class Seen:
    """What the server was asked, for the test to check."""

    actions: list[str] = field(default_factory=list)
    shell_options: dict[str, str] = field(default_factory=dict)
    commands: list[tuple[str, list[str]]] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    open_shells: set[str] = field(default_factory=set)
    sends: int = 0
    auth_failures: list[str] = field(default_factory=list)  # the NTLM or CredSSP acceptor's error for each refusal
    delegated: list[tuple[str, str]] = field(default_factory=list)  # (DOMAIN\\user, password) CredSSP handed over


class WsmanServer:
    def __init__(
        self,
        run: Run,
        user: str,
        password: str,
        tls: ssl.SSLContext | None = None,
        *,
        auth: str = "basic",
        server_cert: Path | None = None,
    ) -> None:
        """auth: "basic", "ntlm" or "credssp"; server_cert: the PEM of tls's certificate, whose hash NTLM binds to."""
        assert auth in ("basic", "ntlm", "credssp"), auth
        self.run = run
        self.auth = auth
        self.credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.channel_binding = _tls_server_end_point(server_cert) if server_cert is not None else None
        self.seen = Seen()
        self._pending: dict[str, list[bytes]] = {}  # command id -> the Receive replies still to send
        self._started: dict[str, tuple[str, list[str]]] = {}  # commands whose output nobody asked for yet
        self._stdin: dict[str, list[bytes]] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WsmanServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # NTLM authenticates a connection: it must stay open between its steps
            context: Any = None  # this connection's NTLM or CredSSP acceptor while its handshake runs
            authenticated = False  # this connection finished a handshake

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def refuse(self, *challenges: str) -> None:
                self.send_response(401)
                for challenge in challenges:
                    self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def basic_ok(self) -> bool:
                auth = self.headers.get("Authorization", "")
                if auth == f"Basic {server.credentials}":
                    return True
                if auth.startswith("Basic "):
                    server.seen.users.append(base64.b64decode(auth[6:]).decode().partition(":")[0])
                self.refuse('Basic realm="WSMAN"')
                return False

            def handshake_ok(self) -> bool:
                """One step of NTLM's or CredSSP's handshake; True once this connection is authenticated."""
                if self.authenticated:
                    return True
                import spnego
                from spnego.exceptions import SpnegoError

                offered = ("CredSSP",) if server.auth == "credssp" else ("Negotiate", "NTLM")
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                if scheme not in offered or not token:
                    self.context = None
                    self.refuse(*offered)  # what a Windows host offers
                    return False
                if self.context is None:
                    bindings = server.channel_binding if server.auth == "ntlm" else None
                    self.context = spnego.server(protocol=server.auth, channel_bindings=bindings)
                try:
                    out = self.context.step(base64.b64decode(token))
                except SpnegoError as e:  # a wrong password, a channel binding that does not match
                    server.seen.auth_failures.append(type(e).__name__)
                    self.context = None
                    self.refuse(*offered)
                    return False
                if not self.context.complete:
                    self.refuse(f"{scheme} {base64.b64encode(out or b'').decode()}")
                    return False
                server.seen.users.append(str(self.context.client_principal))
                delegated = self.context.get_extra_info("client_credential") if server.auth == "credssp" else None
                if delegated is not None:  # CredSSP hands the host the user's password itself
                    server.seen.delegated.append((f"{delegated.domain_name}\\{delegated.username}", delegated.password))
                self.authenticated, self.context = True, None
                return True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not (self.basic_ok() if server.auth == "basic" else self.handshake_ok()):
                    return
                reply = server.answer(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        return Handler

    def answer(self, request: bytes) -> bytes:
        root = ET.fromstring(request)
        action = root.findtext("s:Header/a:Action", namespaces=NS) or ""
        message_id = root.findtext("s:Header/a:MessageID", namespaces=NS) or ""
        shell = root.findtext("s:Header/w:SelectorSet/w:Selector[@Name='ShellId']", namespaces=NS) or ""
        name = action.rsplit("/", 1)[-1]
        self.seen.actions.append(name)

        def envelope(reply_action: str, body: str) -> bytes:
            text = _ENVELOPE.format(action=reply_action, own=uuid.uuid4(), relates=message_id, body=body)
            return text.encode()

        if action == TRANSFER + "Create":
            for opt in root.iterfind("s:Header/w:OptionSet/w:Option", NS):
                self.seen.shell_options[opt.get("Name", "")] = opt.text or ""
            new = str(uuid.uuid4()).upper()
            self.seen.open_shells.add(new)
            return envelope(TRANSFER + "CreateResponse", _CREATED.format(shell=new))
        if action == SHELL + "Command":
            command = root.findtext("s:Body/rsp:CommandLine/rsp:Command", namespaces=NS) or ""
            args = (root.findtext("s:Body/rsp:CommandLine/rsp:Arguments", namespaces=NS) or "").split(" ")
            self.seen.commands.append((command, args))
            cid = str(uuid.uuid4()).upper()
            self._stdin[cid] = []
            self._started[cid] = (command, args)
            return envelope(SHELL + "CommandResponse", _COMMAND.format(command=cid))
        if action == SHELL + "Send":
            stream = root.find("s:Body/rsp:Send/rsp:Stream", NS)
            assert stream is not None
            self._stdin[stream.get("CommandId", "")].append(base64.b64decode(stream.text or ""))
            self.seen.sends += 1
            return envelope(SHELL + "SendResponse", "<rsp:SendResponse/>")
        if action == SHELL + "Receive":
            cid = root.find("s:Body/rsp:Receive/rsp:DesiredStream", NS).get("CommandId", "")  # type: ignore[union-attr]
            if cid in self._started:
                self._start(cid)
            body = self._pending[cid].pop(0)
            return envelope(SHELL + "ReceiveResponse", body.decode())
        if action == SHELL + "Signal":
            return envelope(SHELL + "SignalResponse", "<rsp:SignalResponse/>")
        if action == TRANSFER + "Delete":
            self.seen.open_shells.discard(shell)
            return envelope(TRANSFER + "DeleteResponse", "")
        raise AssertionError(f"the test server does not know {action}")

    def _start(self, cid: str) -> None:
        """Run the command with the stdin sent so far, and lay out its output over two Receives."""
        command, args = self._started.pop(cid)
        code, out, err = self.run(command, args, b"".join(self._stdin.pop(cid)))
        half = len(out) // 2
        first = [_STREAM.format(command=cid, name="stdout", data=base64.b64encode(out[:half]).decode()), _RUNNING]
        last = [
            _STREAM.format(command=cid, name="stdout", data=base64.b64encode(out[half:]).decode()),
            _STREAM.format(command=cid, name="stderr", data=base64.b64encode(err).decode()),
            _END.format(command=cid, name="stdout"),
            _END.format(command=cid, name="stderr"),
            _DONE.format(command=cid, code=code),
        ]
        self._pending[cid] = [self._receive(first), self._receive(last)]

    @staticmethod
    def _receive(parts: list[str]) -> bytes:
        return ("<rsp:ReceiveResponse>" + "".join(parts) + "</rsp:ReceiveResponse>").encode()


def _tls_server_end_point(pem: Path) -> Any:
    """The channel binding of a TLS server with this certificate (RFC 5929 4.1): its hash, as the client computes it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from spnego.channel_bindings import GssChannelBindings

    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A CA and a certificate it signed for 127.0.0.1: the server's TLS context, and the CA's PEM file.

    The server's certificate and key are in tmp/server.pem (the certificate first).
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devenv test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp / "server.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return context, ca_file
