"""`manage.py chatkit_emulator`: serve the local ChatKit sessions emulator in the foreground."""

from django.core.management.base import BaseCommand, CommandError

from emulator.faults import SHORTHAND_HELP, parse_script


class Command(BaseCommand):
    help = (
        "Run a local emulator of OpenAI's ChatKit sessions API, so the broker can be developed, "
        "demoed and load-tested without an OpenAI key or network access. Point the broker at "
        "it with OPENAI_BASE_URL=http://HOST:PORT/v1 (printed on start). By default any key "
        "that starts with 'sk-' and is at least 20 characters long is accepted, and any workflow "
        "id that starts with 'wf_' exists. Tests and demos can queue faults (500, 429, dropped "
        "or hanging connections, slow answers) with POST /_emulator/faults and read counters at "
        "GET /_emulator/stats. Stop it with Ctrl-C."
    )
    # It touches neither models nor settings, and must start even where the checks would warn.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="Interface to listen on (default 127.0.0.1; use 0.0.0.0 inside a container).",
        )
        parser.add_argument(
            "--port", type=int, default=8765, help="TCP port to listen on (default 8765)."
        )
        parser.add_argument(
            "--latency-ms",
            type=float,
            default=0,
            help="Delay every API answer by this many milliseconds (default 0).",
        )
        parser.add_argument(
            "--fail-rate",
            type=float,
            default=0.0,
            help="Fraction (0 to 1) of session creations that answer HTTP 500 (default 0).",
        )
        parser.add_argument(
            "--script",
            default=None,
            help=(
                "Faults for the next session creations, in order, then normal answers: a JSON "
                "file, or a comma-separated list such as '500,500,ok,hangup,garbage,hang,429:1,"
                f"slow:3000'. Tokens: {SHORTHAND_HELP}."
            ),
        )
        parser.add_argument(
            "--api-key",
            action="append",
            dest="api_keys",
            default=[],
            metavar="KEY",
            help="Accept only this API key (repeat for several). Default: any sk-... key.",
        )
        parser.add_argument(
            "--workflow",
            action="append",
            dest="workflows",
            default=[],
            metavar="WORKFLOW_ID",
            help="Only this workflow id exists (repeat for several). Default: any wf_... id.",
        )
        parser.add_argument(
            "--tls-cert",
            default=None,
            metavar="PATH",
            help="Serve HTTPS with this PEM certificate chain (server certificate first); "
            "needs --tls-key. Clients must trust its CA, e.g. with REQUESTS_CA_BUNDLE.",
        )
        parser.add_argument(
            "--tls-key",
            default=None,
            metavar="PATH",
            help="The PEM private key of --tls-cert.",
        )

    def handle(self, *args, **options):
        if not 0 <= options["port"] <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, not {options['port']}.")
        if not 0 <= options["fail_rate"] <= 1:
            raise CommandError(f"--fail-rate must be between 0 and 1, not {options['fail_rate']}.")
        if options["latency_ms"] < 0:
            raise CommandError(f"--latency-ms must be 0 or more, not {options['latency_ms']}.")
        try:
            script = parse_script(options["script"]) if options["script"] else None
        except ValueError as exc:
            raise CommandError(f"--script: {exc}") from None

        def on_ready(base_url: str) -> None:
            root = base_url.removesuffix("/v1")
            self.stdout.write(self.style.SUCCESS(f"ChatKit emulator listening on {base_url}"))
            self.stdout.write(f"Use it with: OPENAI_BASE_URL={base_url}")
            keys = f"{len(options['api_keys'])} configured" if options["api_keys"] else "any sk-…"
            workflows = ", ".join(options["workflows"]) or "any wf_…"
            self.stdout.write(f"Accepting API keys: {keys}; workflows: {workflows}.")
            self.stdout.write(
                f"Control: POST {root}/_emulator/faults, GET {root}/_emulator/stats, "
                f"POST {root}/_emulator/reset. Press Ctrl-C to stop."
            )
            self.stdout.flush()

        try:
            from emulator.server import run
        except ImportError as exc:  # aiohttp is a development dependency
            raise CommandError(
                f"The emulator is a development tool and needs {exc.name}: "
                "pip install -r requirements/dev.txt"
            ) from None
        try:
            run(
                host=options["host"],
                port=options["port"],
                on_ready=on_ready,
                api_keys=options["api_keys"],
                workflows=options["workflows"],
                latency_ms=options["latency_ms"],
                fail_rate=options["fail_rate"],
                script=script,
                tls_cert=options["tls_cert"],
                tls_key=options["tls_key"],
            )
        except (OSError, ValueError) as exc:
            raise CommandError(f"Cannot start the emulator: {exc}") from None
