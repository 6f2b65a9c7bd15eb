"""Where the fleet's broker is and how a worker behaves: a git-ignored local file or the environment, never git.

    fleet.local.yaml (beside the checkout's dvc.yaml, or the file EDGEQUANT_FLEET_CONFIG names; mode 600):
        broker: redis://broker.internal:6379/0
        password: "..."                 # or EDGEQUANT_BROKER_PASSWORD; the broker must require one
        visibility_timeout_s: 3600      # a job whose worker died goes back to its queue after this long

EDGEQUANT_BROKER_URL and EDGEQUANT_BROKER_PASSWORD override the file. The URL never carries the password, so
every message may print it; the password goes to the Redis client only.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
from pathlib import Path
from urllib.parse import quote, urlsplit

import yaml

CONFIG_FILE = "fleet.local.yaml"
CONFIG_ENV = "EDGEQUANT_FLEET_CONFIG"
URL_ENV = "EDGEQUANT_BROKER_URL"
PASSWORD_ENV = "EDGEQUANT_BROKER_PASSWORD"
SCHEMES = ("redis", "rediss")
CHECK_TIMEOUT_S = 3.0  # a reachable broker answers PING in milliseconds; a wrong address must fail in seconds
MAX_PASSWORD_CHARS = 512
OPEN_BROKER = "accepts clients without a password; a fleet broker must require one (redis-server --requirepass)"


class SettingsError(ValueError):
    """The fleet cannot start: one line naming the file or variable and the fix."""


@dataclasses.dataclass(frozen=True)
class FleetSettings:
    broker: str  # redis://host:port/db, without credentials
    password: str = dataclasses.field(repr=False)
    visibility_timeout_s: int = 3600  # kombu's default: longer than a reference benchmark, so a running job is rarely redelivered
    retry_delay_s: int = 30  # between attempts of a job whose git or DVC remote could not be reached
    max_attempts: int = 3
    job_timeout_s: int = 4 * 3600  # each pipeline command of a job
    git_remote: str = "origin"  # the worker's checkout's remote: jobs fetch revisions from it and push experiments to it
    scratch: str = "~/.cache/edgequant/fleet"  # the worker's scratch worktrees and DVC cache

    def __post_init__(self) -> None:
        for name in ("visibility_timeout_s", "retry_delay_s", "max_attempts", "job_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"fleet settings: {name} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.git_remote, str) or not self.git_remote.replace("-", "").replace("_", "").isalnum():
            raise SettingsError(f"fleet settings: git_remote must be a remote's name (e.g. origin), got {self.git_remote!r}")
        if not isinstance(self.scratch, str) or not self.scratch:
            raise SettingsError(f"fleet settings: scratch must be a folder, got {self.scratch!r}")
        check_url(self.broker)
        if not isinstance(self.password, str) or not self.password:
            raise SettingsError(
                f"fleet settings: no broker password; the broker requires one: set {PASSWORD_ENV} or `password` in {CONFIG_FILE}"
            )
        if len(self.password) > MAX_PASSWORD_CHARS or not self.password.isprintable():
            raise SettingsError(f"fleet settings: the broker password must be 1 to {MAX_PASSWORD_CHARS} printable characters")

    def url(self) -> str:
        """The URL the Redis client and Celery connect with: the password in it, so never printed."""
        parts = urlsplit(self.broker)
        return parts._replace(netloc=f":{quote(self.password, safe='')}@{parts.netloc}").geturl()

    @property
    def scratch_dir(self) -> Path:
        return Path(self.scratch).expanduser()


def check_url(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise SettingsError(f"fleet settings: no broker; set {URL_ENV} or `broker` in {CONFIG_FILE} (e.g. redis://broker.internal:6379/0)")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise SettingsError(f"fleet settings: broker {url.split('@')[-1]!r} is not a redis:// or rediss:// URL with a host")
    if "@" in parts.netloc:
        raise SettingsError(
            f"fleet settings: the broker URL carries credentials; keep the password in {PASSWORD_ENV} or `password`"
            f" in {CONFIG_FILE}, so the URL can be printed"
        )
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise SettingsError(f"fleet settings: broker {url!r}: {exc}") from exc
    if parts.query or parts.fragment or parts.path.strip("/") not in ("", *map(str, range(16))):
        raise SettingsError(f"fleet settings: broker {url!r} may name a database (/0 to /15) and nothing else")
    return url


def read_file(path: Path) -> dict:
    """The local config file: private to its owner (it holds the password), a YAML mapping of known keys."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise SettingsError(f"{path}: not a regular file")
    if info.st_mode & 0o077:
        mode = f"{stat.S_IMODE(info.st_mode):03o}"
        raise SettingsError(f"{path}: readable by other users (mode {mode}); it holds the password: chmod 600 {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: expected a mapping of settings (broker: ..., password: ...), got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(FleetSettings)]
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(known)}"
            raise SettingsError(f"{path}: unknown setting {key!r}; {fix}")
    return values


def load(root: Path | None = None, env: dict[str, str] | None = None) -> FleetSettings:
    """The settings: the file (EDGEQUANT_FLEET_CONFIG, else fleet.local.toml in `root`), then the environment over it."""
    env = os.environ if env is None else env
    named = env.get(CONFIG_ENV)
    path = Path(named) if named else (root or Path.cwd()) / CONFIG_FILE
    if named and not path.is_file():
        raise SettingsError(f"{CONFIG_ENV}={named}: no such file")
    values = read_file(path) if path.is_file() else {}
    if env.get(URL_ENV):
        values["broker"] = env[URL_ENV]
    if env.get(PASSWORD_ENV):
        values["password"] = env[PASSWORD_ENV]
    values.setdefault("broker", "")
    values.setdefault("password", "")
    return FleetSettings(**values)


def client(settings: FleetSettings, timeout_s: float = CHECK_TIMEOUT_S, retries: int = 0):
    """A Redis client for the broker; with no retries a failure surfaces at once (the CLI), with some it rides
    out a broker restart (the worker's own bookkeeping)."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        settings.url(),
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries),
        decode_responses=True,
    )


def check_broker(settings: FleetSettings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """PING the broker with the password: a wrong password, a broker without one, or no broker at all is one line."""
    import redis

    where = f"broker {settings.broker}"
    try:
        client(settings, timeout_s).ping()
        # Redis 6+ takes any password for a default user without one (AUTH default <pw> succeeds), so a PING
        # with the password proves nothing: a broker that requires one refuses a client that sends none.
        anonymous = redis.Redis.from_url(settings.broker, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            anonymous.ping()
        except redis.AuthenticationError:
            pass
        else:
            raise SettingsError(f"{where} {OPEN_BROKER}")
        finally:
            anonymous.close()
    except redis.AuthenticationError as exc:
        raise SettingsError(f"{where} refused the password ({exc}); check {PASSWORD_ENV} or `password` in {CONFIG_FILE}") from exc
    except redis.ResponseError as exc:
        if "without any password configured" in str(exc):
            raise SettingsError(f"{where} {OPEN_BROKER}") from exc
        raise SettingsError(f"{where} answered PING with an error: {str(exc).splitlines()[0]}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError(f"cannot reach {where} within {timeout_s:g} s ({reason}); is redis-server running there?") from exc
