"""A real SMTP server for the tests (aiosmtpd, from Debian's python3-aiosmtpd).

Every accepted message is saved as one JSON file in --out: the envelope sender and
recipients and the raw message. Options make it refuse some recipients (--reject
PREFIX, answered 550 at RCPT), stall: hold every RCPT until a file exists
(--hold-until FILE; each held RCPT first creates FILE.held-N), speak STARTTLS or
implicit TLS (--tls, with --cert and --key) and require authentication (--auth
USER:PASSWORD). It prints READY once it accepts connections and stops on SIGTERM.
"""

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Handler:
    def __init__(self, out, reject, hold_until):
        self.out = out
        self.reject = reject
        self.hold_until = hold_until
        self.count = 0
        self.held = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.hold_until:
            with self.lock:
                self.held += 1
                n = self.held
            open(f"{self.hold_until}.held-{n}", "w").close()
            # A stalled server: the client's own timeout is what ends the wait.
            while not os.path.exists(self.hold_until):
                await asyncio.sleep(0.02)
        if any(address.lower().startswith(p) for p in self.reject):
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.original_content.decode("utf-8", "surrogateescape"),
        }
        name = os.path.join(self.out, f"{os.getpid()}-{n:06d}.json")
        # Written whole, then renamed: a reader never sees half a message.
        with open(name + ".tmp", "w", encoding="utf-8", errors="surrogateescape") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name)
        return "250 Message accepted for delivery"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reject", action="append", default=[])
    ap.add_argument("--hold-until")
    ap.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--auth")
    args = ap.parse_args()

    kwargs = {}
    context = None
    if args.tls != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    if args.tls == "starttls":
        kwargs.update(tls_context=context, require_starttls=True)
    elif args.tls == "implicit":
        kwargs.update(ssl_context=context)
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            # handled=False: aiosmtpd answers 535 itself on failure.
            return AuthResult(success=ok, handled=False)

        kwargs.update(
            authenticator=authenticator,
            auth_required=True,
            # aiosmtpd knows TLS only from STARTTLS; implicit TLS is TLS from the start.
            auth_require_tls=args.tls == "starttls",
        )

    controller = Controller(
        Handler(args.out, [p.lower() for p in args.reject], args.hold_until),
        hostname="127.0.0.1",
        port=args.port,
        server_hostname="localhost",
        ready_timeout=10,
        **kwargs,
    )
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    sys.exit(main())
