"""A throw-away PostgreSQL server for the tests: ``initdb`` + ``postgres`` in a temporary folder.

:func:`start` finds the server binaries (``$LWGPU_PG_BIN``, the ``PATH``, Debian's
``/usr/lib/postgresql/<v>/bin``, or the ``pgserver`` wheel's bundled ones), makes a cluster owned by
an unprivileged user when the tests run as root (``initdb`` and ``postgres`` refuse to run as root;
the ``postgres`` user when it exists, else ``nobody``), and serves it on a free localhost port with
``trust`` authentication. It raises :class:`PgUnavailable` with the reason when it cannot, so that the
PostgreSQL-parametrised tests skip saying why. ``.ci/run`` installs Debian's ``postgresql`` so CI has one.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


class PgUnavailable(RuntimeError):
    """No PostgreSQL server could be started here (the message says why)."""


def find_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (PgUnavailable when none is found)."""
    candidates = []
    if os.environ.get("LWGPU_PG_BIN"):
        candidates.append(os.environ["LWGPU_PG_BIN"])
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(os.path.realpath(on_path)).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    try:  # the pgserver wheel ships its own binaries
        import pgserver  # type: ignore[import-not-found]

        candidates.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin"))
    except ImportError:
        pass
    for c in candidates:
        if all((Path(c) / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    raise PgUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: install Debian's "
                        "'postgresql' (apt-get install postgresql) or set LWGPU_PG_BIN to their folder")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as (None: run as ourselves, we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PgUnavailable("running as root and there is neither a 'postgres' nor a 'nobody' account to run "
                        "the PostgreSQL server as (initdb refuses to run as root)")


@dataclass
class PgServer:
    """A running server; :attr:`url` connects as its superuser ``postgres`` to the ``postgres`` database."""

    bin_dir: Path
    root: Path
    port: int
    user: pwd.struct_passwd | None
    log: Path
    made: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = f"lwgpu_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        self.made.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder (nothing when already stopped)."""
        if not self.root.exists():
            return
        _run(self, [str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"],
             check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _run(srv: PgServer, cmd: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    kwargs = {}
    if srv.user is not None:
        kwargs = {"user": srv.user.pw_uid, "group": srv.user.pw_gid, "extra_groups": []}
    env = dict(os.environ, LC_ALL="C", LANG="C")
    env.pop("PGDATA", None)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=srv.root, **kwargs)
    if check and out.returncode != 0:
        tail = ""
        if srv.log.exists():
            tail = srv.log.read_text(errors="replace")[-2000:]
        raise PgUnavailable(f"{Path(cmd[0]).name} failed ({out.returncode}): {out.stderr.strip()[-2000:]} {tail}")
    return out


def start(timeout: float = 60.0) -> PgServer:
    """Make a new cluster in a temporary folder and start a server on a free port (PgUnavailable if impossible)."""
    bin_dir = find_bin_dir()
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="lwgpu-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    srv = PgServer(bin_dir, root, _free_port(), user, root / "server.log")
    try:
        _run(srv, [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--no-sync"])
        opts = (f"-p {srv.port} -h 127.0.0.1 -k {root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        _run(srv, [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(srv.log), "-o", opts,
                   "-t", str(int(timeout)), "-w", "start"], timeout=timeout + 30)
    except (PgUnavailable, OSError, subprocess.SubprocessError) as exc:
        srv.stop()
        if isinstance(exc, PgUnavailable):
            raise
        raise PgUnavailable(f"could not start PostgreSQL from {bin_dir}: {exc}") from exc
    deadline = time.monotonic() + timeout
    atexit.register(srv.stop)  # also when the tests end abnormally (stop is idempotent)
    while True:  # pg_ctl -w waited for it; check that it answers on TCP
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=1):
                return srv
        except OSError:
            if time.monotonic() > deadline:
                srv.stop()
                raise PgUnavailable(f"PostgreSQL started but does not answer on port {srv.port}") from None
            time.sleep(0.1)


class ExternalPg:
    """A server run by someone else (``LWGPU_TEST_PG_URL``): new databases are made there and dropped at stop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[str] = []

    def new_database(self) -> str:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        name = f"lwgpu_test_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            admin.dispose()
        self.made.append(name)
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def stop(self) -> None:
        from sqlalchemy import create_engine

        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                for name in self.made:
                    c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            admin.dispose()
