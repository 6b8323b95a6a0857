"""S3 backend: obstore for object data, a signed request of its own for version listings (s3list.py:
the open path), boto3 only for the rest obstore lacks (Object Lock retention, version deletes).

Location: `s3:http://127.0.0.1:8333/bucket/prefix` (any endpoint, path-style) or `s3:bucket/prefix`
(AWS; region from AWS_REGION / AWS_DEFAULT_REGION). Credentials: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN from the environment, or given to the backend as
`S3Credentials` (the agent opens many repositories, each with its own identity, in one process).
Objects are written with If-None-Match (write-once).

With an Object Lock policy every object except locks is uploaded with its own retention
(mode + retain-until, rounded up to the next UTC midnight so one signed store serves a whole day).
A locked object cannot be deleted or shortened by anyone holding these credentials; a plain DELETE
only adds a delete marker, so reads fall back to the newest real version, `list` shows hidden
objects too, and `unhide` removes such markers. Because cermin never rewrites an object, the oldest
version of a key is the authoritative one: `load_original` reads it when a newer version planted
by someone else fails authentication.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

from cermin.backend import s3list
from cermin.backend.base import CONFIG_NAME, OBJECT_STORE_PACK_SIZE, BackendBase, Capabilities, Kind, exists_by_size
from cermin.errors import (
    AccessDenied,
    CerminError,
    CorruptObject,
    ObjectExists,
    ObjectLocked,
    ObjectNotFound,
    RepositoryExists,
    TransientError,
    UsageError,
)

LOCK_MODES = ("compliance", "governance")
MIN_MARGIN_DAYS = 7
MAX_LOCK_DAYS = 36500  # a century: beyond it a date is a typo or an attack on the storage bill
# This driver does not retry, and neither do obstore (max_retries=0), boto3 (max_attempts=1) nor the
# version listing (urllib3 retries=False): it raises TransientError and the one retrying layer
# (backend/retry.py) owns the budget.


@dataclass
class LockPolicy:
    days: int
    mode: str = "compliance"
    maintenance_days: int = 7

    def retain_until(self, now: datetime | None = None) -> datetime:
        now = now or datetime.now(UTC)
        day = (now + timedelta(days=self.days)).date() + timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    def as_config(self) -> dict:
        return {"days": self.days, "mode": self.mode, "maintenance_days": self.maintenance_days}


CONNECT_TIMEOUT = 5  # seconds; an endpoint that does not accept a connection by then is not there
# Small range reads of packs (tree blobs, pack prefixes: a walk over a snapshot's trees makes two per
# directory) fetch the aligned block around them, and the last blocks are kept: objects are
# write-once, so a block never goes stale. Measured on SeaweedFS: a 300-byte range GET costs the
# server as much CPU as a 256 KiB one (~3 ms); a re-backup of /usr/share made ~7,000 of them.
RANGE_BLOCK = 256 * 1024
RANGE_CACHE_BLOCKS = 64  # 16 MiB
AMBIENT_ENV = "CERMIN_S3_AMBIENT_CREDENTIALS"


@dataclass(frozen=True, repr=False)
class S3Credentials:
    """One S3 identity, given to one backend (not the process environment). `region` empty: the
    environment's AWS_REGION / AWS_DEFAULT_REGION, else us-east-1. Its repr and str name the access
    key id only, so the secret cannot reach a log line or an error message by accident."""

    access_key_id: str
    secret_access_key: str
    session_token: str = ""
    region: str = ""

    def __post_init__(self) -> None:
        if not (self.access_key_id and self.secret_access_key):
            raise UsageError("S3 credentials need both an access key id and a secret access key")

    def __repr__(self) -> str:
        token = ", session_token=<hidden>" if self.session_token else ""
        region = f", region={self.region!r}" if self.region else ""
        return f"S3Credentials(access_key_id={self.access_key_id!r}, secret_access_key=<hidden>{token}{region})"

    __str__ = __repr__

    def as_kwargs(self) -> dict:
        out = {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}
        if self.session_token:
            out["session_token"] = self.session_token
        return out


def _credentials(given: S3Credentials | None = None) -> dict:
    """Credentials given to the backend, else from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    (/ AWS_SESSION_TOKEN). Without them, fail at once: the libraries would otherwise wait on the
    cloud metadata address 169.254.169.254. CERMIN_S3_AMBIENT_CREDENTIALS=1 lets them look there
    and in profiles (given credentials never do)."""
    if given is not None:
        return given.as_kwargs()
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        out = {"access_key_id": key, "secret_access_key": secret}
        if os.environ.get("AWS_SESSION_TOKEN"):
            out["session_token"] = os.environ["AWS_SESSION_TOKEN"]
        return out
    if os.environ.get(AMBIENT_ENV) == "1":
        return {}
    raise UsageError(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        f"(or {AMBIENT_ENV}=1 to use an instance profile or ~/.aws)"
    )


# Answers to a key or signature the store does not accept (as opposed to AccessDenied: a known
# identity without the permission).
_BAD_CREDENTIAL = (
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
)
_THROTTLED = ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed")
_BOTO_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError")
_BOTO_TRANSIENT = ("ReadTimeoutError", "ResponseStreamingError", "IncompleteReadError", "HTTPClientError")


def _boto_code(e: Exception) -> tuple[str, int]:
    """(error code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    resp = getattr(e, "response", None)
    if not isinstance(resp, dict):
        return "", 0
    return str(resp.get("Error", {}).get("Code", "")), int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _status(e: Exception) -> int:
    """HTTP status in an obstore GenericError ("... non-2xx status code: 503 ..."); 0 if none."""
    import re

    m = re.search(r"status code: (\d{3})", str(e))
    return int(m.group(1)) if m else 0


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class _NotImplemented(CerminError):
    """The store does not implement a call (a permanent answer, though its status is 501)."""


class _BadCredential(AccessDenied):
    """The store does not accept the key or the signature (a wrong or expired credential)."""


def _margin(maintenance_days: int) -> int:
    return max(MIN_MARGIN_DAYS, maintenance_days // 2)


def validate_lock_policy(days: int, mode: str, maintenance_days: int, allow_governance: bool = False) -> None:
    """The lock must outlast the time between two `lock extend` runs plus a margin for a missed run
    (and an attacker's dwell time before anyone notices). Governance mode is refused for new
    repositories: any identity allowed s3:BypassGovernanceRetention (on SeaweedFS every Admin
    identity, which the backup client must be) can delete governance-locked versions."""
    if mode not in LOCK_MODES:
        raise UsageError(f"lock mode must be one of {', '.join(LOCK_MODES)}")
    if mode == "governance" and not allow_governance:
        raise UsageError(
            "governance-mode Object Lock can be bypassed by any identity allowed s3:BypassGovernanceRetention "
            "(on SeaweedFS every Admin identity, which a backup client needs), so it is no protection against "
            "a stolen backup credential; use compliance mode"
        )
    if not 1 <= maintenance_days <= MAX_LOCK_DAYS:
        raise UsageError(f"the maintenance interval must be 1..{MAX_LOCK_DAYS} days")
    if days > MAX_LOCK_DAYS:
        raise UsageError(f"an Object Lock of {days} days is longer than the {MAX_LOCK_DAYS}-day maximum")
    margin = _margin(maintenance_days)
    if days < maintenance_days + margin:
        raise UsageError(
            f"an Object Lock of {days} days is too short for maintenance every {maintenance_days} days: "
            f"objects could lapse before the next `cermin lock extend`; use at least {maintenance_days + margin} "
            f"days (maintenance interval + {margin} days margin)"
        )


def policy_from_config(pol: object) -> LockPolicy:
    """The policy as stored in a config, which is hostile input: anything malformed, too short or
    out of range is refused (an attacker who could plant a config must not get unlocked writes)."""
    if not isinstance(pol, dict):
        raise CorruptObject("the Object Lock policy in the repository config is malformed; refusing to write")
    days, mode, maint = pol.get("days"), pol.get("mode", "compliance"), pol.get("maintenance_days", 7)
    if not (type(days) is int and type(maint) is int and isinstance(mode, str)):
        raise CorruptObject("the Object Lock policy in the repository config is malformed; refusing to write")
    try:
        validate_lock_policy(days, mode, maint, allow_governance=True)
    except UsageError as e:
        raise CorruptObject(
            f"the Object Lock policy in the repository config is invalid ({e}); refusing to write"
        ) from None
    return LockPolicy(days, mode, maint)


def parse_location(location: str) -> tuple[str | None, str, str]:
    """(endpoint or None for AWS, bucket, prefix) from 's3:...'."""
    rest = location[3:] if location.startswith("s3:") else location
    if rest.startswith("//"):
        rest = rest[2:]
    endpoint = None
    if rest.startswith(("http://", "https://")):
        u = urlparse(rest)
        endpoint = f"{u.scheme}://{u.netloc}"
        rest = u.path
    parts = [p for p in rest.strip("/").split("/") if p]
    if not parts:
        raise UsageError(f"S3 location {location!r} names no bucket (s3:http://host:port/bucket/prefix)")
    return endpoint, parts[0], "/".join(parts[1:])


class S3Backend(BackendBase):
    caps = Capabilities(versions=True, retention=True, takes_config=True, default_pack_size=OBJECT_STORE_PACK_SIZE)

    def __init__(self, location: str, lock: LockPolicy | None = None, credentials: S3Credentials | None = None) -> None:
        """`credentials` None: from the environment (module docstring), as the command line does."""
        self.location = location
        self.endpoint, self.bucket, self.prefix = parse_location(location)
        self.region = (
            (credentials.region if credentials is not None else "")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.lock = lock
        self._creds = credentials
        _credentials(credentials)  # refuse now, before any request could go looking for them
        self._stores: dict[object, object] = {}
        self._blocks: OrderedDict[tuple, bytes] = OrderedDict()  # (key, version, block number) -> bytes
        self._blocks_lock = threading.Lock()
        self._boto_client = None
        self._lister = None  # s3list.VersionLister, made on the first listing
        self.list_page_size = s3list.PAGE_SIZE  # versions per listing request (tests make it small)
        self._mutex = threading.Lock()
        self._originals: dict[str, str] = {}  # key -> id of its first version (original_version)
        self.planted_config = 0  # newer versions of `config` seen (written by someone else)

    def configure(self, extra: dict) -> None:
        """Apply repository settings stored in the plaintext config (the Object Lock policy)."""
        pol = extra.get("object_lock")
        if pol is not None:
            self.lock = policy_from_config(pol)

    # ---- clients -----------------------------------------------------------------------------
    def _store(self, retain_until: datetime | None = None):
        """obstore S3Store; one per retain-until date carrying the Object Lock headers."""
        with self._mutex:
            st = self._stores.get(retain_until)
            if st is not None:
                return st
            from obstore.store import S3Store

            kw = dict(
                region=self.region,
                virtual_hosted_style_request=False,
                retry_config={  # no retries here: backend/retry.py owns the budget
                    "max_retries": 0,
                    "backoff": {
                        "init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=1),
                        "base": 2,
                    },
                    "retry_timeout": timedelta(seconds=60),
                },
            )
            if self.endpoint:
                kw["endpoint"] = self.endpoint
            kw.update(_credentials(self._creds))
            opts: dict = {"connect_timeout": f"{CONNECT_TIMEOUT}s"}
            if self.endpoint and self.endpoint.startswith("http://"):
                opts["allow_http"] = True
            if retain_until is not None:
                opts["default_headers"] = {
                    "x-amz-object-lock-mode": self.lock.mode.upper(),
                    "x-amz-object-lock-retain-until-date": retain_until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            if opts:
                kw["client_options"] = opts
            st = S3Store(self.bucket, prefix=self.prefix or None, **kw)
            self._stores[retain_until] = st
            return st

    def _listing(self):
        """The signed version listing (no boto3 client: creating one costs ~0.4 s and ~35 MiB, and
        every command lists the versions of `config` and its key slot when it opens)."""
        with self._mutex:
            if self._lister is None:
                self._lister = s3list.VersionLister(
                    self.endpoint, self.bucket, self.region, _credentials(self._creds), CONNECT_TIMEOUT
                )
            return self._lister

    def _boto(self):
        """boto3 client for what obstore and the listing lack (retention, deleting versions); none of
        it is on the path of backup, restore or snapshots."""
        with self._mutex:
            client = self._boto_client
            if client is None:
                import boto3
                from botocore.config import Config

                creds = _credentials(self._creds)
                # A session of its own: creating clients on boto3's shared default session from several
                # threads at once is racy, and the agent opens many repositories in parallel.
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint,
                    region_name=self.region,
                    aws_access_key_id=creds.get("access_key_id"),
                    aws_secret_access_key=creds.get("secret_access_key"),
                    aws_session_token=creds.get("session_token"),
                    config=Config(
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        s3={"addressing_style": "path"},
                        connect_timeout=CONNECT_TIMEOUT,
                        read_timeout=60,
                        retries={"max_attempts": 1, "mode": "standard"},  # backend/retry.py retries
                    ),
                )
                self._boto_client = client
            return client

    def _key(self, kind: Kind, name: str) -> str:
        if kind is Kind.CONFIG:
            return CONFIG_NAME
        if kind is Kind.DATA:
            return f"data/{name[:2]}/{name}"
        return f"{kind.value}/{name}"

    def _full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _whose(self) -> str:
        """' of access key ID' for error messages (an access key id is no secret; it tells which of
        several identities in one process was refused)."""
        key = self._creds.access_key_id if self._creds is not None else os.environ.get("AWS_ACCESS_KEY_ID")
        return f" of access key {key}" if key else ""

    def _wrap(self, e: Exception, what: str) -> CerminError:
        """The one place that sorts what obstore, boto3 and the listing raise into transient and
        permanent errors (the listing's error answers have boto3's shape and are sorted as its are)."""
        if isinstance(e, CerminError):
            return e
        first = f"{e}".splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, FileNotFoundError):
            return ObjectNotFound(f"{what} does not exist")
        name = type(e).__name__
        if name == "AlreadyExistsError":
            return ObjectExists(f"{what} already exists")
        if name in ("PermissionDeniedError", "UnauthenticatedError"):
            return AccessDenied(f"S3 refused access to {what}: check the credentials{self._whose()} ({first})")
        if name in ("NotSupportedError", "PreconditionError", "NotModifiedError", "InvalidPathError"):
            return CerminError(f"S3 error on {what}: {first}")
        code, status = _boto_code(e)
        if code or status:  # an answer from the server (botocore ClientError)
            if code in ("NoSuchKey", "NoSuchVersion") or (status == 404 and code != "NoSuchBucket"):
                return ObjectNotFound(f"{what} does not exist")
            if code == "NoSuchBucket":
                return CerminError(f"bucket {self.bucket} does not exist")
            if code in _BAD_CREDENTIAL:
                return _BadCredential(f"S3 refused access to {what}: check the credentials{self._whose()} ({first})")
            if code == "AccessDenied" or status in (401, 403):
                return AccessDenied(f"S3 refused access to {what}: check the credentials{self._whose()} ({first})")
            if code == "NotImplemented":
                return _NotImplemented(f"S3 error on {what}: {first}")
            if code in _THROTTLED or (_retryable(status) and code != "NotImplemented"):
                return TransientError(f"S3 error on {what}: {first}")
            return CerminError(f"S3 error on {what}: {first}")
        if name in _BOTO_UNREACHABLE or isinstance(e, s3list.Unreachable):
            return TransientError(f"cannot reach the S3 endpoint {self.endpoint or 'of AWS'}: {first}")
        if name in _BOTO_TRANSIENT or isinstance(e, s3list.Broken):
            return TransientError(f"S3 error on {what}: {first}")
        status = _status(e)
        if status:  # obstore: the server answered with an error status
            if _retryable(status):
                return TransientError(f"S3 error on {what}: {first}")
            return CerminError(f"S3 error on {what}: {first}")
        if name == "GenericError" and ("error sending request" in first or "onnect" in first):
            return TransientError(f"cannot reach the S3 endpoint {self.endpoint or 'of AWS'}: {first}")
        if name in ("GenericError", "JoinError") or isinstance(e, (OSError, TimeoutError)):
            return TransientError(f"S3 error on {what}: {first}")  # a reset, a timeout, a cut body
        return CerminError(f"S3 error on {what}: {first}")

    # ---- protocol ----------------------------------------------------------------------------
    def create(self) -> None:
        if self.exists(Kind.CONFIG, CONFIG_NAME):
            raise RepositoryExists(f"a repository already exists at {self.location}")
        if self.lock is not None:
            self.check_lock_support()

    def check_lock_support(self) -> None:
        try:
            conf = self._boto().get_object_lock_configuration(Bucket=self.bucket)
            enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except Exception as e:  # botocore raises for buckets without Object Lock
            code = _boto_code(e)[0]
            if code == "NoSuchBucket":
                raise CerminError(f"bucket {self.bucket} does not exist (create it with Object Lock enabled)") from None
            if not code.startswith("ObjectLockConfigurationNotFound"):
                raise self._wrap(e, f"the Object Lock configuration of bucket {self.bucket}") from None
            enabled = False
        if not enabled:
            raise CerminError(
                f"bucket {self.bucket} does not have Object Lock enabled; "
                "create the bucket with Object Lock (it cannot be enabled on a bucket without versioning)"
            )

    def save(self, kind: Kind, name: str, data) -> None:
        import obstore

        retain = self.lock.retain_until() if (self.lock is not None and kind is not Kind.LOCK) else None
        try:
            obstore.put(self._store(retain), self._key(kind, name), data, mode="create")
        except Exception as e:  # a lost answer's ObjectExists is recognised by backend/retry.py
            raise self._wrap(e, f"{kind.value}/{name}") from None

    def load(
        self, kind: Kind, name: str, offset: int = 0, length: int | None = None, version: str | None = None
    ) -> bytes:
        if kind in (Kind.CONFIG, Kind.KEY) and version is None:
            # The config is not named by its content, so nothing could tell a planted newer version
            # (one without the lock policy, say) from ours; a planted key slot would lock the owner
            # out. Both are small and read once per command: always read the first version.
            version = self._first_version(kind, name)
        return self._load(kind, name, offset, length, version)

    def _load(self, kind: Kind, name: str, offset: int, length: int | None, version: str | None) -> bytes:
        import obstore

        key = self._key(kind, name)
        opts = {"version": version} if version else {}
        try:
            if offset or length is not None:
                end = None if length is None else offset + length
                if end is None:
                    end = self.size(kind, name)
                if end <= offset:
                    return b""
                if kind is Kind.DATA and end - offset <= RANGE_BLOCK // 4:
                    return self._load_blocks(key, version, offset, end)
                opts["range"] = (offset, end)
            r = obstore.get(self._store(), key, options=opts or None)
            return bytes(r.bytes())
        except FileNotFoundError:
            if version is None:
                hidden = self._newest_real_version(key)
                if hidden is not None:  # a delete marker hides it: read the real data anyway
                    return self.load(kind, name, offset, length, version=hidden)
            raise ObjectNotFound(f"{kind.value}/{name} does not exist") from None
        except Exception as e:
            if (offset or length is not None) and (_status(e) == 416 or "range" in str(e).lower()):
                # nothing at or after that offset (a short read, as local files give); at 0: an empty
                # object, e.g. an empty version planted over a pack, which then fails authentication
                # (CorruptObject) and is read from the version cermin wrote
                return b""
            raise self._wrap(e, f"{kind.value}/{name}") from None

    def _load_blocks(self, key: str, version: str | None, offset: int, end: int) -> bytes:
        """Bytes [offset, end) of an object through the block cache (short at the object's end).
        Raises what obstore raises, for `_load` to sort."""
        import obstore

        parts = []
        for n in range(offset // RANGE_BLOCK, (end - 1) // RANGE_BLOCK + 1):
            ck = (key, version, n)
            with self._blocks_lock:
                block = self._blocks.get(ck)
                if block is not None:
                    self._blocks.move_to_end(ck)
            if block is None:
                opts: dict = {"range": (n * RANGE_BLOCK, (n + 1) * RANGE_BLOCK)}  # the server clips the end
                if version:
                    opts["version"] = version
                try:
                    block = bytes(obstore.get(self._store(), key, options=opts).bytes())
                except Exception as e:
                    if parts and _status(e) == 416:
                        break  # the object ended exactly at the previous block
                    raise
                with self._blocks_lock:
                    self._blocks[ck] = block
                    while len(self._blocks) > RANGE_CACHE_BLOCKS:
                        self._blocks.popitem(last=False)
            parts.append(block)
            if len(block) < RANGE_BLOCK:
                break  # the object ends in this block
        first = offset - (offset // RANGE_BLOCK) * RANGE_BLOCK
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data[first : first + (end - offset)]

    def load_original(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The first version ever written under this name (cermin never writes a second one)."""
        return self.load(kind, name, offset, length, version=self.original_version(kind, name))

    def _first_version(self, kind: Kind, name: str) -> str | None:
        """Version id of an object's first version (None on a store that keeps no versions, or when
        the credentials may not list them); newer versions of `config` are counted in `planted_config`."""
        try:
            real = [v for v in self._versions(self._key(kind, name), probe=kind is Kind.CONFIG) if not v["marker"]]
        except _NotImplemented:
            return None  # a store that keeps no versions
        except _BadCredential:
            raise
        except AccessDenied:
            self._may_read(kind, name)  # a credential refused everything here is told so
            # Falling back to the newest version would hand the repository to whoever planted it.
            raise AccessDenied(
                "the S3 credential may not list object versions (s3:ListBucketVersions): cermin needs it "
                f"to read the {kind.value} it wrote rather than a version planted later"
            ) from None
        if kind is Kind.CONFIG:
            self.planted_config = max(0, len(real) - 1)
        return real[-1]["id"] if real else None

    def _may_read(self, kind: Kind, name: str) -> None:
        """Raise AccessDenied when the credential may not even read an object's metadata."""
        import obstore

        try:
            obstore.head(self._store(), self._key(kind, name))
        except Exception as e:
            err = self._wrap(e, f"{kind.value}/{name}")
            if isinstance(err, AccessDenied):
                raise err from None

    def size(self, kind: Kind, name: str) -> int:
        import obstore

        if self.lock is not None and kind is not Kind.LOCK:  # the oldest version is cermin's
            real = [v for v in self._versions(self._key(kind, name)) if not v["marker"]]
            if not real:
                raise ObjectNotFound(f"{kind.value}/{name} does not exist")
            return real[-1]["size"]
        try:
            return int(obstore.head(self._store(), self._key(kind, name))["size"])
        except FileNotFoundError:
            key = self._key(kind, name)
            for v in self._versions(key):
                if not v["marker"]:
                    return v["size"]
            raise ObjectNotFound(f"{kind.value}/{name} does not exist") from None
        except Exception as e:
            raise self._wrap(e, f"{kind.value}/{name}") from None

    def list(self, kind: Kind):
        import obstore

        if kind is Kind.CONFIG:
            if self.exists(kind, CONFIG_NAME):
                yield CONFIG_NAME, self.size(kind, CONFIG_NAME)
            return
        if self.lock is not None and kind is not Kind.LOCK:  # hidden (delete-marked) objects count too
            for key, size in self.list_versions_latest(kind):
                yield key.rsplit("/", 1)[-1], size
            return
        try:
            for page in obstore.list(self._store(), prefix=f"{kind.value}/"):
                for meta in page:
                    yield meta["path"].rsplit("/", 1)[-1], int(meta["size"])
        except Exception as e:
            raise self._wrap(e, f"listing {kind.value}") from None

    def remove(self, kind: Kind, name: str) -> None:
        import obstore

        key = self._key(kind, name)
        self._originals.pop(key, None)
        if self.lock is None or kind is Kind.LOCK:
            try:
                obstore.delete(self._store(), key)
            except Exception as e:
                raise self._wrap(e, f"{kind.value}/{name}") from None
            return
        # Under Object Lock: delete every version for real (no delete marker), which the storage
        # refuses while the retention lasts.
        versions = self._versions(key)
        if not versions:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist")
        for v in versions:
            try:
                self._boto().delete_object(Bucket=self.bucket, Key=self._full_key(key), VersionId=v["id"])
            except Exception as e:
                if _boto_code(e)[0] in ("AccessDenied", "ObjectLocked", "InvalidRequest"):
                    raise ObjectLocked(f"{kind.value}/{name} is under Object Lock retention") from None
                raise self._wrap(e, f"{kind.value}/{name}") from None

    def exists(self, kind: Kind, name: str) -> bool:
        return exists_by_size(self, kind, name)

    def close(self) -> None:
        if self._lister is not None:
            self._lister.close()  # its idle connections; a later listing opens new ones

    # ---- versions (s3list) and retention (boto3) --------------------------------------------------
    def _versions(self, key: str, probe: bool = False) -> list[dict]:
        """Real versions of one key newest first, then its delete markers. The order is the one S3
        lists them in (newest first per key), never LastModified: times tie within a second, and a
        store may re-stamp an old version when a new one pushes it aside — sorting by time once
        made a planted version look like the first one."""
        full = self._full_key(key)
        real, markers = [], []  # each page lists its versions, then its markers: gather both across pages
        for page in self._pages(full, probe=probe):
            for v in page.get("Versions", []):
                if v["Key"] == full:
                    real.append({"id": v["VersionId"], "marker": False, "size": v["Size"], "time": v["LastModified"]})
            for m in page.get("DeleteMarkers", []):
                if m["Key"] == full:
                    markers.append({"id": m["VersionId"], "marker": True, "size": 0, "time": m["LastModified"]})
        return real + markers

    def _pages(self, prefix: str | None, probe: bool = False) -> list[dict]:
        """Every page of the version listing under a prefix (the whole bucket for None), as boto3's
        paginator gives them. The `probe` (the first request of a command) waits 10 s for an answer,
        not 60: an endpoint that does not answer is a configuration error."""
        try:
            return list(self._listing().pages(prefix, 10 if probe else 60, self.list_page_size))
        except Exception as e:
            raise self._wrap(e, f"the versions under {prefix or self.bucket}") from None

    def _newest_real_version(self, key: str) -> str | None:
        if self.lock is None:
            return None
        for v in self._versions(key):
            if not v["marker"]:
                return v["id"]
        return None

    def original_version(self, kind: Kind, name: str) -> str:
        """The id of an object's first version: listed once, then remembered (a first version stays
        the first; a restore reading many blobs of a pack planted over asks for it per blob)."""
        key = self._key(kind, name)
        got = self._originals.get(key)
        if got is None:
            real = [v for v in self._versions(key) if not v["marker"]]
            if not real:
                raise ObjectNotFound(f"{kind.value}/{name} does not exist")
            if len(self._originals) >= 100_000:
                self._originals.clear()
            got = self._originals[key] = real[-1]["id"]
        return got

    def original_versions(self, kind: Kind) -> dict[str, tuple[str, int]]:
        """name -> (id of its first version, number of real versions) for every object of a kind, in
        one listing. More than one real version means someone planted the others."""
        prefix = self._full_key(f"{kind.value}/" if kind is not Kind.CONFIG else CONFIG_NAME)
        out: dict[str, tuple[str, int]] = {}
        for page in self._pages(prefix):
            for v in page.get("Versions", []):  # newest first per key: the last one seen is the first
                if kind is Kind.CONFIG and v["Key"] != prefix:
                    continue
                name = v["Key"].rsplit("/", 1)[-1]
                out[name] = (v["VersionId"], out.get(name, ("", 0))[1] + 1)
        return out

    def first_written(self, kind: Kind) -> dict[str, float]:
        """name -> the storage's time (POSIX seconds) of each object's first version: a date no
        client can forge, unlike the dates inside records."""
        out: dict[str, float] = {}
        for page in self._pages(self._full_key(f"{kind.value}/")):
            for v in page.get("Versions", []):  # newest first per key: the last one seen is the first
                out[v["Key"].rsplit("/", 1)[-1]] = v["LastModified"].timestamp()
        return out

    def list_versions_latest(self, kind: Kind):
        """(key, size) of every key under a kind that has a real version (hidden or not), with the
        size of its oldest version: the one cermin wrote."""
        prefix = self._full_key(f"{kind.value}/")
        oldest: dict[str, int] = {}
        for page in self._pages(prefix):
            for v in page.get("Versions", []):  # newest first per key (timestamps may tie)
                oldest[v["Key"]] = v["Size"]
        return sorted(oldest.items())

    def hidden(self) -> list[str]:
        """Keys whose newest entry is a delete marker over a real version."""
        markers: set[str] = set()
        real: set[str] = set()
        for page in self._pages(self._full_key("") if self.prefix else None):
            markers.update(m["Key"] for m in page.get("DeleteMarkers", []) if m.get("IsLatest"))
            real.update(v["Key"] for v in page.get("Versions", []))
        locks = self._full_key(f"{Kind.LOCK.value}/")
        return sorted(k for k in markers & real if not k.startswith(locks))  # released locks are not hidden data

    def unhide(self) -> list[str]:
        """Remove delete markers that hide real versions; returns the keys made visible again."""
        keys = self.hidden()
        client = self._boto()  # deleting a delete marker is allowed: it is not a locked version
        for full in keys:  # idempotent: a retry after a lost answer finds fewer markers
            for page in self._pages(full):
                for m in page.get("DeleteMarkers", []):
                    if m["Key"] == full:
                        try:
                            client.delete_object(Bucket=self.bucket, Key=full, VersionId=m["VersionId"])
                        except Exception as e:
                            raise self._wrap(e, f"the delete marker on {full}") from None
        return keys

    def retention(self, kind: Kind, name: str, version: str | None = None) -> datetime | None:
        """Retain-until date of the version cermin wrote (never of a newer, planted one)."""
        key = self._full_key(self._key(kind, name))
        version = version or self.original_version(kind, name)
        try:
            r = self._boto().get_object_retention(Bucket=self.bucket, Key=key, VersionId=version)
        except Exception as e:
            if _boto_code(e)[0].startswith(("ObjectLockConfigurationNotFound", "NoSuchObjectLockConfiguration")):
                return None  # SeaweedFS's answer for a version without retention
            raise self._wrap(e, f"retention of {kind.value}/{name}") from None
        return r.get("Retention", {}).get("RetainUntilDate")

    def extend_retention(self, kind: Kind, name: str, until: datetime, version: str | None = None) -> None:
        key = self._full_key(self._key(kind, name))
        version = version or self.original_version(kind, name)
        try:
            self._boto().put_object_retention(
                Bucket=self.bucket,
                Key=key,
                VersionId=version,
                Retention={"Mode": self.lock.mode.upper(), "RetainUntilDate": until},
            )
        except Exception as e:
            err = self._wrap(e, f"the lock of {kind.value}/{name}")
            if type(err) is CerminError or isinstance(err, AccessDenied):
                raise CerminError(f"cannot extend the lock of {kind.value}/{name}: {e}".splitlines()[0]) from None
            raise err from None
