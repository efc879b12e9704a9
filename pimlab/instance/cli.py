"""`pimlab instance run`: the container command of a postgres Shard's pods."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _run(args) -> int:
    # the manager imports psycopg, which only a postgres Shard's pod needs
    from pimlab.instance.manager import Config, parse_peers, run

    name = args.name or os.environ.get("POD_NAME") or socket.gethostname()
    peers = parse_peers(args.peers)
    return run(Config(
        name=name, data_dir=Path(args.data_dir), run_dir=Path(args.run_dir),
        credentials_dir=Path(args.credentials_dir), peers=peers,
        bootstrap_primary=args.bootstrap_primary or sorted(peers)[0], synchronous=args.synchronous,
        port=args.port, http_port=args.http_port, listen=args.listen, http_host=args.http_host,
        bin_dir=Path(args.bin_dir), database=args.database,
        postgres_log=Path(args.postgres_log) if args.postgres_log else None))


def add_commands(sub) -> None:
    instance = sub.add_parser("instance", help="the PostgreSQL instance manager of a postgres Shard's pod")
    isub = instance.add_subparsers(dest="instance_command", required=True, metavar="ACTION")
    run = isub.add_parser("run", help="decide what to be, run postgres, serve the operator's API")
    env = os.environ.get
    run.add_argument("--name", default=env("PIMLAB_INSTANCE_NAME"), help="this pod's name (default $POD_NAME)")
    run.add_argument("--peers", default=env("PIMLAB_PEERS", ""),
                     help="every instance of the shard: name=host[:pgport[:httpport]],...")
    run.add_argument("--bootstrap-primary", default=env("PIMLAB_BOOTSTRAP_PRIMARY"),
                     help="the one instance allowed to initdb a new shard (default: the first name)")
    run.add_argument("--synchronous", type=int, default=int(env("PIMLAB_SYNCHRONOUS", "1")),
                     help="k of synchronous_standby_names = 'ANY k (...)'")
    run.add_argument("--data-dir", default=env("PGDATA", "/var/lib/pimlab/pgdata"))
    run.add_argument("--run-dir", default=env("PIMLAB_RUN_DIR", "/var/lib/pimlab/run"))
    run.add_argument("--credentials-dir", default=env("PIMLAB_CREDENTIALS_DIR", "/etc/pim/credentials"))
    run.add_argument("--port", type=int, default=5432)
    run.add_argument("--http-port", type=int, default=8008)
    run.add_argument("--listen", default="*")
    run.add_argument("--http-host", default="0.0.0.0")
    run.add_argument("--bin-dir", default=env("PIMLAB_PG_BIN", "/usr/lib/postgresql/15/bin"))
    run.add_argument("--database", default="pim")
    run.add_argument("--postgres-log", default=None, help="append postgres' output here (default: stderr)")
    run.set_defaults(func=_run)
